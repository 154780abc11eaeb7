#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: batch_node
short_description: A node in the batch system (Torque or Slurm) - add, drain, wait until drained, online, remove
version_added: "0.1.0"
description:
  - Manages one worker node (a physical worker node or a VO VM) in the site's batch system through one
    interface, with a C(torque) backend (C(qmgr), C(pbsnodes)) and a C(slurm) backend (C(scontrol),
    C(squeue); Slurm dynamic nodes).
  - Reads the node first and runs a command only for what differs, so a second run changes nothing.
  - Runs where the batch client commands work with administrator rights - the batch server, or any
    host with the client commands configured - usually with C(delegate_to).
  - Both backends are tested live - Torque 6.1.3 (built from source) and Slurm 22.05.
author:
  - skygrid.fabric contributors (@skygrid)
requirements:
  - "Torque: C(qmgr) and C(pbsnodes) (Torque 6.x), run as a Torque manager."
  - "Slurm: C(scontrol) and C(squeue) (Slurm 22.05 or later), run as root or SlurmUser; C(MaxNodeCount) in slurm.conf for dynamic nodes."
attributes:
  check_mode:
    support: full
    description: Reports what would be added, changed, drained or removed; changes nothing and does not wait.
  diff_mode:
    support: full
    description: Shows the node's cores, memory, properties, schedulability and note before and after.
extends_documentation_fragment:
  - skygrid.fabric.batch
options:
  name:
    description:
      - Node name (Torque node / Slurm NodeName); for a VM, its name.
      - Required unless O(nodes) is given.
    type: str
  nodes:
    description:
      - Several nodes in one call, all brought to O(state) (with O(wait_drained), O(timeout) and O(force)),
        in order. One module run for all of a host's VM slots instead of one per slot.
      - The nodes may be in different clusters (each VO's own Slurm cluster) - each item's O(nodes[].environment)
        names its cluster, so one run registers the slots of every VO.
      - Mutually exclusive with O(name).
    type: list
    elements: dict
    suboptions:
      name:
        description: Node name.
        type: str
        required: true
      cores:
        description: As O(cores).
        type: int
      memory_mb:
        description: As O(memory_mb).
        type: int
      properties:
        description: As O(properties).
        type: list
        elements: str
      address:
        description: As O(address).
        type: str
      note:
        description: As O(note).
        type: str
      environment:
        description:
          - Environment variables for the batch commands about this node, naming its cluster - for a VO's own
            Slurm cluster C(SLURM_CONF) of that cluster's C(slurm.conf) (see the P(skygrid.fabric.batch_env#filter)
            filter). Added to the task's environment; omitted or V({}) means the cluster the task's environment reaches.
          - The module runs each cluster's commands with its environment, in one process for all clusters.
        type: dict
  state:
    description:
      - V(present) - the node exists with the given size and properties; its schedulability is left alone.
      - V(online) - present, and scheduled (a Torque C(offline) flag or a Slurm drain is cleared).
      - V(offline) - present, and taken out of scheduling with O(note) (Torque C(pbsnodes -o), Slurm
        C(state=drain)); running jobs go on and the module does not wait.
      - V(drained) - like V(offline), then, with O(wait_drained=true), waits until no job runs on the node.
      - V(absent) - removed. A node still running jobs is first taken offline and waited for (up to
        O(timeout)), unless O(force=true).
      - A missing node is added for every state but V(absent) (with O(cores), O(memory_mb), O(properties)).
    type: str
    choices: [present, online, offline, drained, absent]
    default: present
  cores:
    description:
      - Cores (Torque C(np), Slurm C(CPUs)). Default 1 for a new node; left alone on an existing one when omitted.
      - Torque changes C(np) in place. Slurm cannot change the size of a node whose slurmd has
        registered; the module re-creates a node that has not (state FUTURE) and fails otherwise.
    type: int
  memory_mb:
    description:
      - Memory in MiB (Slurm C(RealMemory)). Ignored by Torque, which learns a node's memory from its pbs_mom.
    type: int
  properties:
    description:
      - The node's properties (Torque) or features (Slurm), for example the VO names and C(vm); exactly
        these when given, left alone when omitted. Jobs and queues/partitions route on them.
    type: list
    elements: str
  address:
    description:
      - Address the controller reaches the node's slurmd at (Slurm C(NodeAddr)), when its name does not
        resolve. Slurm only.
    type: str
  note:
    description:
      - Why the node is offline/drained (Torque note, Slurm reason); default C(drained by skygrid.fabric)
        (an existing note is kept). Bringing a node V(online) clears it; Torque keeps a note given with V(online).
    type: str
  wait_drained:
    description: With O(state=drained), wait until no job runs on the node.
    type: bool
    default: true
  timeout:
    description:
      - Seconds to wait for running jobs to end (O(state=drained), and O(state=absent) without O(force));
        the module fails when they still run then, leaving the node offline.
    type: int
    default: 3600
  poll_interval:
    description: Seconds between two looks at the node while waiting.
    type: float
    default: 5.0
  force:
    description:
      - With O(state=absent), remove the node at once, without draining it and waiting for its jobs.
        Torque requeues its running jobs, or purges them when the server cannot reach the node's MOM; Slurm
        refuses to delete a node that runs jobs, and the module fails.
    type: bool
    default: false
