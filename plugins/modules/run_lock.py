#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: run_lock
short_description: One playbook run at a time on a worker node (a lock held on the controller for the whole run)
version_added: "0.1.0"
description:
  - Takes the run lock of each host in O(hosts) on the control machine, waiting while another run
    (another convert, revert or rebalance) holds one, and keeps it until the playbook run ends. The
    playbooks C(convert_worker_nodes.yml), C(rebalance.yml) and C(revert_worker_nodes.yml) take it first.
  - The locks are files C(fabric-run-<host>.lock) in the collection's private lock directory
    (root - C(/run/skygrid/locks)), taken in sorted order, so two runs over overlapping hosts never wait
    for each other in a circle. A detached holder process keeps their flocks while the C(ansible-playbook)
    process lives (checked by PID and start time every 0.2 s); when the run ends or is killed, even with
    SIGKILL, the kernel drops them. There is no stale lock to remove.
  - A task of the same run that asks again for locks the run holds succeeds at once.
  - The lock is per control machine. AWX/AAP run each job in its own execution environment, where the
    job template's concurrent jobs setting (off by default) is what serialises runs; see docs/RELIABILITY.md.
  - Runs on the controller only (an action plugin); use it with C(run_once) to take every host's lock in one task.
author:
  - skygrid.fabric contributors (@skygrid)
options:
  hosts:
    description:
      - The inventory host names whose run lock to take or release.
      - Default is every host of the play (C(ansible_play_hosts_all)).
    type: list
    elements: str
  state:
    description:
      - V(held) takes the locks (waiting for other runs) and keeps them until the playbook run ends.
      - V(released) gives this run's locks back early; other runs' locks are left alone.
    type: str
    choices: [held, released]
    default: held
  timeout:
    description:
      - Seconds to wait for another run to finish, in all. V(0) fails at once when another run holds a lock.
      - The error names the run holding it (playbook, PID, control machine, since when).
    type: int
    default: 600
attributes:
  check_mode:
    support: full
    description: Takes no lock; reports which locks are free and which run holds the others.
  diff_mode:
    support: none
    description: A lock is not a change to the site.
  action:
    support: full
    description: Runs on the controller.
notes:
  - Reports C(changed=false) always - a lock is not a change to the site, so a run that changes nothing
    still reports 0 changed.
seealso:
  - name: Reliability (concurrent runs)
    description: How runs are serialised on one control machine, in AWX/AAP and with several control machines.
    link: https://github.com/skygrid/fabric/blob/main/docs/RELIABILITY.md
"""

EXAMPLES = r"""
- name: Take this run's lock on the worker nodes (another convert, revert or rebalance waits)
  skygrid.fabric.run_lock:
    timeout: "{{ fabric_run_lock_timeout | default(600) }}"
  run_once: true

- name: Give the locks back before a long read-only part of the run
  skygrid.fabric.run_lock:
    state: released
  run_once: true
"""

RETURN = r"""
hosts:
  description: The hosts whose lock the task was about, sorted (the order they are taken in).
  returned: always
  type: list
  elements: str
taken:
  description: The hosts whose lock this task took.
  returned: state=held, not in check mode
  type: list
  elements: str
already:
  description: The hosts whose lock this run held before the task.
  returned: state=held, not in check mode
  type: list
  elements: str
waited_s:
  description: Seconds the task waited for other runs.
  returned: state=held, not in check mode
  type: float
waited_for:
  description: For each host it waited for, the run that held it (playbook, pid, controller, since, run_id).
  returned: state=held, not in check mode
  type: dict
holder_pid:
  description: The process that holds the locks this task took (null when it took none).
  returned: state=held, not in check mode
  type: int
held_by:
  description: In check mode, who holds each lock now - null (free), C(this run), or the other run's record.
  returned: check mode
  type: dict
released:
  description: The hosts whose lock this run gave back.
  returned: state=released, not in check mode
  type: list
  elements: str
"""
