# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a site asks about its VMs: state, size, disks, addresses and provenance."""

from __future__ import annotations

from ansible_collections.skygrid.fabric.plugins.module_utils.vm import spec as vm_spec
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.connection import libvirt, lookup
from ansible_collections.skygrid.fabric.plugins.module_utils.vm.lifecycle import run_state


def _addresses(dom):
    """Addresses per MAC, from the DHCP leases of libvirt networks (only for running VMs)."""
    if not dom.isActive():
        return {}
    try:
        interfaces = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0)
    except libvirt.libvirtError:
        return {}
    found = {}
    for iface in interfaces.values():
        mac = (iface.get("hwaddr") or "").lower()
        found.setdefault(mac, []).extend(addr["addr"] for addr in iface.get("addrs") or [])
    return found


def describe(dom):
    # The definition names disks by pool/volume; a running domain may name them by file (after a
    # migration), so report the definition where there is one.
    flags = libvirt.VIR_DOMAIN_XML_INACTIVE if dom.isPersistent() else 0
    spec = vm_spec.from_xml(dom.XMLDesc(flags))
    addresses = _addresses(dom)
    nics = []
    for nic in spec["nics"]:
        nics.append(dict(nic, addresses=addresses.get(nic["mac"], [])))
    return {
        "name": spec["name"],
        "uuid": dom.UUIDString(),
        "state": run_state(dom),
        "persistent": bool(dom.isPersistent()),
        "autostart": bool(dom.autostart()),
        "virt_type": spec["virt_type"],
        "vcpus": spec["vcpus"],
        "memory_mb": spec["memory_mb"],
        "disks": spec["disks"],
        "seed": spec["seed"],
        "nics": nics,
        "macs": [nic["mac"] for nic in spec["nics"]],
        "addresses": sorted({addr for addrs in addresses.values() for addr in addrs}),
        "metadata": spec["metadata"],
        "managed": bool(spec["metadata"]) or bool(spec["seed"]) or any(d["owned"] for d in spec["disks"]),
    }


def _describe_if_there(dom):
    """describe(dom), or None for a domain undefined since it was listed (another run removed it)."""
    try:
        return describe(dom)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def describe_all(conn, name=None):
    domains = conn.listAllDomains() if not name else [dom for dom in [lookup(conn.lookupByName, name)] if dom]
    found = (_describe_if_there(dom) for dom in domains)
    return sorted((vm for vm in found if vm is not None), key=lambda vm: vm["name"])
