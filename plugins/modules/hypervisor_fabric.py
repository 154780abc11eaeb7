#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: hypervisor_fabric
short_description: A hypervisor's VM networks and image pools in one run, and its facts
version_added: "0.1.0"
description:
  - Brings every listed libvirt network and storage pool to its spec, as M(skygrid.fabric.libvirt_network)
    and M(skygrid.fabric.libvirt_pool) do one at a time - the same code and the same safeguards, so a restart
    that would cut off VMs is refused unless its O(networks[].allow_restart) or O(pools[].allow_restart) says so -
    then reports the host's facts as M(skygrid.fabric.hypervisor_info) does, with its warnings, and its VMs
    as M(skygrid.fabric.vm_info) does.
  - One module run for a host's whole libvirt fabric, which a converge that changes nothing pays on every
    worker node instead of one run per object and one for the facts.
  - Networks first, in order, then pools; the first failure stops the run and names the item
    (for example C(networks[1].allow_restart)).
author:
  - skygrid.fabric contributors (@skygrid)
extends_documentation_fragment:
  - skygrid.fabric.libvirt
attributes:
  check_mode:
    support: full
    description: Reports what would be defined, updated, restarted or removed, and changes nothing.
  diff_mode:
    support: full
    description: Shows each changed object's spec before and after, keyed C(network NAME) or C(pool NAME).
options:
  networks:
    description: Networks, each with the options of M(skygrid.fabric.libvirt_network) but O(uri).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Network name.
        type: str
        required: true
      state:
        description: V(present), V(active) (default), V(inactive) or V(absent), as in M(skygrid.fabric.libvirt_network).
        type: str
        choices: [present, active, inactive, absent]
        default: active
      mode:
        description: V(nat), V(route), V(bridge) or V(isolated).
        type: str
        choices: [nat, route, bridge, isolated]
        default: nat
      bridge:
        description: The bridge libvirt creates, or in bridge mode the existing host bridge.
        type: str
      cidr:
        description: The subnet. Required unless O(networks[].mode=bridge).
        type: str
      gateway:
        description: The host's address on the network (default the subnet's first address).
        type: str
      dhcp_range:
        description: Addresses DHCP hands out dynamically.
        type: dict
        suboptions:
          start:
            description: First address.
            type: str
            required: true
          end:
            description: Last address.
            type: str
            required: true
      hosts:
        description: DHCP reservations; left out, the network keeps the ones it has.
        type: list
        elements: dict
        suboptions:
          mac:
            description: The VM NIC's MAC address.
            type: str
            required: true
          ip:
            description: The address reserved for it.
            type: str
            required: true
          name:
            description: Host name DHCP and DNS give it.
            type: str
      domain:
        description: DNS domain of the network.
        type: str
      autostart:
        description: Start the network with libvirtd (default true unless O(networks[].state=inactive)).
        type: bool
      allow_restart:
        description: Restart the network for a change that needs it even while VMs are attached.
        type: bool
        default: false
  pools:
    description: Storage pools, each with the options of M(skygrid.fabric.libvirt_pool) but O(uri).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Pool name.
        type: str
        required: true
      state:
        description: V(present), V(active) (default), V(inactive) or V(absent), as in M(skygrid.fabric.libvirt_pool).
        type: str
        choices: [present, active, inactive, absent]
        default: active
      type:
        description: V(dir) or V(logical).
        type: str
        choices: [dir, logical]
        default: dir
      path:
        description: The directory of a V(dir) pool (absolute).
        type: path
      vg_name:
        description: Volume group of a V(logical) pool (default its name).
        type: str
      source_devices:
        description: Physical volumes a V(logical) pool's volume group is built on (never overwritten).
        type: list
        elements: str
        default: []
      mode:
        description: Permissions of the pool directory, octal.
        type: str
      owner:
        description: Numeric owner (uid) of the pool directory.
        type: str
      group:
        description: Numeric group (gid) of the pool directory.
        type: str
      autostart:
        description: Start the pool with libvirtd (default true unless O(pools[].state=inactive)).
        type: bool
      purge:
        description: With O(pools[].state=absent), delete the pool's volumes and directory too.
        type: bool
        default: false
      allow_restart:
        description: Restart the pool for a change that needs it even while running VMs use its volumes.
        type: bool
        default: false
