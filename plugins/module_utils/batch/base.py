# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one interface every batch backend implements, and the state objects it reads.

A backend only *reads* (``node``, ``queue``) and *performs single changes* (``add_node``,
``set_properties``, ``drain``, ...); deciding what to change, check mode and waiting live in
:mod:`manage`. Every command goes through ``self.runner(argv) -> (rc, stdout, stderr)``.
"""

from __future__ import annotations

import ipaddress
import re
import time

from ansible_collections.skygrid.fabric.plugins.module_utils.dns_names import is_dns_name
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

# Node and queue names the backends accept: host names (FQDNs too) and queue names, no spaces or quotes.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}\Z")
# Properties (Torque) / features (Slurm): VO names, "vm", ...
PROPERTY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}\Z")


class CommandError(FabricError):
    """A batch command failed: keeps the command line, exit code and what it printed."""

    def __init__(self, argv, rc, stdout, stderr, msg=None, field=None):
        text = (stderr or "").strip() or (stdout or "").strip() or "no output"
        super().__init__(msg or "%s failed (rc=%s): %s" % (" ".join(argv), rc, text), field=field,
                         cmd=list(argv), rc=rc, stdout=stdout, stderr=stderr)
        self.argv = list(argv)
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr


class NodeState:
    """A batch node as read from the batch system.

    ``unschedulable``: an administrator took it out of scheduling (Torque ``offline``, Slurm ``DRAIN``);
    ``down``: the batch system cannot reach its daemon; ``registered``: its daemon has ever reported (a
    Slurm FUTURE node has not); ``jobs``: ids of the jobs running on it.
    """

    def __init__(self, name, cores=None, memory_mb=None, properties=(), unschedulable=False, down=False,
                 registered=True, jobs=(), note=None, address=None, raw_state=""):
        self.name = name
        self.cores = cores
        self.memory_mb = memory_mb
        self.properties = list(properties)
        self.unschedulable = unschedulable
        self.down = down
        self.registered = registered
        self.jobs = list(jobs)
        self.note = note or None
        self.address = address
        self.raw_state = raw_state

    @property
    def status(self):
        """One word for reports: online, draining, drained, down or future."""
        if self.unschedulable:
            return "draining" if self.jobs else "drained"
        if not self.registered:
            return "future"
        if self.down:
            return "down"
        return "online"

    def as_dict(self):
        return {
            "name": self.name,
            "cores": self.cores,
            "memory_mb": self.memory_mb,
            "properties": list(self.properties),
            "status": self.status,
            "unschedulable": self.unschedulable,
            "down": self.down,
            "registered": self.registered,
            "jobs": list(self.jobs),
            "note": self.note,
            "address": self.address,
            "raw_state": self.raw_state,
        }

    def __repr__(self):
        return "NodeState(%r)" % self.as_dict()


class QueueState:
    """A per-VO queue (Torque) or partition (Slurm): who may submit, which nodes it runs on, whether it is
    enabled (accepts jobs) and started (runs them). ``nodes`` and ``nodeset`` are Slurm's."""

    def __init__(self, name, node_property=None, groups=(), accounts=(), enabled=True, started=True, nodes=(),
                 nodeset=None, raw=None):
        self.name = name
        self.node_property = node_property
        self.groups = list(groups)
        self.accounts = list(accounts)
        self.enabled = enabled
        self.started = started
        self.nodes = list(nodes)
        self.nodeset = nodeset
        self.raw = raw or {}

    def as_dict(self):
        return {
            "name": self.name,
            "property": self.node_property,
            "groups": list(self.groups),
            "accounts": list(self.accounts),
            "enabled": self.enabled,
            "started": self.started,
            "nodes": list(self.nodes),
            "nodeset": self.nodeset,
        }

    def __repr__(self):
        return "QueueState(%r)" % self.as_dict()


