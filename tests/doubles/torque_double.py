#!/usr/bin/env python
"""A command double for Torque's ``qmgr`` and ``pbsnodes``, for tests.

Tests link this script as ``qmgr`` and ``pbsnodes`` into a directory they put first on PATH. It keeps
the server's nodes and queues in a JSON file, answers in the formats of tests/fixtures/torque/ (error
messages are read from the fixture files), and appends every command line it receives to a log.

Environment:
  TORQUE_DOUBLE_STATE     JSON file with {"nodes": {...}, "queues": {...}} (created empty when missing)
  TORQUE_DOUBLE_LOG       JSON-lines log of the calls: {"argv": [...], "rc": N}
  TORQUE_DOUBLE_FIXTURES  the fixture directory (default: ../fixtures/torque next to this script)

A node is {"np": 4, "properties": [...], "states": ["free"], "note": null, "jobs": [{"id": "12.srv",
"cores": 1, "polls": 3}]}: each ``pbsnodes -x`` of the node counts a job's ``polls`` down, and the job
ends at 0, so draining can be waited for. A queue is {"attrs": {"attr": ["value", ...]}, "jobs": 0}.
"""

from __future__ import annotations

import json
import os
import re
import sys
from xml.sax.saxutils import escape

HERE = os.path.dirname(os.path.realpath(__file__))
FIXTURES = os.environ.get("TORQUE_DOUBLE_FIXTURES") or os.path.join(os.path.dirname(HERE), "fixtures", "torque")
SERVER = "torque.example.org"
DIRECTIVE = re.compile(r"^\s*(?P<verb>\w+)\s+(?P<kind>node|queue|server)\s*(?P<name>[^\s,]*)\s*(?P<rest>.*)$")
ATTRIBUTE = re.compile(r"^\s*(?P<attr>[\w.]+)\s*(?P<op>\+=|-=|=)?\s*(?P<value>.*?)\s*$")
USAGE = "usage:\tpbsnodes [-c|-d|-l|-o|-p|-r] [-s server] [-n] [-N note] [-q] node ...\n"
QUEUE_ORDER = ("queue_type", "resources_default.neednodes", "acl_group_enable", "acl_groups", "enabled", "started")


class Reject(Exception):
    """The server (or the command) refuses: message for stderr and the exit code."""

    def __init__(self, message, rc):
        super().__init__(message)
        self.message = message
        self.rc = rc


def fixture_message(filename, name=""):
    with open(os.path.join(FIXTURES, filename)) as handle:
        text = handle.read()
    return text.replace("%s", name) if "%s" in text else text


def load_state(path):
    if path and os.path.exists(path):
        with open(path) as handle:
            state = json.load(handle)
    else:
        state = {}
    state.setdefault("nodes", {})
    state.setdefault("queues", {})
    return state


def save_state(path, state):
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(state, handle, indent=1, sort_keys=True)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ pbsnodes


def node_states(node):
    states = [state for state in node.get("states", ["free"]) if state != "free"]
    busy = sum(job.get("cores", 1) for job in node.get("jobs", []))
    if busy and "job-exclusive" not in states and busy >= node.get("np", 1):
        states.append("job-exclusive")
    if not busy:
        states = [state for state in states if state not in ("job-exclusive", "job-sharing")]
    return states or ["free"]


def node_xml(name, node):
    parts = ["<name>%s</name>" % escape(name), "<state>%s</state>" % ",".join(node_states(node)),
             "<power_state>Running</power_state>", "<np>%d</np>" % node.get("np", 1)]
    if node.get("properties"):
        parts.append("<properties>%s</properties>" % escape(",".join(node["properties"])))
    parts.append("<ntype>cluster</ntype>")
    slots, core = [], 0
    for job in node.get("jobs", []):
        for _slot in range(job.get("cores", 1)):
            slots.append("%d/%s" % (core, job["id"]))
            core += 1
    if slots:
        parts.append("<jobs>%s</jobs>" % escape(",".join(slots)))
    if "down" not in node_states(node):
        parts.append("<status>rectime=1773312000,jobs=%s,state=free,ncpus=%d,physmem=%dkb,opsys=linux</status>"
                     % (" ".join(job["id"] for job in node.get("jobs", [])), node.get("np", 1), node.get("physmem_kb", 4045196)))
    if node.get("note"):
        parts.append("<note>%s</note>" % escape(node["note"]))
    parts.append("<mom_service_port>15002</mom_service_port><mom_manager_port>15003</mom_manager_port>")
    return "<Node>%s</Node>" % "".join(parts)


