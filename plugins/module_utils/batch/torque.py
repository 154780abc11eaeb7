# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Torque backend: ``qmgr`` for nodes and queues, ``pbsnodes`` for node state, offline and notes.

Checked live against TORQUE 6.1.3 (pbs_server, pbs_sched, pbs_mom; scripts/torque-testbed.sh) and recorded
from it (tests/fixtures/torque/). Facts it relies on:

* ``pbsnodes -x NAME`` prints ``<Data><Node><name>…</name><state>free</state><np>4</np>
  <properties>atlas,vm</properties><jobs>0/12.srv,1/13.srv</jobs><note>…</note>…</Node></Data>``; a node
  has several comma-separated states, in a fixed order (``down,offline,MOM-list-not-sent``, ``job-exclusive``;
  ``free`` alone). ``jobs`` lists ``core/jobid`` (Torque 6 also ``0-3/jobid``; Torque 4 ``, `` separated).
  An unknown node: ``pbsnodes: Unknown node  MSG=cannot locate specified node``, exit 1 (also on a server
  without nodes); ``pbsnodes -x`` of all nodes there: "pbsnodes: No nodes found", exit 2.
* ``qmgr -c`` exits 2 on every server rejection (``qmgr obj=NAME svr=default: MESSAGE`` on stderr), 1 on a
  syntax error, 3 when it cannot connect; ``-a`` is kept and stderr checked as well.
* ``create node NAME`` fails with ``Unknown node`` unless NAME resolves on the server (pbs_server knows a MOM by
  its address). A new node is ``down,offline,MOM-list-not-sent`` for seconds to a minute; meanwhile
  ``pbsnodes -o/-c`` print "The updated okclients list hasn't been sent out to the cluster yet" - exit 0 -
  and change nothing, so they are retried (``mom_list_timeout``).
* Properties change only with ``properties += P`` / ``-= P`` (see ``set_properties``).
* ``qmgr -c "print queue NAME"`` prints ``set queue NAME attr = value`` lines, one ``+= value`` line per
  further element of a list attribute (``acl_groups``).
* ``pbsnodes -o|-c -N NOTE NAME`` marks/clears ``offline`` and sets the note; ``-N n`` clears the note. A
  failed mark or note is ``Error setting note attribute for NAME - MESSAGE`` on stderr with exit 0.