class BatchBackend:
    """Subclass per batch system. ``runner(argv) -> (rc, stdout, stderr)``; ``clock``/``sleep`` are
    injectable so waiting is testable without waiting."""

    name = None
    # Slurm-only node and queue attributes (memory, address; accounts).
    uses_memory = False
    # Whether a schedulable node keeps a note (Torque does; Slurm keeps reasons only for drained/down nodes).
    keeps_online_note = False
    uses_accounts = False

    def __init__(self, runner, clock=time.monotonic, sleep=time.sleep, poll_interval=1.0):
        self.runner = runner
        self.clock = clock
        self.sleep = sleep
        self.poll_interval = poll_interval

    # -- running commands ------------------------------------------------------------------------

    def call(self, argv):
        """Run ``argv``; (rc, stdout, stderr). Only a missing command is an error here."""
        rc, out, err = self.runner(list(argv))
        if rc == 127:
            raise CommandError(argv, rc, out, err, msg="%s: command not found - run the module where the %s client "
                               "commands work (the batch server, with delegate_to) or set bin_dir" % (argv[0], self.name))
        return rc, out or "", err or ""

    def run(self, argv, ok_rcs=(0,)):
        """Run ``argv``; a CommandError unless its exit code is in ``ok_rcs``. Returns (rc, out, err)."""
        rc, out, err = self.call(argv)
        if rc not in ok_rcs:
            raise CommandError(argv, rc, out, err)
        return rc, out, err

    # -- nodes -----------------------------------------------------------------------------------

    def node(self, name):
        """The node's :class:`NodeState`, or None when the batch system does not know it."""
        raise NotImplementedError

    def add_node(self, name, cores, memory_mb=None, properties=(), address=None):
        raise NotImplementedError

    def can_resize(self, node):
        """Whether the size of ``node`` (its current NodeState) can be changed."""
        return True

    def set_cores(self, node, cores, memory_mb=None):
        """Change the size of an existing node (``node`` is its current NodeState)."""
        raise NotImplementedError

    def set_properties(self, name, properties):
        raise NotImplementedError

    def set_address(self, name, address):
        raise NotImplementedError

    def drain(self, name, note):
        """Take the node out of scheduling; running jobs go on (Torque offline, Slurm drain)."""
        raise NotImplementedError

    def set_note(self, name, note):
        raise NotImplementedError

    def online(self, name, note=None):
        """Put the node back into scheduling, clearing (or replacing, with ``note``) the drain note."""
        raise NotImplementedError

    def remove(self, name):
        raise NotImplementedError

    def wait_drained(self, name, timeout):
        """Wait until the node runs no jobs; returns its NodeState. FabricError after ``timeout`` seconds."""
        deadline = self.clock() + timeout
        while True:
            state = self.node(name)
            if state is None or not state.jobs:
                return state
            if self.clock() >= deadline:
                raise FabricError("node %s still runs %d job(s) after %ss: %s; raise timeout, or wait and run again"
                                  % (name, len(state.jobs), timeout, ", ".join(state.jobs)),
                                  field="timeout", node=state.as_dict())
            self.sleep(self.poll_interval)

    # -- queues ----------------------------------------------------------------------------------

    def queue(self, name):
        raise NotImplementedError

    def add_queue(self, spec):
        raise NotImplementedError

    def update_queue(self, current, spec):
        """Change ``current`` (a QueueState) to match ``spec`` (a dict as built by manage.queue_spec)."""
        raise NotImplementedError

    def remove_queue(self, name):
        raise NotImplementedError


def check_name(value, field):
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise FabricError("%r is not a valid name: letters, digits, '_', '.' or '-' (at most 253), starting with a letter or digit"
                          % (value,), field=field)
    return value


def check_address(value, field="address"):
    """A node address as Slurm's NodeAddr takes it: an IP address or a host name, nothing that could add keys."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not is_dns_name(value):
        raise FabricError("%r must be an IP address or a host name (letters, digits, '-' and '.'; no spaces, '=' or "
                          "newlines)" % (value,), field=field)
    return value


def check_properties(values, field="properties"):
    result = []
    for value in values or []:
        if not isinstance(value, str) or not PROPERTY_RE.match(value):
            raise FabricError("%r is not a valid property/feature: letters, digits, '_', '.' or '-'" % (value,), field=field)
        if value not in result:
            result.append(value)
    return result


def same_members(first, second):
    return sorted(first or []) == sorted(second or [])
