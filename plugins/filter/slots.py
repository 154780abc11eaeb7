# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: slot_plan
short_description: Plan the VM slots of one hypervisor from its free capacity and the VOs' shares
version_added: "0.1.0"
description:
  - Splits the cores and memory a hypervisor has for VMs between the VOs, by their shares and VM sizes.
  - Each VO first gets the whole VMs its share allows; what is left goes, one VM at a time, to the VO
    furthest below its share that still fits.
  - Deterministic - the same inputs give the same slots, named C(<host>-<vo>-<n>), every run.
author:
  - skygrid.fabric contributors (@skygrid)
options:
  _input:
    description: The hypervisor's inventory name.
    type: str
    required: true
  cores:
    description: Cores free for VMs (after the host's reservation).
    type: int
    required: true
  memory_mb:
    description: Memory in MiB free for VMs.
    type: int
    required: true
  vos:
    description: The site's VOs, C({name - {share (percent), vm - {vcpus, memory_mb}, max_slots_per_host}}).
    type: dict
    required: true
  existing:
    description:
      - The host's VMs now (the C(vms) of M(skygrid.fabric.vm_info), or C({name, vo}) items). Its slot VMs
        (metadata C(slot_host) is this host) of a VO that still has a share are kept, in name order while
        they fit, and only the room left is split by the shares, under names not taken - so the plan after
        a rebalance keeps what the rebalance did.
    type: list
    elements: dict
"""

EXAMPLES = r"""
- name: Plan this worker node's slots
  ansible.builtin.set_fact:
    fabric_slots: "{{ inventory_hostname | skygrid.fabric.slot_plan(cores=30, memory_mb=120000, vos=fabric_vos) }}"
"""

RETURN = r"""
_value:
  description: The slots, each C({name, host, vo, index, vcpus, memory_mb}), grouped by VO in name order.
  type: list
  elements: dict
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.batch import domains
from ansible_collections.skygrid.fabric.plugins.module_utils.planning import slots
from ansible_collections.skygrid.fabric.plugins.module_utils.contextualisation import slurm as slurm_context


def _vo_image_vos(*args, **kwargs):
    # Imported when used: images.args pulls in ansible.module_utils.urls (~30 ms), and Ansible imports every
    # filter file of the collection in the worker of each task that uses any of its filters.
    from ansible_collections.skygrid.fabric.plugins.module_utils.images import args as image_args
    return image_args.vos_items(*args, **kwargs)


def _filter(name, func):
    def run(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except FabricError as exc:
            raise AnsibleFilterError("%s: %s" % (name, exc))
    return run


FILTERS = {
    "slot_plan": slots.plan_slots,
    "ip_pool_size": slots.ip_pool_size,
    "slot_leases": slots.lease_requests,
    "slot_vm_items": slots.vm_items,
    "dhcp_hosts": slots.dhcp_hosts,
    "slot_vms": slots.slot_vms,
    "slot_batch_nodes": slots.batch_nodes,
    "batch_node_items": slots.batch_node_items,
    "batch_env": domains.batch_env,
    "site_built_vos": domains.site_built_vos,
    "vo_image_vos": _vo_image_vos,
    "slurm_vm_domains": slurm_context.plan_domains,
    "slurm_domain_errors": slurm_context.domain_errors,
    "slurm_vm_user_data": slurm_context.vm_user_data,
}


class FilterModule:
    def filters(self):
        return {name: _filter(name, func) for name, func in FILTERS.items()}
