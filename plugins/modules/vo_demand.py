#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vo_demand
short_description: Waiting and running jobs and cores per VO, and the busy nodes, from Slurm or Torque
version_added: "0.1.0"
description:
  - Reads the batch system once (Slurm C(squeue), Torque C(qstat -f -x)) and returns, per VO, how many jobs
    wait and run and how many cores they ask for or hold, and which nodes run jobs - what the rebalancing
    planner (the C(rebalance_plan) filter, C(playbooks/rebalance.yml)) needs.
  - "A job belongs to a VO by its queue or by the features it asks for (O(match_by)): Slurm - the job's
    partition (a pending job may name several) or its constraint (C(sbatch --constraint=atlas)); Torque -
    the job's queue or the node properties of its C(nodes)/C(neednodes) request (C(-l nodes=1:ppn=2:atlas))."
  - A queue or feature that more than one VO names (the C(vm) feature every VM has) identifies none of
    them and is ignored; jobs of no VO are counted in RV(unmatched).
  - "Waiting jobs that cannot start whatever the resources - held, waiting for a start time or a
    dependency, over an account or QOS limit, in a partition that is down - are counted as C(held), not
    C(queued) (unless O(count_held=true)), so they do not pull VM slots to their VO. Slurm jobs waiting
    with C(BadConstraints) (no node has the feature yet: the VO has no VM) are queued."
  - Runs where the batch client commands work - the batch server, usually with C(delegate_to). Reads only.
  - Both readers are tested live - Slurm 22.05 and Torque 6.1.3 (built from source); Torque 4 forms and
    multi-node jobs against reconstructed C(qstat -f -x) output.
author:
  - skygrid.fabric contributors (@skygrid)
requirements:
  - "Slurm: C(squeue) (Slurm 22.05 or later)."
  - "Torque: C(qstat) (Torque 4 to 6), run as a user who may see every job (a Torque operator or manager, or
    with C(query_other_jobs) set on the server)."
attributes:
  check_mode:
    support: full
    description: Reads only; check mode changes nothing because the module never changes anything.
  diff_mode:
    support: none
    description: Reads only.
extends_documentation_fragment:
  - skygrid.fabric.batch
options:
  vos:
    description:
      - The site's VOs and how their jobs are recognised, C({vo - {partition, queue, features, properties}}).
      - V(partition) (Slurm; else V(queue)) and V(queue) (Torque) - a name or a list; default the VO's name.
      - V(features) (Slurm; else V(properties)) and V(properties) (Torque; else V(features)) - a list;
        default C([<vo>]). An empty list turns that kind of matching off for the VO.
      - The same keys are also read under C(batch) when not given directly, so the site's C(fabric_vos)
        (C(batch - {properties, queue})) can be passed as it is; other keys are ignored.
      - Every VO given here is in RV(demand), with zeros when it has no job.
    type: dict
    default: {}
  match_by:
    description:
      - V(queue) - by partition (Slurm) or queue (Torque) only; V(feature) - by requested feature/property only;
        V(auto) - by queue, and by feature for jobs whose queue is no VO's.
    type: str
    choices: [auto, queue, feature]
    default: auto
  count_held:
    description: Count held and not yet eligible jobs as queued.
    type: bool
    default: false
  details:
    description: Also return every job (RV(jobs)); for debugging, large on a busy site.
    type: bool
    default: false
notes:
  - "Slurm: C(squeue -h -a -r) - hidden partitions too, one line per job array element. Torque: C(qstat -f -x)
    without C(-t) prints a job array as one summary job; a waiting summary counts as the number of elements
    of its C(job_array_request)."
  - Cores are what a waiting job asks for (Slurm C(%C); Torque C(-L) tasks x lprocs, else C(nodes) count x
    C(ppn) plus C(procs), else C(ncpus), else one per node) and what a running job holds (Slurm C(%C),
    Torque its C(exec_host) slots).
seealso:
  - module: skygrid.fabric.batch_node
  - module: skygrid.fabric.vm_info
