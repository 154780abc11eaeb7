# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Torque backend: ``qmgr`` for nodes and queues, ``pbsnodes`` for node state, offline and notes.

Written from the Torque 6 administrator guide and manual pages (``qmgr``, ``pbsnodes``) and checked
against recorded command output (tests/fixtures/torque/), not against a live pbs_server: no package
registry these machines reach ships Torque. Facts it relies on:

* ``pbsnodes -x NAME`` prints ``<Data><Node><name>…</name><state>free</state><np>4</np>
  <properties>atlas,vm</properties><jobs>0/12.srv,1/13.srv</jobs><note>…</note>…</Node></Data>``; a node
  has several comma-separated states (``offline``, ``down``, ``job-exclusive``, ...; ``free`` alone).
  ``jobs`` lists ``core/jobid`` (Torque 6 also ``0-3/jobid``), separated by ``,`` or ``, ``.
  An unknown node: ``pbsnodes: Unknown node`` on stderr, exit 1.
* ``qmgr -c CMD`` exits 0 even when the server rejects the request, unless ``-a`` is given (then 2);
  rejections are printed as ``qmgr obj=NAME svr=SERVER: MESSAGE`` - so every change runs ``qmgr -a -c``
  and stderr is checked as well.
* ``qmgr -c "print queue NAME"`` prints the queue as ``set queue NAME attr = value`` lines, one
  ``+= value`` line per further element of a list attribute (``acl_groups``).
* ``pbsnodes -o|-c -N NOTE NAME`` marks/clears ``offline`` and sets the note; ``-N n`` clears the note.
  pbsnodes reports a failed note or mark as ``Error ... - MESSAGE`` on stderr, sometimes with exit 0.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from ansible_collections.skygrid.fabric.plugins.module_utils.batch.base import BatchBackend, CommandError, NodeState, QueueState
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

UNKNOWN_NODE = ("unknown node", "node does not exist", "server has no node list")
UNKNOWN_QUEUE = ("unknown queue", "queue does not exist")
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
            unschedulable="offline" in states,
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


def queue_from_attrs(name, attrs):
    group_enable = _bool(attrs.get("acl_group_enable"))
    groups = [group for value in attrs.get("acl_groups", []) for group in _split(value)]
    neednodes = attrs.get("resources_default.neednodes")
    return QueueState(
        name=name,
        node_property=neednodes[0] if neednodes else None,
        groups=groups if group_enable else [],
        enabled=_bool(attrs.get("enabled")),
        started=_bool(attrs.get("started")),
        raw={key: list(values) for key, values in attrs.items()},
    )


class TorqueBackend(BatchBackend):
    name = "torque"
    keeps_online_note = True

    # -- commands ----------------------------------------------------------------------------------

    def qmgr(self, command):
        """Run one qmgr directive that changes something; a CommandError when the server rejects it."""
        argv = ["qmgr", "-a", "-c", command]
        rc, out, err = self.call(argv)
        if rc != 0 or _QMGR_ERROR.search(err):
            raise CommandError(argv, rc, out, err)
        return out

    def pbsnodes(self, *args):
        argv = ["pbsnodes"] + list(args)
        rc, out, err = self.call(argv)
        if rc != 0 or any(line.startswith(("Error", "pbsnodes:")) for line in err.splitlines()):
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
        self.qmgr("create node %s np=%d" % (name, cores or 1))
        if properties:
            self.set_properties(name, properties)

    def set_cores(self, node, cores, memory_mb=None):
        self.qmgr("set node %s np = %d" % (node.name, cores))

    def set_properties(self, name, properties):
        properties = list(properties)
        if not properties:
            self.qmgr("unset node %s properties" % name)
            return
        self.qmgr("set node %s properties = %s" % (name, properties[0]))
        for prop in properties[1:]:
            self.qmgr("set node %s properties += %s" % (name, prop))

    def set_address(self, name, address):
        raise FabricError("Torque nodes are reached by their name; address is for Slurm only", field="address")

    def drain(self, name, note):
        self.pbsnodes("-o", "-N", note, name)

    def set_note(self, name, note):
        self.pbsnodes("-N", note or "n", name)

    def online(self, name, note=None):
        self.pbsnodes("-c", "-N", note or "n", name)

    def remove(self, name):
        self.qmgr("delete node %s" % name)

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
        if raw.get("resources_default.neednodes") != [spec["property"]]:
            commands.append("set queue %s resources_default.neednodes = %s" % (name, spec["property"]))
        groups = spec["groups"]
        current_groups = [group for value in raw.get("acl_groups", []) for group in _split(value)]
        if groups:
            if current_groups != groups:
                commands.append("set queue %s acl_groups = %s" % (name, groups[0]))
                commands.extend("set queue %s acl_groups += %s" % (name, group) for group in groups[1:])
            if not _bool(raw.get("acl_group_enable")):
                commands.append("set queue %s acl_group_enable = True" % name)
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
        self.qmgr("delete queue %s" % name)
