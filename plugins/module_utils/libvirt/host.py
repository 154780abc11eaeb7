# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Facts about a hypervisor host, read through libvirt (and /proc and /sys for a local URI)."""

from __future__ import annotations

import grp
import os
import stat
import xml.etree.ElementTree as ET

from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.connection import libvirt

KSM_DIR = "/sys/kernel/mm/ksm"


def is_local(uri):
    """A URI whose hypervisor is this host (so /proc and /sys describe it)."""
    return "://" not in uri or uri.split("://", 1)[1].startswith("/")


def _cpu_has_virt_extensions(cpuinfo="/proc/cpuinfo"):
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return "vmx" in flags or "svm" in flags
    except OSError:
        return False
    return False


def capability_domain_types(conn):
    """Domain types (kvm, qemu) libvirt offers for x86_64 guests."""
    caps = ET.fromstring(conn.getCapabilities())
    types = set()
    for guest in caps.findall("guest"):
        arch = guest.find("arch")
        if arch is not None and arch.get("name") == "x86_64":
            types.update(dom.get("type") for dom in arch.findall("domain"))
    return types


def kvm_usable(conn, uri):
    """KVM is usable when libvirt offers it and, on a local host, the CPU has VT-x/AMD-V.

    The second check matters in nested or micro-VM sandboxes that expose /dev/kvm without the
    CPU extensions: there libvirt offers kvm but guests hang.
    """
    if "kvm" not in capability_domain_types(conn):
        return False
    if is_local(uri):
        return os.path.exists("/dev/kvm") and _cpu_has_virt_extensions()
    return True


def resolve_virt_type(conn, uri, wanted):
    if wanted and wanted != "auto":
        return wanted
    return "kvm" if kvm_usable(conn, uri) else "qemu"


def _read_int(path):
    try:
        with open(path) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def ksm_state():
    if not os.path.isdir(KSM_DIR):
        return {"available": False}
    state = {"available": True}
    for key in ("run", "pages_to_scan", "sleep_millisecs", "pages_shared", "pages_sharing", "merge_across_nodes"):
        state[key] = _read_int(os.path.join(KSM_DIR, key))
    state["enabled"] = state["run"] == 1
    return state


def _version_string(number):
    major, rest = divmod(number, 1000000)
    minor, micro = divmod(rest, 1000)
    return "%d.%d.%d" % (major, minor, micro)


def kernel_memory_mb(meminfo="/proc/meminfo"):
    """The kernel's MemTotal in MiB, or None where it cannot be read."""
    try:
        with open(meminfo) as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_mb(conn, uri, info=None):
    """The host's memory in MiB, a figure that only changes when the host does.

    libvirt sums its NUMA nodes' figures, which on some machines (micro-VMs with ballooned memory)
    are far below MemTotal and move between calls; slot plans and idempotent facts need the kernel's
    MemTotal, which a local URI can read. A remote URI has only libvirt's figure.
    """
    if is_local(uri):
        total = kernel_memory_mb()
        if total:
            return total
    return (info or conn.getInfo())[1]


def host_limits(conn, uri="qemu:///system"):
    """(logical CPUs, memory in MiB) of the host: the bounds a VM spec is checked against."""
    info = conn.getInfo()
    return info[2], memory_mb(conn, uri, info)


def kvm_device_warning(device="/dev/kvm"):
    """A warning when /dev/kvm is not root:kvm 0660 (what udev's rule makes it), else None.

    QEMU runs as an unprivileged user in group kvm; when it cannot open the device, libvirtd finds
    KVM "not available now" on every call, re-probes QEMU's capabilities (~8 s) and slows every define.
    """
    try:
        st = os.stat(device)
    except OSError:
        return None
    try:
        kvm_gid = grp.getgrnam("kvm").gr_gid
    except KeyError:
        return None
    if st.st_gid == kvm_gid and stat.S_IMODE(st.st_mode) & 0o660 == 0o660:
        return None
    return ("%s is %04o, group %s: QEMU (group kvm) cannot open it, so libvirtd re-probes QEMU on every "
            "define. Fix: 'chgrp kvm %s; chmod 0660 %s' (what udev's rule does; this host's udev did not), "
            "or run the skygrid.fabric.hypervisor role, which does it and keeps it."
            % (device, stat.S_IMODE(st.st_mode), _group_name(st.st_gid), device, device))


# libvirt's security drivers that confine each QEMU process (DAC alone only changes its user).
CONFINING_MODELS = ("apparmor", "selinux")


def security_models(conn):
    """The security drivers libvirt applies to QEMU here (capabilities: host/secmodel/model)."""
    root = ET.fromstring(conn.getCapabilities())
    return [model.text for model in root.findall("host/secmodel/model") if model.text]


def confinement_warning(models):
    """A warning when no security driver confines QEMU (a VM that escapes into its QEMU process can
    then reach everything QEMU's user can, other VMs' disks and seeds included), else None."""
    if any(model in CONFINING_MODELS for model in models):
        return None
    return ("no security driver confines QEMU on this host (libvirt reports %s): a guest that escapes into its "
            "QEMU process is limited only by QEMU's Unix user, which every VM shares. Enable AppArmor (Debian, "
            "Ubuntu) or SELinux (RHEL) so libvirt gives each VM its own profile or label (sVirt)."
            % (", ".join(models) or "none"))


def _group_name(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def facts(conn, uri):
    info = conn.getInfo()
    cpus, memory = info[2], memory_mb(conn, uri, info)
    free_mb = conn.getFreeMemory() // (1024 * 1024)
    local = is_local(uri)
    domains = conn.listAllDomains()
    return {
        "uri": uri,
        "hostname": conn.getHostname(),
        "virt_type": "kvm" if kvm_usable(conn, uri) else "qemu",
        "domain_types": sorted(capability_domain_types(conn)),
        "arch": info[0],
        "cpus": cpus,
        "cpu_mhz": info[3],
        "numa_nodes": info[4],
        "sockets": info[5],
        "cores_per_socket": info[6],
        "threads_per_core": info[7],
        "max_vcpus": conn.getMaxVcpus(None),
        "memory_mb": memory,
        "libvirt_memory_mb": info[1],
        "free_memory_mb": free_mb,
        "ksm": ksm_state() if local else {"available": None},
        "libvirt_version": _version_string(conn.getLibVersion()),
        "hypervisor": conn.getType(),
        "hypervisor_version": _version_string(conn.getVersion()),
        "nwfilters": sorted(conn.listNWFilters()),
        "security_models": security_models(conn),
        "domain_count": len(domains),
        "running_domain_count": sum(1 for dom in domains if dom.isActive()),
        "bindings_version": _version_string(libvirt.getVersion()),
    }


def report(conn, uri, warn):
    """The host's facts; ``warn`` is told of a /dev/kvm that makes libvirtd re-probe QEMU (local hosts)
    and of a QEMU no security driver confines."""
    if is_local(uri):
        kvm_warning = kvm_device_warning()
        if kvm_warning:
            warn(kvm_warning)
    result = facts(conn, uri)
    confinement = confinement_warning(result["security_models"])
    if confinement:
        warn(confinement)
    return result
