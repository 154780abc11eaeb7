#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: libvirt_network
short_description: Declarative libvirt networks for VM slots, updated in place
version_added: "0.1.0"
description:
  - Defines, updates, starts, stops and removes a libvirt network from a spec - NAT, routed,
    isolated (no forwarding) or bridged onto an existing host bridge - with its DHCP range, DHCP
    host reservations and DNS domain.
  - A change to O(hosts) is applied to the running network and to its saved definition at once,
    without a restart, so attached VMs keep their connectivity.
  - Any other change redefines the network and, only when the running network differs, restarts
    it - refused while VMs are attached unless O(allow_restart=true).
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
    description: Shows the network's spec before and after.
options:
  name:
    description: Network name.
    type: str
    required: true
  state:
    description:
      - V(present) defines it; V(active) also starts it; V(inactive) defines it stopped
        (refused while VMs are attached); V(absent) stops and removes it.
    type: str
    choices: [present, active, inactive, absent]
    default: active
  mode:
    description:
      - V(nat) and V(route) forward to the host's networks; V(isolated) forwards nothing (VMs reach
        only each other and the host); V(bridge) attaches VMs to the existing host bridge O(bridge).
    type: str
    choices: [nat, route, bridge, isolated]
    default: nat
  bridge:
    description:
      - The bridge libvirt creates for the network (libvirt picks C(virbrN) when left out), or, in
        bridge mode, the existing host bridge.
    type: str
  cidr:
    description: The network's subnet, for example C(10.20.0.0/24). Required unless O(mode=bridge).
    type: str
  gateway:
    description: The host's address on the network (default the subnet's first address).
    type: str
  dhcp_range:
    description: Addresses DHCP hands out dynamically. Left out, only O(hosts) get addresses.
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
    description:
      - DHCP reservations (for example from M(skygrid.fabric.ip_lease) exports). Changed live.
      - Left out, the network keeps the reservations it has (so a role that defines the network and
        a play that manages its reservations do not undo each other); V([]) removes them all.
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
    description: DNS domain of the network (answered locally only).
    type: str
  autostart:
    description: Start the network when libvirtd starts (default true unless O(state=inactive)).
    type: bool
  allow_restart:
    description: Restart the network for a change that needs it even while VMs are attached.
    type: bool
    default: false
seealso:
  - module: skygrid.fabric.libvirt_pool
  - module: skygrid.fabric.vm
"""

EXAMPLES = r"""
- name: VM network of a worker node, no forwarding, with reservations from the IPAM
  skygrid.fabric.libvirt_network:
    name: vmnet
    mode: isolated
    bridge: sgvm0
    cidr: 10.20.0.0/24
    dhcp_range: {start: 10.20.0.200, end: 10.20.0.250}
    hosts:
      - {mac: "52:54:00:14:00:11", ip: 10.20.0.17, name: wn042-atlas-1}
    domain: vm.example.org

- name: Attach VMs to the site's existing bridge
  skygrid.fabric.libvirt_network:
    name: site
    mode: bridge
    bridge: br0

- name: Remove it
  skygrid.fabric.libvirt_network:
    name: vmnet
    state: absent
"""

RETURN = r"""
network:
  description: The outcome for the network.
  returned: always
  type: dict
  contains:
    name:
      description: Network name.
      type: str
    active:
      description: Whether the network runs (after the change; in check mode, would run).
      type: bool
    restarted:
      description: Whether a change needed (or, in check mode, would need) a restart.
      type: bool
    spec:
      description: The normalised spec (absent for O(state=absent)).
      type: dict
  sample:
    name: vmnet
    active: true
    restarted: false
    spec: {mode: isolated, bridge: sgvm0, address: 10.20.0.1, prefix: 24, domain: vm.example.org,
           dhcp_range: {start: 10.20.0.200, end: 10.20.0.250}, hosts: [{mac: "52:54:00:14:00:11", ip: 10.20.0.17, name: wn042-atlas-1}]}
actions:
  description: What was (or, in check mode, would be) done.
  returned: always
  type: list
  elements: str
"""

from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt import network_spec
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.networks import NetworkKind
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.object_module import NETWORK_OPTIONS, URI_OPTION, LibvirtObjectModule


class LibvirtNetworkModule(LibvirtObjectModule):
    supports_check_mode = True
    kind_class = NetworkKind
    result_key = "network"
    argument_spec = dict(URI_OPTION, **NETWORK_OPTIONS)

    def normalise(self, params):
        return network_spec.normalise(params)


def main():
    LibvirtNetworkModule().execute()


if __name__ == "__main__":
    main()
