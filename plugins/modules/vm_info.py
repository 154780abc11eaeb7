#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vm_info
short_description: List libvirt VMs with their state, addresses and provenance
version_added: "0.1.0"
description:
  - Lists every VM on a hypervisor (or one) with its run state, size, disks, MAC addresses,
    addresses from the DHCP leases of libvirt networks, and the provenance metadata
    M(skygrid.fabric.vm) keeps (VO, trust class, image id and sha512).
  - Answers "which image, of which VO, endorsed by whom, runs on this host".
author:
  - skygrid.fabric contributors (@skygrid)
extends_documentation_fragment:
  - skygrid.fabric.libvirt
attributes:
  check_mode:
    support: full
    description: Reads only.
  diff_mode:
    support: none
    description: Reads only.
options:
  name:
    description: Only this VM (an empty list when it does not exist).
    type: str
  vo:
    description: Only VMs whose metadata names this VO.
    type: str
seealso:
  - module: skygrid.fabric.vm
"""

EXAMPLES = r"""
- name: All VMs on the host
  skygrid.fabric.vm_info:
  register: info

- name: Show which VO image each VM runs
  ansible.builtin.debug:
    msg: "{{ item.name }} {{ item.metadata.vo | default('-') }} {{ item.metadata.image_id | default('-') }} {{ item.addresses }}"
  loop: "{{ info.vms }}"

- name: ATLAS VMs only
  skygrid.fabric.vm_info:
    vo: atlas
  register: atlas_vms
"""

RETURN = r"""
vms:
  description: The VMs, sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: VM name.
      type: str
    uuid:
      description: Domain UUID.
      type: str
    state:
      description: C(running), C(paused) or C(shutoff).
      type: str
    autostart:
      description: Whether libvirtd starts the VM at boot.
      type: bool
    vcpus:
      description: Virtual CPUs.
      type: int
    memory_mb:
      description: Memory in MiB.
      type: int
    disks:
      description: Disks with pool, volume, base volume and whether the VM owns them.
      type: list
      elements: dict
    nics:
      description: NICs with network or bridge, MAC, filter IP and leased addresses.
      type: list
      elements: dict
    macs:
      description: MAC addresses.
      type: list
      elements: str
    addresses:
      description: Addresses from DHCP leases.
      type: list
      elements: str
    metadata:
      description: Provenance (C(vo), C(trust_class), C(image_id), C(image_sha512), ...).
      type: dict
    managed:
      description: Whether skygrid.fabric manages the VM.
      type: bool
  sample:
    - name: wn042-atlas-1
      uuid: 0b7c2f7e-8d7a-4b1e-9a41-2f1e5f3c9d10
      state: running
      autostart: true
      vcpus: 8
      memory_mb: 16384
      macs: ["52:54:00:14:00:11"]
      addresses: ["10.20.0.17"]
      metadata: {vo: atlas, trust_class: "2", image_id: 6a9d3c0e-1f0b-4b4e-8d65-7cf4a1b2c3d4}
      managed: true
"""

from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.connection import connection
from ansible_collections.skygrid.fabric.plugins.module_utils.module_base import FabricModule
from ansible_collections.skygrid.fabric.plugins.module_utils.vm.report import describe_all


class VmInfoModule(FabricModule):
    supports_check_mode = True
    argument_spec = dict(
        uri=dict(type="str", default="qemu:///system"),
        name=dict(type="str"),
        vo=dict(type="str"),
    )

    def run(self):
        with connection(self.params["uri"], readonly=True) as conn:
            vms = describe_all(conn, self.params["name"])
        if self.params["vo"]:
            vms = [vm for vm in vms if vm["metadata"].get("vo") == self.params["vo"]]
        return {"vms": vms}


def main():
    VmInfoModule().execute()


if __name__ == "__main__":
    main()
