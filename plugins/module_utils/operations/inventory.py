# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The VMs of many hypervisors as Ansible hosts: reading each hypervisor (one failing does not hide
the others) and turning the VMs' descriptions into hosts, groups and host variables.

``read_hypervisor`` talks to libvirt; ``build`` is pure (lists of dicts in, dicts out)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.connection import connection, is_no_such, libvirt
from ansible_collections.skygrid.fabric.plugins.module_utils.vm.report import describe

# The provenance keys each grouped by; batch_state only where something recorded it in the metadata.
GROUP_KEYS = (("vo", "vo"), ("trust_class", "trust_class"), ("image_id", "image"), ("batch_state", "batch"))
UNSAFE_GROUP_CHARS = re.compile(r"[^A-Za-z0-9_]")


def safe_group(name):
    """A group name Ansible accepts as it is (letters, digits, underscores; not starting with a digit)."""
    name = UNSAFE_GROUP_CHARS.sub("_", str(name))
    return "_" + name if name[:1].isdigit() else name


def hypervisor_label(uri):
    """A short name for a hypervisor from its URI: the host part, or ``localhost`` for a local URI."""
    host = urlsplit(uri).hostname
    return host or "localhost"


def normalise_hypervisors(hypervisors):
    """``hypervisors`` option -> [{uri, name}]: each item a URI or {uri, name}; names must be unique."""
    if not hypervisors:
        raise FabricError("give at least one libvirt URI, e.g. [qemu:///system] or "
                          "[qemu+ssh://root@wn042.example.org/system]", field="hypervisors")
    result, names = [], set()
    for index, item in enumerate(hypervisors):
        field = "hypervisors[%d]" % index
        if isinstance(item, str):
            item = {"uri": item}
        if not isinstance(item, dict) or not isinstance(item.get("uri"), str) or not item["uri"].strip():
            raise FabricError("must be a libvirt URI or a dict with 'uri' (and optionally 'name')", field=field)
        unknown = set(item) - {"uri", "name"}
        if unknown:
            raise FabricError("unknown keys %s; use 'uri' and 'name'" % ", ".join(sorted(unknown)), field=field)
        if ":" not in item["uri"]:
            raise FabricError("'%s' is not a libvirt URI (like qemu:///system or qemu+ssh://host/system)"
                              % item["uri"], field=field + ".uri")
        name = str(item.get("name") or hypervisor_label(item["uri"]))
        if name in names:
            raise FabricError("two hypervisors are named '%s'; give each a distinct 'name'" % name,
                              field=field + ".name")
        names.add(name)
        result.append({"uri": item["uri"], "name": name})
    return result


def read_hypervisor(hypervisor):
    """{name, uri, vms, error}: the VMs libvirt describes, or why the hypervisor could not be read."""
    record = {"name": hypervisor["name"], "uri": hypervisor["uri"], "vms": [], "error": None}
    try:
        with connection(hypervisor["uri"], readonly=True) as conn:
            for dom in conn.listAllDomains():
                try:
                    record["vms"].append(describe(dom))
                except libvirt.libvirtError as exc:
                    if not is_no_such(exc, libvirt.VIR_ERR_NO_DOMAIN):
                        raise
                    # removed between the listing and the reading: it is no longer there to list
    except FabricError as exc:
        record["error"] = str(exc)
    except libvirt.libvirtError as exc:
        record["error"] = "reading the VMs of %s failed: %s" % (hypervisor["uri"], exc.get_error_message())
    return record


def ansible_host(vm):
    """The address Ansible reaches a VM by: its DHCP lease, else the address its NIC is pinned to."""
    if vm.get("addresses"):
        return vm["addresses"][0]
    for nic in vm.get("nics") or []:
        if nic.get("ip"):
            return nic["ip"]
    return None


def host_vars(vm, hypervisor, prefix):
    variables = {prefix + key: value for key, value in sorted((vm.get("metadata") or {}).items())}
    variables.update({
        prefix + "uuid": vm["uuid"],
        prefix + "state": vm["state"],
        prefix + "vcpus": vm["vcpus"],
        prefix + "memory_mb": vm["memory_mb"],
        prefix + "macs": vm["macs"],
        prefix + "addresses": vm["addresses"],
        prefix + "hypervisor": hypervisor["name"],
        prefix + "hypervisor_uri": hypervisor["uri"],
        prefix + "managed": vm["managed"],
    })
    address = ansible_host(vm)
    if address:
        variables["ansible_host"] = address
    return variables


def host_groups(vm, hypervisor, prefix):
    metadata = vm.get("metadata") or {}
    groups = [safe_group("%shypervisor_%s" % (prefix, hypervisor["name"])),
              safe_group("%sstate_%s" % (prefix, vm["state"]))]
    for key, group in GROUP_KEYS:
        if metadata.get(key):
            groups.append(safe_group("%s%s_%s" % (prefix, group, metadata[key])))
    return groups


def build(readings, managed_only=True, vars_prefix="skygrid_", group_prefix=""):
    """Hosts, groups and warnings from ``read_hypervisor`` results.

    A VM name seen on two hypervisors (a migration caught half way, or two sites' naming clash) keeps
    the running copy and is reported, so a play never reaches the wrong one of two."""
    hosts, groups, warnings, unreachable = {}, {}, [], []
    chosen = {}
    for reading in readings:
        if reading.get("error"):
            unreachable.append(reading["name"])
            warnings.append("hypervisor %s (%s) was skipped: %s" % (reading["name"], reading["uri"], reading["error"]))
            continue
        for vm in reading["vms"]:
            if managed_only and not vm.get("managed"):
                continue
            previous = chosen.get(vm["name"])
            if previous is not None:
                replace = vm["state"] == "running" and previous[0]["state"] != "running"
                kept_vm, kept_reading = (vm, reading) if replace else previous
                warnings.append("VM %s is on both %s and %s; using the one on %s (%s)" % (
                    vm["name"], previous[1]["name"], reading["name"], kept_reading["name"], kept_vm["state"]))
                if not replace:
                    continue
            chosen[vm["name"]] = (vm, reading)
    for name in sorted(chosen):
        vm, reading = chosen[name]
        hosts[name] = host_vars(vm, reading, vars_prefix)
        for group in host_groups(vm, reading, group_prefix):
            groups.setdefault(group, []).append(name)
    return {"hosts": hosts, "groups": groups, "warnings": warnings, "unreachable": unreachable}