def tick_jobs(node):
    remaining = []
    for job in node.get("jobs", []):
        job["polls"] = job.get("polls", 1) - 1
        if job["polls"] > 0:
            remaining.append(job)
    node["jobs"] = remaining


def pbsnodes(args, state):
    flag, note, names, xml = None, None, [], False
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "-x":
            xml = True
        elif arg in ("-o", "-c", "-r", "-a", "-l"):
            flag = arg
        elif arg == "-N":
            index += 1
            note = args[index]
        elif arg.startswith("-"):
            raise Reject(USAGE, 1)
        else:
            names.append(arg)
        index += 1
    if xml or (flag is None and note is None):
        nodes = state["nodes"]
        selected = names or sorted(nodes)
        for name in selected:
            if name not in nodes:
                raise Reject(fixture_message("pbsnodes_x_unknown_node.stderr"), 1)
        for name in selected:
            tick_jobs(nodes[name])
        return "<Data>%s</Data>\n" % "".join(node_xml(name, nodes[name]) for name in selected)
    errors = []
    for name in names:
        node = state["nodes"].get(name)
        if note is not None:
            if node is None:
                errors.append(fixture_message("pbsnodes_note_unknown_node.stderr", name))
            else:
                node["note"] = None if note in ("", "n") else note
        if flag in ("-o", "-c"):
            if node is None:
                errors.append(fixture_message("pbsnodes_mark_unknown_node.stderr", name))
                continue
            states = [s for s in node.get("states", []) if s not in ("offline", "free")]
            if flag == "-o":
                states.insert(0, "offline")
            node["states"] = states or ["free"]
    if errors:
        # pbsnodes reports these on stderr and (Torque 6, -N alone) still exits 0
        raise Reject("".join(errors), 0)
    return ""


# ------------------------------------------------------------------------------------------ qmgr


def split_unquoted(text, sep=","):
    """Split ``text`` at ``sep`` outside double or single quotes (qmgr's attribute list syntax)."""
    parts, current, quote = [], "", None
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == sep:
            parts.append(current)
            current = ""
            continue
        current += char
    parts.append(current)
    return parts


def parse_attributes(rest):
    result = []
    for chunk in split_unquoted(rest) if rest.strip() else []:
        match = ATTRIBUTE.match(chunk)
        if not match or not match.group("attr"):
            raise Reject("qmgr: Syntax error\n", 1)
        result.append((match.group("attr"), match.group("op") or "", match.group("value").strip().strip("\"'")))
    return result


def print_queue(name, queue):
    lines = ["#", "# Create queues and set their attributes.", "#", "#", "# Create and define queue %s" % name, "#",
             "create queue %s" % name]
    attrs = queue["attrs"]
    for attr in list(QUEUE_ORDER) + sorted(set(attrs) - set(QUEUE_ORDER)):
        for position, value in enumerate(attrs.get(attr, [])):
            lines.append("set queue %s %s %s %s" % (name, attr, "=" if position == 0 else "+=", value))
    return "\n".join(lines) + "\n"


def list_queue(name, queue):
    lines = ["Queue %s" % name, "\ttotal_jobs = %d" % queue.get("jobs", 0)]
    for attr, values in queue["attrs"].items():
        lines.append("\t%s = %s" % (attr, ",".join(values)))
    return "\n".join(lines) + "\n\n"


def print_node(name, node):
    lines = ["#", "# Create nodes and set their properties.", "#", "#", "# Create and define node %s" % name, "#",
             "create node %s" % name]
    states = node_states(node)
    lines.append("set node %s state = %s" % (name, states[0]))
    lines.extend("set node %s state += %s" % (name, extra) for extra in states[1:])
    lines.append("set node %s np = %d" % (name, node.get("np", 1)))
    for position, prop in enumerate(node.get("properties", [])):
        lines.append("set node %s properties %s %s" % (name, "=" if position == 0 else "+=", prop))
    lines.append("set node %s ntype = cluster" % name)
    if node.get("note"):
        lines.append("set node %s note = %s" % (name, node["note"]))
    return "\n".join(lines) + "\n"


def apply_list(current, op, value):
    values = [item for item in value.split(",") if item]
    if op == "=":
        return values
    if op == "+=":
        return current + [item for item in values if item not in current]
    return [item for item in current if item not in values]


