#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: hypervisor_info
short_description: Facts about a libvirt hypervisor host
version_added: "0.1.0"
description:
  - Reports what a worker node offers as a VM host - the virtualisation type guests will get
    (kvm or qemu), CPUs, memory, KSM memory sharing, libvirt and QEMU versions, domain counts.
  - C(virt_type) is C(kvm) only when libvirt offers KVM and, on a local host, the CPU has VT-x or
    AMD-V; sandboxes that expose C(/dev/kvm) without them get C(qemu).
  - Warns when C(/dev/kvm) is not C(root:kvm 0660), as on hosts where udev does not run; libvirtd then
    re-probes QEMU on every define (seconds each). The warning names the fix.
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
seealso:
  - module: skygrid.fabric.vm_info
"""

EXAMPLES = r"""
- name: Read the hypervisor's facts
  skygrid.fabric.hypervisor_info:
  register: hv

- name: Refuse to plan VM slots on a host without hardware virtualisation
  ansible.builtin.assert:
    that: hv.hypervisor.virt_type == 'kvm'
    fail_msg: "{{ inventory_hostname }} has no usable KVM; VMs would run under slow emulation"
"""

RETURN = r"""
hypervisor:
  description: The host's facts.
  returned: always
  type: dict
  contains:
    virt_type:
      description: C(kvm) or C(qemu), the type V(auto) resolves to in M(skygrid.fabric.vm).
      type: str
    domain_types:
      description: Domain types libvirt offers for x86_64 guests.
      type: list
      elements: str
    cpus:
      description: Logical CPUs.
      type: int
    memory_mb:
      description:
        - Memory in MiB, the figure slot plans use. For a local URI the kernel's MemTotal, which only
          changes when the host does; for a remote URI libvirt's figure.
      type: int
    libvirt_memory_mb:
      description:
        - Memory in MiB as libvirt reports it (the sum of its NUMA nodes). On some machines it is far
          below MemTotal and moves between calls, so nothing idempotent should depend on it.
      type: int
    free_memory_mb:
      description: Free memory in MiB.
      type: int
    max_vcpus:
      description: Most vCPUs one guest may have.
      type: int
    ksm:
      description: Kernel same-page merging - C(available), C(enabled), C(run), C(pages_shared), C(pages_sharing), ...
      type: dict
    libvirt_version:
      description: Version of the libvirt daemon's library.
      type: str
    hypervisor_version:
      description: Version of the hypervisor (QEMU).
      type: str
    nwfilters:
      description: Names of libvirt's network filters (C(clean-traffic) is the anti-spoofing one VM NICs use).
      type: list
      elements: str
    security_models:
      description:
        - libvirt's security drivers for QEMU (C(dac), C(apparmor), C(selinux), C(none)). Without
          C(apparmor) or C(selinux) nothing confines a QEMU process beyond its Unix user, and the module warns.
      type: list
      elements: str
    domain_count:
      description: Domains defined or running.
      type: int
    running_domain_count:
      description: Domains running.
      type: int
  sample:
    virt_type: kvm
    domain_types: [kvm, qemu]
    cpus: 64
    memory_mb: 257426
    libvirt_memory_mb: 257426
    free_memory_mb: 198311
    max_vcpus: 288
    ksm: {available: true, enabled: true, run: 1, pages_shared: 1024, pages_sharing: 9322}
    libvirt_version: 9.0.0
    hypervisor_version: 7.2.0
    nwfilters: [allow-arp, clean-traffic, no-arp-spoofing, no-ip-spoofing, no-mac-spoofing]
    security_models: [apparmor, dac]
    domain_count: 12
    running_domain_count: 12
"""

from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt import host
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.connection import connection
from ansible_collections.skygrid.fabric.plugins.module_utils.module_base import FabricModule


class HypervisorInfoModule(FabricModule):
    supports_check_mode = True
    argument_spec = dict(uri=dict(type="str", default="qemu:///system"))

    def run(self):
        uri = self.params["uri"]
        with connection(uri, readonly=True) as conn:
            return {"hypervisor": host.report(conn, uri, self.reconciler.warn)}


def main():
    HypervisorInfoModule().execute()


if __name__ == "__main__":
    main()