* ``delete node`` under a running job sends the job back to the queue (exit 0), or, when the server cannot
  reach the MOM, deletes the node and purges its jobs (exit 2, "... The node has been deleted and all jobs on
  the node have been purged.").
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from ansible_collections.skygrid.fabric.plugins.module_utils.batch.base import BatchBackend, CommandError, NodeState, QueueState
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

UNKNOWN_NODE = ("unknown node", "node does not exist", "server has no node list")
UNKNOWN_QUEUE = ("unknown queue", "queue does not exist")
MOM_LIST_NOT_SENT = "hasn't been sent out"
NODE_DELETED_JOBS_PURGED = "the node has been deleted and all jobs on the node have been purged"
_QMGR_ERROR = re.compile(r"^qmgr(?: obj=\S+ svr=\S+)?:", re.MULTILINE)
_PRINT_LINE = re.compile(r"^set (?:queue|node) (?P<obj>\S+) (?P<attr>[\w.]+) (?P<op>\+?=) ?(?P<value>.*)$")
_PHYSMEM = re.compile(r"(?:^|,)physmem=(\d+)([kmg]?b)(?:,|$)")


def _split(value, sep=","):
    return [item.strip() for item in (value or "").split(sep) if item.strip()]


def parse_jobs(value):
    """Job ids from a node's ``jobs`` attribute (``0/12.srv, 1/12.srv`` or ``0-3/12.srv``), in order, once each."""
    jobs = []
    for item in _split(value):
        job = item.split("/", 1)[1] if "/" in item else item
        job = job.strip()
        if job and job not in jobs:
            jobs.append(job)
    return jobs


def _memory_mb(status):
    match = _PHYSMEM.search(status or "")
    if not match:
        return None
    amount, unit = int(match.group(1)), match.group(2)
    return {"b": amount // (1024 * 1024), "kb": amount // 1024, "mb": amount, "gb": amount * 1024}[unit]


def parse_pbsnodes_xml(text):
    """Every node of ``pbsnodes -x`` output as NodeState, keyed by name."""
    text = (text or "").strip()
    if not text:
        return {}
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise FabricError("cannot parse pbsnodes -x output (%s): %.200s" % (exc, text))
    nodes = {}
    for element in root.iter("Node"):
        fields = {child.tag: (child.text or "").strip() for child in element}
        name = fields.get("name")
        if not name:
            continue
        states = _split(fields.get("state"))
        np_text = fields.get("np", "")
        nodes[name] = NodeState(
            name=name,
            cores=int(np_text) if np_text.isdigit() else None,
            memory_mb=_memory_mb(fields.get("status")),
            properties=_split(fields.get("properties")),
            # a new node is offline only until the server has sent its MOM list out: not an admin's offline
            unschedulable="offline" in states and "MOM-list-not-sent" not in states,
            down="down" in states or "state-unknown" in states,
            registered=True,
            jobs=parse_jobs(fields.get("jobs")),
            note=fields.get("note") or None,
            raw_state=",".join(states),
        )
    return nodes


def parse_qmgr_print(text):
    """``qmgr -c 'print queue|node NAME'`` output as {object: {attribute: [values]}} (lists keep += order)."""
    objects = {}
    for line in (text or "").splitlines():
        line = line.rstrip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("create "):
            parts = line.split()
            if len(parts) >= 3:
                objects.setdefault(parts[2], {})
            continue
        match = _PRINT_LINE.match(line)
        if not match:
            continue
        attrs = objects.setdefault(match.group("obj"), {})
        value = match.group("value").strip()
        if match.group("op") == "=":
            attrs[match.group("attr")] = [value]
        else:
            attrs.setdefault(match.group("attr"), []).append(value)
    return objects


def _bool(values, default=False):
    if not values:
        return default
    return values[0].strip().lower() in ("true", "t", "1", "yes", "y")


def neednodes_value(prop):
    """The queue default that sends a job to a node with ``prop``: ``1:prop``. pbs_sched reads a bare
    ``neednodes = prop`` as a host name (the job stays queued: "PBS Error: Unknown node"); only Maui/Moab read
    it as a property. A user's own ``-l nodes=`` replaces it."""
    return "1:%s" % prop


def routed_property(attrs):
    """The node property a queue routes its jobs to, from ``resources_default.neednodes`` (else ``.nodes``):
    the property of a ``1:prop`` (or ``N:ppn=M:prop``) request, else a bare value as it is."""
    for key in ("resources_default.neednodes", "resources_default.nodes"):
        values = attrs.get(key)
        if not values:
            continue
        tokens = [token for token in values[0].split(":") if token]
        names = [token for position, token in enumerate(tokens) if "=" not in token and not (position == 0 and token.isdigit())]
        return names[0] if names else None
    return None


def queue_from_attrs(name, attrs):
    group_enable = _bool(attrs.get("acl_group_enable"))
    groups = [group for value in attrs.get("acl_groups", []) for group in _split(value)]
    return QueueState(
        name=name,
        node_property=routed_property(attrs),
        groups=groups if group_enable else [],
        enabled=_bool(attrs.get("enabled")),
        started=_bool(attrs.get("started")),
        raw={key: list(values) for key, values in attrs.items()},
    )


class TorqueBackend(BatchBackend):
    name = "torque"
    keeps_online_note = True
    # How long to wait for the server to send a new node's MOM list out before pbsnodes -o/-c work on it.
    mom_list_timeout = 120

    # -- commands ----------------------------------------------------------------------------------

    def qmgr(self, command):
        """Run one qmgr directive that changes something; a CommandError when the server rejects it."""
        argv = ["qmgr", "-a", "-c", command]
        rc, out, err = self.call(argv)
        if rc != 0 or _QMGR_ERROR.search(err):
            raise CommandError(argv, rc, out, err)
        return out

    # -- nodes -------------------------------------------------------------------------------------

    def node(self, name):
        argv = ["pbsnodes", "-x", name]
        rc, out, err = self.call(argv)
        if rc != 0:
            if any(marker in err.lower() for marker in UNKNOWN_NODE):
                return None
            raise CommandError(argv, rc, out, err)
        return parse_pbsnodes_xml(out).get(name)

    def add_node(self, name, cores, memory_mb=None, properties=(), address=None):
        try:
            self.qmgr("create node %s np=%d" % (name, cores or 1))
        except CommandError as exc:
            if "unknown node" in exc.stderr.lower():
                raise FabricError(
                    "the Torque server cannot resolve node name %s (qmgr: Unknown node): pbs_server knows a MOM by "
                    "its address, so every node name must resolve on the server - add it to /etc/hosts there (the "
                    "vm_slots role writes each slot's name and leased address: vm_slots_torque_hosts_file) or to "
                    "DNS (skygrid.fabric.ip_lease exports the leases as a hosts file or zone)" % name,
                    field="name", cmd=exc.argv, rc=exc.rc, stderr=exc.stderr)
            raise
        for prop in properties:
            self._add_property(name, prop, [])

    def set_cores(self, node, cores, memory_mb=None):
        self.qmgr("set node %s np = %d" % (node.name, cores))

    def set_properties(self, name, properties):
        """``+= P`` for each property to come, then ``-= P`` for each to go, so a node keeps at least one
        property while it changes (Torque 6.1.3: ``unset node N properties`` is rejected, ``properties = ""``
        changes nothing, ``-= P`` of a property the node lacks is a "System error", and after its last property
        is removed a node takes no new one until pbs_server restarts)."""
        current = self.node(name)
        have = current.properties if current else []
        for prop in properties:
            if prop not in have:
                self._add_property(name, prop, have)
        for prop in have:
            if prop not in properties:
                self.qmgr("set node %s properties -= %s" % (name, prop))

    def _add_property(self, name, prop, have):
        try:
            self.qmgr("set node %s properties += %s" % (name, prop))
        except CommandError as exc:
            if have or "system error" not in exc.stderr.lower():
                raise
            raise FabricError(
                "pbs_server refuses to give node %s a property (%s): Torque 6.1.3 does so for a node whose last "
                "property was removed, until pbs_server restarts; remove the node (state=absent) and add it again, "
                "or restart pbs_server" % (name, exc.stderr.strip()), field="properties",
                cmd=exc.argv, rc=exc.rc, stderr=exc.stderr)

    def set_address(self, name, address):
        raise FabricError("Torque nodes are reached by their name; address is for Slurm only", field="address")

    def _mark(self, *args):
        """``pbsnodes ARGS``, retried while the server has not yet sent a new node's MOM list out: for seconds
        to a minute after ``create node`` the node is ``down,offline,MOM-list-not-sent`` and pbsnodes -o/-c
        print "The updated okclients list hasn't been sent out to the cluster yet" - with exit code 0."""
        deadline = self.clock() + self.mom_list_timeout
        while True:
            argv = ["pbsnodes"] + list(args)
            rc, out, err = self.call(argv)
            if MOM_LIST_NOT_SENT not in (out + err).lower():
                if rc != 0 or any(line.startswith(("Error", "pbsnodes:")) for line in err.splitlines()):
                    raise CommandError(argv, rc, out, err)
                return out
            if self.clock() >= deadline:
                raise CommandError(argv, rc, out, err, msg="%s: the server has still not sent node %s's MOM list out after "
                                   "%ss (the node stays down,offline,MOM-list-not-sent until it has); check pbs_server's "
                                   "log and run again" % (" ".join(argv), args[-1], self.mom_list_timeout))
            self.sleep(self.poll_interval)

    def drain(self, name, note):
        self._mark("-o", "-N", note, name)

    def set_note(self, name, note):
        self._mark("-N", note or "n", name)

    def online(self, name, note=None):
        self._mark("-c", "-N", note or "n", name)

    def remove(self, name):
        """``delete node``. Under a running job the server requeues the job, or - when it cannot reach the MOM
        to do so - deletes the node anyway, purges its jobs and exits 2: the node is gone either way."""
        try:
            self.qmgr("delete node %s" % name)
        except CommandError as exc:
            if NODE_DELETED_JOBS_PURGED not in exc.stderr.lower():
                raise

    # -- queues ------------------------------------------------------------------------------------

    def queue(self, name):
        argv = ["qmgr", "-a", "-c", "print queue %s" % name]
        rc, out, err = self.call(argv)
        if rc != 0 or _QMGR_ERROR.search(err):
            if any(marker in err.lower() for marker in UNKNOWN_QUEUE):
                return None
            raise CommandError(argv, rc, out, err)
        attrs = parse_qmgr_print(out).get(name)
        if attrs is None:
            return None
        return queue_from_attrs(name, attrs)

    def _queue_commands(self, name, spec, current=None):
        """The qmgr directives that make queue ``name`` match ``spec`` (None current: a new queue)."""
        raw = current.raw if current else {}
        commands = []
        if [value.lower() for value in raw.get("queue_type", [])] != ["execution"]:
            commands.append("set queue %s queue_type = Execution" % name)
        if raw.get("resources_default.neednodes") != [neednodes_value(spec["property"])]:
            commands.append("set queue %s resources_default.neednodes = %s" % (name, neednodes_value(spec["property"])))
        groups = spec["groups"]
        current_groups = [group for value in raw.get("acl_groups", []) for group in _split(value)]
        if groups:
            if current_groups != groups:
                # one group per directive: an unquoted "a,b" is a qmgr syntax error
                commands.append("set queue %s acl_groups = %s" % (name, groups[0]))
                commands.extend("set queue %s acl_groups += %s" % (name, group) for group in groups[1:])
            if not _bool(raw.get("acl_group_enable")):
                commands.append("set queue %s acl_group_enable = True" % name)
            # without it only the job's primary group counts: a VO member by a secondary group is refused
            if not _bool(raw.get("acl_group_sloppy")):
                commands.append("set queue %s acl_group_sloppy = True" % name)
        else:
            if _bool(raw.get("acl_group_enable")):
                commands.append("set queue %s acl_group_enable = False" % name)
            if current_groups:
                commands.append("unset queue %s acl_groups" % name)
        # enabled/started last: a queue is enabled only once its definition is complete.
        for attr in ("enabled", "started"):
            if current is None or getattr(current, attr) != spec[attr]:
                commands.append("set queue %s %s = %s" % (name, attr, "True" if spec[attr] else "False"))
        return commands

    def add_queue(self, spec):
        self.qmgr("create queue %s queue_type = Execution" % spec["name"])
        raw = {"queue_type": ["Execution"]}
        for command in self._queue_commands(spec["name"], spec, QueueState(spec["name"], enabled=None, started=None, raw=raw)):
            self.qmgr(command)

    def update_queue(self, current, spec):
        for command in self._queue_commands(current.name, spec, current):
            self.qmgr(command)

    def remove_queue(self, name):
        """``delete queue``; a queue that holds only completed jobs (kept keep_completed seconds, 300 by default)
        is "busy" too: those are purged (``qdel -p``; the accounting log keeps them) and the delete repeated."""
        try:
            self.qmgr("delete queue %s" % name)
            return
        except CommandError as exc:
            if "busy" not in exc.stderr.lower():
                raise
            busy = exc
        every = self._select("-q", name)
        completed = self._select("-q", name, "-s", "C")
        waiting = [job for job in every if job not in completed]
        if waiting:
            raise CommandError(busy.argv, busy.rc, busy.stdout, busy.stderr, field="name",
                               msg="queue %s still holds %d job(s) that have not completed: %s; wait for them or "
                               "qdel them, then run again" % (name, len(waiting), ", ".join(waiting)))
        for job in completed:
            self.run(["qdel", "-p", job])
        self.qmgr("delete queue %s" % name)

    def _select(self, *args):
        _rc, out, _err = self.run(["qselect"] + list(args))
        return [line.strip() for line in out.splitlines() if line.strip()]