def qmgr_node(verb, name, attributes, state, reject):
    nodes = state["nodes"]
    if verb == "create":
        if name in nodes:
            reject("qmgr_node_exists.stderr")
        node = {"np": 1, "properties": [], "states": ["down"], "note": None, "jobs": []}
        for attr, _op, value in attributes:
            if attr == "np":
                node["np"] = int(value)
            elif attr == "properties":
                node["properties"] = [item for item in value.split(",") if item]
        nodes[name] = node
        return ""
    if name not in nodes:
        reject("qmgr_unknown_node.stderr")
    node = nodes[name]
    if verb == "delete":
        del nodes[name]
    elif verb == "set":
        for attr, op, value in attributes:
            if attr == "np":
                node["np"] = int(value)
            elif attr == "properties":
                node["properties"] = apply_list(node.get("properties", []), op, value)
            elif attr == "note":
                node["note"] = value or None
    elif verb == "unset":
        for attr, _op, _value in attributes:
            if attr == "properties":
                node["properties"] = []
    elif verb in ("print", "p"):
        return print_node(name, node)
    return ""


def qmgr_queue(verb, name, attributes, state, reject):
    queues = state["queues"]
    if verb == "create":
        if name in queues:
            reject("qmgr_queue_exists.stderr")
        queues[name] = {"attrs": {}, "jobs": 0}
        for attr, _op, value in attributes:
            queues[name]["attrs"][attr] = [value]
        return ""
    if name not in queues:
        reject("qmgr_unknown_queue.stderr")
    queue = queues[name]
    attrs = queue["attrs"]
    if verb == "delete":
        if queue.get("jobs"):
            reject("qmgr_queue_busy.stderr")
        del queues[name]
    elif verb == "set":
        for attr, op, value in attributes:
            if attr == "enabled" and value.lower() in ("true", "t", "1") and not attrs.get("queue_type"):
                reject("qmgr_queue_incomplete.stderr")
            if attr == "acl_groups":
                attrs[attr] = apply_list(attrs.get(attr, []), op, value)
            else:
                attrs[attr] = [value]
    elif verb == "unset":
        for attr, _op, _value in attributes:
            attrs.pop(attr, None)
    elif verb in ("print", "p"):
        return print_queue(name, queue)
    elif verb in ("list", "l"):
        return list_queue(name, queue)
    return ""


def qmgr(args, state):
    abort, command = False, None
    index = 0
    while index < len(args):
        if args[index] == "-a":
            abort = True
        elif args[index] == "-c":
            index += 1
            command = args[index]
        index += 1
    if command is None:
        raise Reject("qmgr: this double only answers -c directives\n", 1)
    match = DIRECTIVE.match(command)
    if not match or not match.group("name"):
        raise Reject("qmgr: Syntax error\n%s\n" % command, 1)
    verb, kind, name = match.group("verb"), match.group("kind"), match.group("name")
    attributes = parse_attributes(match.group("rest"))

    def reject(filename):
        raise Reject(fixture_message(filename, name), 2 if abort else 0)

    if kind == "node":
        return qmgr_node(verb, name, attributes, state, reject)
    if kind == "queue":
        return qmgr_queue(verb, name, attributes, state, reject)
    raise Reject("qmgr: this double does not model server attributes\n", 1)


def main(argv):
    program = os.path.basename(argv[0])
    state_path = os.environ.get("TORQUE_DOUBLE_STATE")
    state = load_state(state_path)
    out, err, rc = "", "", 0
    try:
        if os.environ.get("TORQUE_DOUBLE_DOWN"):
            raise Reject(fixture_message("%s_cannot_connect.stderr" % program), 3 if program == "qmgr" and "-a" in argv else 1)
        if program == "qmgr":
            out = qmgr(argv[1:], state)
        elif program == "pbsnodes":
            out = pbsnodes(argv[1:], state)
        else:
            raise Reject("torque_double: run me as qmgr or pbsnodes\n", 2)
        save_state(state_path, state)
    except Reject as exc:
        err, rc = exc.message, exc.rc
        if rc == 0:
            save_state(state_path, state)
    log = os.environ.get("TORQUE_DOUBLE_LOG")
    if log:
        with open(log, "a") as handle:
            handle.write(json.dumps({"argv": [program] + argv[1:], "rc": rc}) + "\n")
    sys.stdout.write(out)
    sys.stderr.write(err)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv))