notes:
  - A Slurm node added by this module is a dynamic node in state FUTURE until a C(slurmd -Z) on the node
    registers it; the node's features route jobs (C(sbatch --constraint=atlas)) and NodeSet partitions.
  - Torque applies C(qmgr) changes with C(qmgr -a -c) and also checks its stderr; C(pbsnodes -o/-c) report
    errors with exit 0, so their stderr is checked too.
  - Torque - a node name must resolve on the server (C(create node) fails with C(Unknown node) otherwise); a
    new node is C(down,offline,MOM-list-not-sent) for up to a minute, during which C(pbsnodes -o) is retried.
seealso:
  - module: skygrid.fabric.batch_queue
  - module: skygrid.fabric.vm
"""

EXAMPLES = r"""
- name: Drain the physical worker node before converting it, waiting for its jobs
  skygrid.fabric.batch_node:
    backend: torque
    name: wn042.example.org
    state: drained
    note: "converting to VO VMs (ticket 1234)"
    timeout: 86400
  delegate_to: torque-server.example.org

- name: Register an ATLAS VM as a Torque node
  skygrid.fabric.batch_node:
    backend: torque
    name: wn042-atlas-1
    state: online
    cores: 8
    properties: [atlas, vm]
  delegate_to: torque-server.example.org

- name: Pre-create a Slurm dynamic node for an LHCb VM (its slurmd -Z registers it)
  skygrid.fabric.batch_node:
    backend: slurm
    name: wn042-lhcb-1
    state: present
    cores: 4
    memory_mb: 8000
    properties: [lhcb, vm]
    address: 10.20.0.18
  delegate_to: slurmctld.example.org

- name: Register a host's VM slots of two VOs, each in its VO's own Slurm cluster, in one run
  skygrid.fabric.batch_node:
    backend: slurm
    state: present
    nodes:
      - name: wn042-atlas-1
        cores: 4
        properties: [atlas, vm]
        address: 10.20.0.17
        environment:
          SLURM_CONF: /etc/slurm/vo/atlas/slurm.conf
      - name: wn042-lhcb-1
        cores: 4
        properties: [lhcb, vm]
        address: 10.20.0.18
        environment:
          SLURM_CONF: /etc/slurm/vo/lhcb/slurm.conf
  delegate_to: slurmctld.example.org

- name: Take the VM out of Slurm, waiting up to an hour for its jobs
  skygrid.fabric.batch_node:
    backend: slurm
    name: wn042-lhcb-1
    state: absent
    timeout: 3600
  delegate_to: slurmctld.example.org
"""

RETURN = r"""
nodes:
  description:
    - With O(nodes), each node's result (C(name), C(backend), C(node) as RV(node), C(waited)) in the order given,
      whichever cluster each node is in.
  returned: when O(nodes) is given
  type: list
  elements: dict
