#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: batch_queue
short_description: A VO's Torque queue or Slurm partition that routes the VO's jobs to its VMs
version_added: "0.1.0"
description:
  - Torque - an execution queue whose C(resources_default.neednodes) is C(1:<property>), so pbs_sched runs
    its jobs on nodes (VMs) with the VO's property (a bare property is read as a host name, and the jobs stay
    queued; a user's own C(-l nodes=) replaces the default), with C(acl_groups) (and C(acl_group_enable),
    C(acl_group_sloppy) so secondary groups count) for the VO's Unix groups, and C(enabled)/C(started).
  - Slurm - a partition over the nodes with the VO's feature (or over a NodeSet of slurm.conf, which also
    takes in dynamic nodes that register later), with C(AllowGroups), C(AllowAccounts), and a state from
    O(enabled)/O(started) (C(UP), C(DOWN), C(DRAIN), C(INACTIVE)).
  - Reads the queue first and changes only what differs.
  - Both backends are tested live - Torque 6.1.3 (built from source) and Slurm 22.05.
author:
  - skygrid.fabric contributors (@skygrid)
requirements:
  - "Torque: C(qmgr) (Torque 6.x), run as a Torque manager."
  - "Slurm: C(scontrol) (Slurm 22.05 or later), run as root or SlurmUser."
attributes:
  check_mode:
    support: full
    description: Reports what would be created, changed or deleted; changes nothing.
  diff_mode:
    support: full
    description: Shows the queue's routing, ACLs and state before and after.
extends_documentation_fragment:
  - skygrid.fabric.batch
options:
  name:
    description: Queue (Torque) or partition (Slurm) name, usually the VO's name.
    type: str
    required: true
  state:
    description:
      - V(present) creates or updates the queue; V(absent) deletes it.
      - Torque refuses to delete a queue holding jobs that have not completed; the completed ones it still keeps
        are purged first (C(qdel -p)).
    type: str
    choices: [present, absent]
    default: present
  property:
    description:
      - The node property (Torque) or feature (Slurm) of the VO's nodes; default O(name).
    type: str
  groups:
    description:
      - Unix groups allowed to submit (Torque C(acl_groups), Slurm C(AllowGroups)); empty allows all.
    type: list
    elements: str
    default: []
  accounts:
    description: Slurm accounts allowed to submit (C(AllowAccounts)); empty allows all. Slurm only.
    type: list
    elements: str
    default: []
  enabled:
    description: The queue accepts new jobs.
    type: bool
    default: true
  started:
    description: The queue's jobs are scheduled.
    type: bool
    default: true
  nodeset:
    description:
      - Slurm only - the partition's nodes are this NodeSet of slurm.conf (for example C(vo_atlas),
        defined as C(NodeSet=vo_atlas Feature=atlas) by the slurm role) rather than the nodes that have
        the feature now.
    type: str
notes:
  - A Slurm partition made with C(scontrol) does not survive C(scontrol reconfigure) or a slurmctld
    restart; put it in slurm.conf for good (the skygrid.fabric.slurm role does) and use this module to
    check or adjust it live.
  - Without O(nodeset), a Slurm partition lists the nodes that have the feature when the module runs;
    run it again after adding nodes, or use a NodeSet.
seealso:
  - module: skygrid.fabric.batch_node
"""

EXAMPLES = r"""
- name: ATLAS queue on the Torque server, for the ATLAS pool accounts only
  skygrid.fabric.batch_queue:
    backend: torque
    name: atlas
    property: atlas
    groups: [atlas, atlasprd]
  delegate_to: torque-server.example.org

- name: LHCb partition over the slurm.conf NodeSet of LHCb VMs
  skygrid.fabric.batch_queue:
    backend: slurm
    name: lhcb
    nodeset: vo_lhcb
    groups: [lhcb]
    accounts: [lhcb]
  delegate_to: slurmctld.example.org

- name: Stop sending new jobs to the ATLAS VMs (queued jobs still run)
  skygrid.fabric.batch_queue:
    backend: torque
    name: atlas
    enabled: false
  delegate_to: torque-server.example.org
"""

RETURN = r"""
queue:
  description: The queue or partition after the change (before it, in check mode); null when absent.
  returned: always
  type: dict
  contains:
    name:
      description: Queue or partition name.
      type: str
    property:
      description: Torque C(resources_default.neednodes) (null for Slurm).
      type: str
    groups:
      description: Allowed Unix groups (empty - all).
      type: list
      elements: str
    accounts:
      description: Allowed Slurm accounts (empty - all).
      type: list
      elements: str
    enabled:
      description: Accepts new jobs.
      type: bool
    started:
      description: Runs its jobs.
      type: bool
    nodes:
      description: Slurm - the partition's nodes.
      type: list
      elements: str
    nodeset:
      description: Slurm - the NodeSet the partition uses, if any.
      type: str
  sample:
    name: atlas
    property: atlas
    groups: [atlas]
    accounts: []
    enabled: true
    started: true
    nodes: []
    nodeset: null
name:
  description: The queue name.
  returned: always
  type: str
backend:
  description: The backend used.
  returned: always
  type: str
actions:
  description: What was (or, in check mode, would be) done.
  returned: always
  type: list
  elements: str
  sample: ["create queue atlas for atlas"]
"""

from ansible_collections.skygrid.fabric.plugins.module_utils.batch import BATCH_OPTIONS, module_backend
from ansible_collections.skygrid.fabric.plugins.module_utils.batch.manage import ensure_queue, queue_spec
from ansible_collections.skygrid.fabric.plugins.module_utils.module_base import FabricModule


class BatchQueueModule(FabricModule):
    supports_check_mode = True
    argument_spec = dict(
        BATCH_OPTIONS,
        name=dict(type="str", required=True),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        property=dict(type="str"),
        groups=dict(type="list", elements="str", default=[]),
        accounts=dict(type="list", elements="str", default=[]),
        enabled=dict(type="bool", default=True),
        started=dict(type="bool", default=True),
        nodeset=dict(type="str"),
    )

    def run(self):
        backend = module_backend(self.module)
        return ensure_queue(backend, queue_spec(self.params, backend), self.reconciler)


def main():
    BatchQueueModule().execute()


if __name__ == "__main__":
    main()
