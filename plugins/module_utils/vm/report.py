# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a site asks about its VMs: state, size, disks, addresses and provenance."""

from __future__ import annotations

from ansible_collections.skygrid.fabric.plugins.module_utils.vm import spec as vm_spec
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.connection import is_no_such, libvirt, lookup
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


def describe_all(conn, name=None):
    if name:
        dom = lookup(conn.lookupByName, name)
        return [describe(dom)] if dom is not None else []
    vms = []
    for dom in conn.listAllDomains():
        try:
            vms.append(describe(dom))
        except libvirt.libvirtError as exc:
            # undefined between the listing and the reading (another run removing its VMs): not there
            if not is_no_such(exc, libvirt.VIR_ERR_NO_DOMAIN):
                raise
    return sorted(vms, key=lambda vm: vm["name"])