node:
  description: The node as the batch system reports it after the change (before it, in check mode); null when absent.
  returned: when O(name) is given
  type: dict
  contains:
    name:
      description: Node name.
      type: str
    cores:
      description: Cores (Torque np, Slurm CPUTot).
      type: int
    memory_mb:
      description: Memory in MiB (Slurm RealMemory; Torque the pbs_mom's physmem, when reported).
      type: int
    properties:
      description: Properties (Torque) or features (Slurm).
      type: list
      elements: str
    status:
      description: C(online), C(draining) (offline, jobs still running), C(drained), C(down) or C(future) (Slurm, no slurmd registered yet).
      type: str
    unschedulable:
      description: Taken out of scheduling (Torque offline, Slurm drain).
      type: bool
    down:
      description: The batch system cannot reach the node's daemon.
      type: bool
    registered:
      description: The node's daemon has registered (false for a Slurm FUTURE node).
      type: bool
    jobs:
      description: Ids of the jobs running on the node.
      type: list
      elements: str
    note:
      description: The offline note (Torque) or drain reason (Slurm).
      type: str
    address:
      description: Slurm NodeAddr when it differs from the name.
      type: str
    raw_state:
      description: The state as the batch system prints it (C(offline,job-exclusive), C(IDLE+DRAIN+DYNAMIC_NORM)).
      type: str
  sample:
    name: wn042-atlas-1
    cores: 8
    memory_mb: 16000
    properties: [atlas, vm]
    status: online
    unschedulable: false
    down: false
    registered: true
    jobs: []
    note: null
    address: null
    raw_state: free
name:
  description: The node name.
  returned: always
  type: str
backend:
  description: The backend used.
  returned: always
  type: str
waited:
  description: Whether the module waited for running jobs to end.
  returned: always
  type: bool
actions:
  description: What was (or, in check mode, would be) done, in order.
  returned: always
  type: list
  elements: str
  sample: ["add node wn042-atlas-1 (8 cores, properties atlas,vm)"]
"""

from ansible_collections.skygrid.fabric.plugins.module_utils.batch import BATCH_OPTIONS, module_backend
from ansible_collections.skygrid.fabric.plugins.module_utils.batch.clusters import Clusters
from ansible_collections.skygrid.fabric.plugins.module_utils.batch.manage import (
    NODE_STATES, ensure_node, ensure_nodes, node_spec, node_specs)
from ansible_collections.skygrid.fabric.plugins.module_utils.module_base import FabricModule


class BatchNodeModule(FabricModule):
    supports_check_mode = True
    argument_spec = dict(
        BATCH_OPTIONS,
        name=dict(type="str"),
        nodes=dict(type="list", elements="dict", options=dict(
            name=dict(type="str", required=True),
            cores=dict(type="int"),
            memory_mb=dict(type="int"),
            properties=dict(type="list", elements="str"),
            address=dict(type="str"),
            note=dict(type="str"),
            environment=dict(type="dict"),
        )),
        state=dict(type="str", default="present", choices=list(NODE_STATES)),
        cores=dict(type="int"),
        memory_mb=dict(type="int"),
        properties=dict(type="list", elements="str"),
        address=dict(type="str"),
        note=dict(type="str"),
        wait_drained=dict(type="bool", default=True),
        timeout=dict(type="int", default=3600),
        poll_interval=dict(type="float", default=5.0),
        force=dict(type="bool", default=False),
    )

    module_kwargs = dict(mutually_exclusive=[("name", "nodes")], required_one_of=[("name", "nodes")])

    def backend(self, env=None):
        return module_backend(self.module, env=env, poll_interval=max(0.05, self.params["poll_interval"]))

    def run(self):
        if self.params["address"] and self.params["backend"] == "torque":
            self.module.warn("address is ignored by the torque backend: Torque reaches a node by its name")
        if self.params["nodes"] is not None:
            results = ensure_nodes(Clusters(self.backend), node_specs(self.params), self.reconciler)
            return {"nodes": results, "waited": any(result["waited"] for result in results)}
        return ensure_node(self.backend(), node_spec(self.params), self.reconciler)


def main():
    BatchNodeModule().execute()


if __name__ == "__main__":
    main()
