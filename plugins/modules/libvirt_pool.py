#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: libvirt_pool
short_description: Declarative libvirt storage pools for VO images and VM overlays
version_added: "0.1.0"
description:
  - Defines, updates, builds, starts, stops and removes a libvirt storage pool - a directory or an
    LVM volume group - from a spec.
  - A changed spec updates the saved definition in place; an active pool is restarted only when its
    running definition differs, and not while running VMs use its volumes unless O(allow_restart=true).
  - O(state=absent) refuses to delete volumes unless O(purge=true), and always refuses while VMs use them.
author:
  - skygrid.fabric contributors (@skygrid)
extends_documentation_fragment:
  - skygrid.fabric.libvirt
attributes:
  check_mode:
    support: full
    description: Reports what would be defined, built, restarted or removed, and changes nothing.
  diff_mode:
    support: full
    description: Shows the pool's spec before and after.
options:
  name:
    description: Pool name.
    type: str
    required: true
  state:
    description:
      - V(present) defines it; V(active) also builds (directory, or volume group on O(source_devices))
        and starts it; V(inactive) defines it stopped; V(absent) removes it.
    type: str
    choices: [present, active, inactive, absent]
    default: active
  type:
    description: V(dir) for a directory, V(logical) for an LVM volume group.
    type: str
    choices: [dir, logical]
    default: dir
  path:
    description: The directory of a V(dir) pool (absolute).
    type: path
  vg_name:
    description: Volume group of a V(logical) pool (default O(name)).
    type: str
  source_devices:
    description: Physical volumes a V(logical) pool's volume group is built on (never overwritten).
    type: list
    elements: str
    default: []
  mode:
    description: Permissions of the pool directory, octal (for example C(0711)).
    type: str
  owner:
    description: Numeric owner (uid) of the pool directory.
    type: str
  group:
    description: Numeric group (gid) of the pool directory.
    type: str
  autostart:
    description: Start the pool when libvirtd starts (default true unless O(state=inactive)).
    type: bool
  purge:
    description: With O(state=absent), delete the pool's volumes and directory too.
    type: bool
    default: false
  allow_restart:
    description: Restart the pool for a change that needs it even while running VMs use its volumes.
    type: bool
    default: false
seealso:
  - module: skygrid.fabric.libvirt_network
  - module: skygrid.fabric.vm
"""

EXAMPLES = r"""
- name: Pool for staged VO images and VM overlays
  skygrid.fabric.libvirt_pool:
    name: vo-images
    path: /var/lib/skygrid/images
    mode: "0711"

- name: A volume group on the node's scratch disk
  skygrid.fabric.libvirt_pool:
    name: vmscratch
    type: logical
    source_devices: [/dev/sdb]

- name: Remove a pool and everything in it
  skygrid.fabric.libvirt_pool:
    name: vo-images
    state: absent
    purge: true
"""

RETURN = r"""
pool:
  description: The outcome for the pool.
  returned: always
  type: dict
  contains:
    name:
      description: Pool name.
      type: str
    active:
      description: Whether the pool runs (after the change; in check mode, would run).
      type: bool
    restarted:
      description: Whether a change needed (or, in check mode, would need) a restart.
      type: bool
    spec:
      description: The normalised spec (absent for O(state=absent)).
      type: dict
  sample:
    name: vo-images
    active: true
    restarted: false
    spec: {type: dir, path: /var/lib/skygrid/images, mode: "0711", owner: null, group: null, vg_name: null, source_devices: []}
actions:
  description: What was (or, in check mode, would be) done.
  returned: always
  type: list
  elements: str
"""

from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt import pools
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.object_module import POOL_OPTIONS, URI_OPTION, LibvirtObjectModule


class LibvirtPoolModule(LibvirtObjectModule):
    supports_check_mode = True
    kind_class = pools.PoolKind
    result_key = "pool"
    argument_spec = dict(URI_OPTION, **POOL_OPTIONS)

    def normalise(self, params):
        return pools.normalise(params)


def main():
    LibvirtPoolModule().execute()


if __name__ == "__main__":
    main()