seealso:
  - module: skygrid.fabric.libvirt_network
  - module: skygrid.fabric.libvirt_pool
  - module: skygrid.fabric.hypervisor_info
"""

EXAMPLES = r"""
- name: A worker node's VM network and image pool, and its facts
  skygrid.fabric.hypervisor_fabric:
    networks:
      - name: vmnet
        mode: isolated
        bridge: sgvm0
        cidr: 10.20.0.0/24
        domain: vm.example.org
    pools:
      - name: vo-images
        path: /var/lib/skygrid/images
        mode: "0711"
  register: fabric

- name: Show the virtualisation type VMs get
  ansible.builtin.debug:
    msg: "{{ fabric.hypervisor.virt_type }}"
"""

RETURN = r"""
networks:
  description: The outcome for each network, in order, as M(skygrid.fabric.libvirt_network) returns it.
  returned: always
  type: list
  elements: dict
  sample: [{name: vmnet, state: active, active: true, restarted: false, spec: {mode: isolated, bridge: sgvm0}}]
pools:
  description: The outcome for each pool, in order, as M(skygrid.fabric.libvirt_pool) returns it.
  returned: always
  type: list
  elements: dict
  sample: [{name: vo-images, state: active, active: true, restarted: false, spec: {type: dir, path: /var/lib/skygrid/images}}]
hypervisor:
  description: The host's facts after the change, as M(skygrid.fabric.hypervisor_info) returns them.
  returned: always
  type: dict
  sample: {virt_type: qemu, cpus: 2, memory_mb: 24034, nwfilters: [clean-traffic], libvirt_version: 9.0.0}
vms:
  description:
    - The host's VMs, as M(skygrid.fabric.vm_info) returns them (name, state, their skygrid.fabric metadata).
    - The C(skygrid.fabric.vm_slots) role plans with them when given them as C(vm_slots_vms), instead of reading them again.
  returned: always
  type: list
  elements: dict
  sample: [{name: wn042-atlas-1, state: running, metadata: {vo: atlas, slot_host: wn042}}]
actions:
  description: What was (or, in check mode, would be) done.
  returned: always
  type: list
  elements: str
"""

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt import host, network_spec, pools
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.connection import connection
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.networks import NetworkKind
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.object_module import (
    NETWORK_OPTIONS, POOL_OPTIONS, URI_OPTION, converge_object)
from ansible_collections.skygrid.fabric.plugins.module_utils.module_base import FabricModule
from ansible_collections.skygrid.fabric.plugins.module_utils.vm.report import describe_all

# option: (what its diff keys start with, the object kind, its spec normaliser)
KINDS = (
    ("networks", "network ", NetworkKind, network_spec.normalise),
    ("pools", "pool ", pools.PoolKind, pools.normalise),
)


class HypervisorFabricModule(FabricModule):
    supports_check_mode = True
    argument_spec = dict(
        URI_OPTION,
        networks=dict(type="list", elements="dict", default=[], options=NETWORK_OPTIONS),
        pools=dict(type="list", elements="dict", default=[], options=POOL_OPTIONS),
    )

    def run(self):
        uri = self.params["uri"]
        result = {}
        with connection(uri) as conn:
            for option, key_prefix, kind_class, normalise in KINDS:
                result[option] = []
                for index, params in enumerate(self.params[option]):
                    child = self.reconciler.child()
                    try:
                        result[option].append(converge_object(conn, kind_class, normalise, params, child))
                    except FabricError as exc:
                        raise exc.within("%s[%d]" % (option, index))
                    finally:
                        self.reconciler.merge(child, key_prefix)
            result["hypervisor"] = host.report(conn, uri, self.reconciler.warn)
            result["vms"] = describe_all(conn)
        return result


def main():
    HypervisorFabricModule().execute()


if __name__ == "__main__":
    main()