"""

EXAMPLES = r"""
- name: What each VO waits for, on the Slurm controller
  skygrid.fabric.vo_demand:
    backend: slurm
    vos: "{{ fabric_vos }}"
  delegate_to: "{{ fabric_batch_server }}"
  run_once: true
  register: demand

- name: Show it
  ansible.builtin.debug:
    msg: "{{ item.key }}: {{ item.value.queued }} waiting ({{ item.value.queued_cores }} cores), {{ item.value.running }} running"
  loop: "{{ demand.demand | dict2items }}"

- name: Torque, VOs by queue only, with their own queue names
  skygrid.fabric.vo_demand:
    backend: torque
    match_by: queue
    vos:
      atlas: {queue: [atlas, atlas_long]}
      lhcb: {queue: lhcb}
    bin_dir: /opt/torque/bin
  delegate_to: torque01.example.org
  register: demand

- name: Slurm, one partition for all VOs, VO by constraint
  skygrid.fabric.vo_demand:
    backend: slurm
    match_by: feature
    vos:
      atlas: {features: [atlas]}
      lhcb: {features: [lhcb]}
  register: demand
"""

RETURN = r"""
demand:
  description: Per VO of O(vos), its jobs and cores.
  returned: always
  type: dict
  contains:
    queued:
      description: Jobs waiting for resources.
      type: int
    queued_cores:
      description: Cores the waiting jobs ask for.
      type: int
    running:
      description: Jobs running (Slurm also configuring and suspended; Torque also suspended).
      type: int
    running_cores:
      description: Cores the running jobs hold.
      type: int
    held:
      description: Jobs waiting that cannot start yet (held, start time, dependency, limits); 0 with O(count_held=true).
      type: int
    held_cores:
      description: Cores the held jobs ask for.
      type: int
  sample:
    atlas: {queued: 0, queued_cores: 0, running: 2, running_cores: 2, held: 0, held_cores: 0}
    lhcb: {queued: 6, queued_cores: 6, running: 0, running_cores: 0, held: 1, held_cores: 4}
unmatched:
  description: The same figures for the jobs of no VO.
  returned: always
  type: dict
busy_nodes:
  description:
    - Every node that runs jobs (or still holds a completing/exiting one), with the ids of those jobs.
    - A VM slot listed here is busy; the rest are idle.
  returned: always
  type: dict
  sample: {wn042-atlas-1: ["1234"], wn042-atlas-2: ["1235", "1236"]}
mapping:
  description: The queues and features that identify each VO, after defaults and dropping shared names.
  returned: always
  type: dict
  sample: {atlas: {queues: [atlas], features: [atlas]}, lhcb: {queues: [lhcb], features: [lhcb]}}
match_by:
  description: The O(match_by) used.
  returned: always
  type: str
jobs:
  description: Every job read, with C(id), C(vo) (null for none), C(kind) (queued, held, running, ending),
    C(state), C(reason) (Slurm), C(queues), C(features), C(cores) and C(nodes).
  returned: when O(details=true)
  type: list
  elements: dict
"""

from ansible_collections.skygrid.fabric.plugins.module_utils.batch import BATCH_OPTIONS, module_backend
from ansible_collections.skygrid.fabric.plugins.module_utils.planning.demand import MATCH_BY, read_demand
from ansible_collections.skygrid.fabric.plugins.module_utils.module_base import FabricModule


class VoDemandModule(FabricModule):
    supports_check_mode = True
    argument_spec = dict(
        BATCH_OPTIONS,
        vos=dict(type="dict", default={}),
        match_by=dict(type="str", default="auto", choices=list(MATCH_BY)),
        count_held=dict(type="bool", default=False),
        details=dict(type="bool", default=False),
    )

    def run(self):
        backend = module_backend(self.module)
        return read_demand(backend, self.params["vos"], match_by=self.params["match_by"],
                           count_held=self.params["count_held"], details=self.params["details"])


def main():
    VoDemandModule().execute()


if __name__ == "__main__":
    main()
