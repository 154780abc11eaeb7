# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""skygrid.fabric.run_lock on the controller: the locks belong to the ansible-playbook process, the parent
of the worker this runs in (documentation: plugins/modules/run_lock.py; logic: module_utils/run_lock.py)."""

from __future__ import annotations

import os

from ansible import context
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.skygrid.fabric.plugins.module_utils import run_lock
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

display = Display()

ARGUMENT_SPEC = {
    "hosts": {"type": "list", "elements": "str"},
    "state": {"type": "str", "choices": ["held", "released"], "default": "held"},
    "timeout": {"type": "int", "default": 600},
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        hosts = args["hosts"] or (task_vars or {}).get("ansible_play_hosts_all") or [task_vars["inventory_hostname"]]
        result["changed"] = False  # a lock is not a change to the site
        try:
            if args["timeout"] < 0:
                raise FabricError("must be 0 (fail at once) or more seconds, not %d" % args["timeout"], field="timeout")
            # The worker's parent is the ansible-playbook process: the run the locks belong to.
            owner_pid = os.getppid()
            lock = run_lock.RunLock(hosts, run_lock.Owner(owner_pid, self._playbooks()))
            result["hosts"] = lock.hosts
            if self._task.check_mode:
                result.update(self._check(lock, args["state"]))
            elif args["state"] == "released":
                result["released"] = lock.release()
                result["msg"] = "released the run lock of %s" % (", ".join(result["released"]) or "no host")
            else:
                result.update(self._hold(lock, args["timeout"]))
        except FabricError as exc:
            result.update(failed=True, msg=str(exc))
        return result

    def _playbooks(self):
        """The playbooks the run was started with, e.g. 'convert_worker_nodes.yml' (else this task's file)."""
        started_with = context.CLIARGS.get("args") or [(self._task.get_path() or "").rsplit(":", 1)[0]]
        return " ".join(os.path.basename(path) for path in started_with)

    @staticmethod
    def _hold(lock, timeout):
        def waiting(host, record):
            display.display("run_lock: another run holds the fabric lock of %s: %s; waiting up to %d s"
                            % (host, run_lock.describe(record), timeout))

        got = lock.acquire(timeout, on_wait=waiting)
        waited = "".join("; waited %.0f s for %s (%s)" % (got["waited_s"], host, run_lock.describe(record))
                         for host, record in got["waited_for"].items())
        before = " (this run held %s already)" % ", ".join(got["already"]) if got["already"] else ""
        got["msg"] = "holding the run lock of %s%s%s" % (", ".join(lock.hosts), before, waited)
        return got

    @staticmethod
    def _check(lock, state):
        held_by = lock.survey()
        busy = {host: record for host, record in held_by.items() if record and record != "this run"}
        if state == "released":
            ours = [host for host, record in held_by.items() if record == "this run"]
            msg = "would release the run lock of %s" % (", ".join(ours) or "no host")
        elif busy:
            waits = ["%s (held by %s)" % (host, run_lock.describe(record)) for host, record in busy.items()]
            msg = "would wait for %s" % "; ".join(waits)
        else:
            msg = "would take the run lock of %s (free)" % ", ".join(lock.hosts)
        return {"held_by": held_by, "msg": msg}
