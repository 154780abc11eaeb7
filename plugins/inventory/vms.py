# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: vms
short_description: The VO VMs of one or many libvirt hypervisors as Ansible hosts
version_added: "0.1.0"
description:
  - Reads the VMs of each hypervisor in O(hypervisors) (local or remote libvirt URIs, such as
    C(qemu+ssh://root@wn042.example.org/system)) and makes each VM an Ansible host.
  - C(ansible_host) is the VM's address from the DHCP leases of its libvirt network; a VM without a lease
    (not running yet, or on a bridge) gets the address its NIC is pinned to by M(skygrid.fabric.vm)
    (the C(clean-traffic) filter's IP), and none when it has neither.
  - The VM's provenance metadata (what M(skygrid.fabric.vm) records under C(urn:skygrid:fabric:vm:1) - VO,
    trust class, image id, version and sha512, endorser, slot host, ...) becomes host variables prefixed
    with O(vars_prefix), beside its UUID, state, size, MACs, addresses and hypervisor.
  - "Groups: C(vo_<vo>), C(trust_class_<n>), C(image_<image id>), C(hypervisor_<name>), C(state_<running|paused|shutoff>)
    and C(batch_<state>) when a C(batch_state) is recorded in the metadata (all prefixed with O(group_prefix),
    characters other than letters, digits and C(_) replaced by C(_)). O(keyed_groups), O(groups) and O(compose)
    add more."
  - A hypervisor that cannot be read is reported with a warning naming it and the reason, and the VMs of
    the others are still listed; its name is added to the C(skygrid_unreachable_hypervisors) variable of
    the C(all) group. With O(strict_hypervisors) the inventory fails instead.
  - A VM name found on two hypervisors (a migration caught half way) is listed once, the running copy, with a warning.
  - The inventory file's name must end in C(vms.yml) or C(vms.yaml).
author:
  - skygrid.fabric contributors (@skygrid)
requirements:
  - libvirt-python (or the distribution's python3-libvirt) on the controller
  - for C(qemu+ssh://) URIs, key-based SSH from the controller to the hypervisor
extends_documentation_fragment:
  - constructed
  - inventory_cache
options:
  plugin:
    description: Marks the file as this plugin's.
    type: str
    required: true
    choices: [skygrid.fabric.vms]
  hypervisors:
    description:
      - The hypervisors to read, each a libvirt URI or a dict with C(uri) and an optional C(name) (the
        hypervisor's name in groups and variables; by default the URI's host, C(localhost) for a local URI).
    type: list
    elements: raw
    default: [qemu:///system]
  managed_only:
    description: List only VMs that M(skygrid.fabric.vm) manages (with provenance metadata, a seed or owned disks).
    type: bool
    default: true
  vars_prefix:
    description: Prefix of the host variables made from each VM's description and metadata.
    type: str
    default: skygrid_
  group_prefix:
    description: Prefix of the groups this plugin makes.
    type: str
    default: ""
  strict_hypervisors:
    description: Fail the inventory when a hypervisor cannot be read, rather than warn and list the others.
    type: bool
    default: false
  max_parallel:
    description: How many hypervisors are read at once.
    type: int
    default: 8
seealso:
  - module: skygrid.fabric.vm_info
"""

EXAMPLES = r"""
# inventories/site/skygrid_vms.yml
plugin: skygrid.fabric.vms
hypervisors:
  - qemu:///system
  - uri: qemu+ssh://root@wn042.example.org/system
    name: wn042
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/skygrid-vms
cache_timeout: 300
keyed_groups:
  - key: skygrid_image_version
    prefix: image_version
compose:
  ansible_user: "'root'"

# Then, e.g.:  ansible-inventory -i inventories/site/skygrid_vms.yml --graph vo_atlas
#              ansible -i inventories/site/skygrid_vms.yml 'vo_lhcb:&state_running' -m ansible.builtin.ping
"""

from concurrent.futures import ThreadPoolExecutor

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.operations import inventory as vm_inventory


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    NAME = "skygrid.fabric.vms"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(("vms.yml", "vms.yaml"))

    def _read(self, hypervisors):
        workers = max(1, min(self.get_option("max_parallel"), len(hypervisors)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(vm_inventory.read_hypervisor, hypervisors))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        try:
            hypervisors = vm_inventory.normalise_hypervisors(self.get_option("hypervisors"))
        except FabricError as exc:
            raise AnsibleParserError("%s: %s" % (path, exc))
        cache_key = self.get_cache_key(path)
        use_cache = self.get_option("cache") and cache
        update_cache = self.get_option("cache") and not cache
        readings = None
        if use_cache:
            try:
                readings = self._cache[cache_key]
            except KeyError:
                update_cache = True
        if readings is None:
            readings = self._read(hypervisors)
        if update_cache:
            self._cache[cache_key] = readings
        self._populate(readings)

    def _populate(self, readings):
        result = vm_inventory.build(readings, managed_only=self.get_option("managed_only"),
                                    vars_prefix=self.get_option("vars_prefix"),
                                    group_prefix=self.get_option("group_prefix"))
        if result["unreachable"] and self.get_option("strict_hypervisors"):
            raise AnsibleParserError("; ".join(result["warnings"]))
        for warning in result["warnings"]:
            self.display.warning(warning)
        self.inventory.set_variable("all", "skygrid_unreachable_hypervisors", result["unreachable"])
        for group, members in sorted(result["groups"].items()):
            self.inventory.add_group(group)
            for host in members:
                self.inventory.add_host(host, group=group)
        strict = self.get_option("strict")
        for host, variables in result["hosts"].items():
            self.inventory.add_host(host)
            for key, value in variables.items():
                self.inventory.set_variable(host, key, value)
            self._set_composite_vars(self.get_option("compose"), variables, host, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), variables, host, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), variables, host, strict=strict)
