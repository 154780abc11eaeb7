# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Slurm backend: ``scontrol`` for dynamic nodes and partitions, ``squeue`` for the jobs on a node.

Checked live against Slurm 22.05 (Debian 12; scripts/slurm-testbed.sh). Facts it relies on:

* Dynamic nodes (``MaxNodeCount`` in slurm.conf): ``scontrol create nodename=N cpus=C realmemory=M
  feature=a,b nodeaddr=A state=future`` adds a node with no slurmd yet; a ``slurmd -Z -N N`` on the VM
  then registers it (or registers a node of its own with ``--conf "Feature=..."``). ``scontrol create``
  of an existing node exits 0 and changes nothing, so the node is always read first.
* FUTURE nodes are hidden unless ``-F``: nodes are read with ``scontrol -o -F show node N`` (one line;
  ``Reason=`` comes last and may hold spaces; an unknown node prints ``Node N not found``, exit 1).
* ``CPUs``/``RealMemory`` of an existing node cannot be updated (``Update of this parameter is not
  supported``); features are set with ``availablefeatures=…`` and ``activefeatures=…`` together.
* ``state=drain`` needs a reason; ``state=undrain`` clears a drain and keeps a FUTURE node FUTURE, where
  ``state=resume`` would make it IDLE (and not responding). ``scontrol delete nodename=N`` refuses a
  node with jobs (``Requested nodes are busy``).
* ``squeue -w N`` fails for a FUTURE node (``Invalid node name``): it has no jobs.
* Partitions: ``scontrol create|update|delete partitionname=P nodes=… allowgroups=… allowaccounts=…
  state=UP|DOWN|DRAIN|INACTIVE``; ``nodes`` may name a NodeSet of slurm.conf (``NodeSet=vo_atlas
  Feature=atlas``), which also takes in dynamic nodes that register later. Partitions made with scontrol
  do not survive ``scontrol reconfigure`` or a slurmctld restart: the slurm role writes them to slurm.conf.
"""

from __future__ import annotations

import re

from ansible_collections.skygrid.fabric.plugins.module_utils.batch.base import BatchBackend, CommandError, NodeState, QueueState
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

_FIELD = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_]*)=(\S*)")
_REASON_SUFFIX = re.compile(r"\s*\[[^\]\[]*@[^\]\[]*\]\s*$")
NULLS = ("", "(null)", "N/A", "n/a", "none", "None")
# partition State <-> (enabled: accepts jobs, started: runs them)
PARTITION_STATES = {"UP": (True, True), "DOWN": (True, False), "DRAIN": (False, True), "INACTIVE": (False, False)}


def parse_show_line(line):
    """One ``scontrol -o show node|partition`` line as a dict. ``Reason=`` (last, may hold spaces) and
    ``OS=`` keep their whole value; other fields end at a space."""
    line = line.strip()
    fields = {}
    reason_at = line.find(" Reason=")
    if reason_at >= 0:
        fields["Reason"] = line[reason_at + len(" Reason="):]
        line = line[:reason_at]
    os_at = line.find(" OS=")
    if os_at >= 0:
        # OS=Linux 6.1.0-18-amd64 #1 SMP ... runs up to the next field (RealMemory= follows it).
        rest = line[os_at + len(" OS="):]
        following = _FIELD.search(rest)
        end = following.start() if following else len(rest)
        fields["OS"] = rest[:end].strip()
        line = line[:os_at] + " " + rest[end:]
    for key, value in _FIELD.findall(line):
        fields.setdefault(key, value)
    return fields


def _list(value):
    if value in NULLS or value is None:
        return []
    return [item for item in value.split(",") if item]


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def node_from_fields(fields, jobs=()):
    tokens = [token for token in fields.get("State", "").replace("*", "+NOT_RESPONDING").split("+") if token]
    base = tokens[0] if tokens else ""
    reason = fields.get("Reason")
    if reason is not None:
        reason = _REASON_SUFFIX.sub("", reason).strip() or None
        if reason in NULLS:
            reason = None
    address = fields.get("NodeAddr")
    return NodeState(
        name=fields.get("NodeName"),
        cores=_int(fields.get("CPUTot")),
        memory_mb=_int(fields.get("RealMemory")),
        properties=_list(fields.get("AvailableFeatures")),
        unschedulable="DRAIN" in tokens or base in ("DRAINED", "DRAINING"),
        down=base == "DOWN" or "NOT_RESPONDING" in tokens or "FAIL" in tokens,
        registered="FUTURE" not in tokens,
        jobs=jobs,
        note=reason,
        address=None if address in NULLS or address == fields.get("NodeName") else address,
        raw_state=fields.get("State", ""),
    )


class SlurmBackend(BatchBackend):
    name = "slurm"
    uses_memory = True
    uses_accounts = True

    def scontrol(self, *args, **kwargs):
        return self.run(["scontrol"] + list(args), **kwargs)

    # -- nodes -------------------------------------------------------------------------------------

    def _node_fields(self, name):
        rc, out, err = self.scontrol("-o", "-F", "show", "node", name, ok_rcs=(0, 1))
        if rc == 1:
            if "not found" in (out + err).lower():
                return None
            raise CommandError(["scontrol", "-o", "-F", "show", "node", name], rc, out, err)
        for line in out.splitlines():
            fields = parse_show_line(line)
            if fields.get("NodeName") == name:
                return fields
        return None

    def jobs_on(self, name):
        rc, out, err = self.run(["squeue", "-h", "-w", name, "-t", "CF,R,S,CG,SO", "-o", "%i"], ok_rcs=(0, 1))
        if rc == 1:
            if "invalid node name" in err.lower():
                return []
            raise CommandError(["squeue", "-h", "-w", name], rc, out, err)
        return [line.strip() for line in out.splitlines() if line.strip()]

    def node(self, name):
        fields = self._node_fields(name)
        if fields is None:
            return None
        future = "FUTURE" in fields.get("State", "").split("+")
        return node_from_fields(fields, jobs=[] if future else self.jobs_on(name))

    def add_node(self, name, cores, memory_mb=None, properties=(), address=None):
        args = ["create", "nodename=%s" % name, "cpus=%d" % (cores or 1)]
        if memory_mb:
            args.append("realmemory=%d" % memory_mb)
        if properties:
            args.append("feature=%s" % ",".join(properties))
        if address:
            args.append("nodeaddr=%s" % address)
        args.append("state=future")
        self.scontrol(*args)

    def can_resize(self, node):
        """Slurm cannot change a node's CPUs or memory: only a FUTURE node (no slurmd, no jobs) is re-created."""
        return not node.registered and not node.jobs

    def set_cores(self, node, cores, memory_mb=None):
        if not self.can_resize(node):
            raise FabricError("Slurm cannot change the CPUs or memory of node %s, which has registered; restart its "
                              "slurmd with the new size, or remove the node (state=absent) and add it again" % node.name,
                              field="cores")
        self.scontrol("delete", "nodename=%s" % node.name)
        self.add_node(node.name, cores, memory_mb or node.memory_mb, node.properties, node.address)
        if node.unschedulable:
            self.drain(node.name, node.note or "skygrid.fabric")

    def set_properties(self, name, properties):
        joined = ",".join(properties)
        self.scontrol("update", "nodename=%s" % name, "availablefeatures=%s" % joined, "activefeatures=%s" % joined)

    def set_address(self, name, address):
        self.scontrol("update", "nodename=%s" % name, "nodeaddr=%s" % address)

    def drain(self, name, note):
        self.scontrol("update", "nodename=%s" % name, "state=drain", "reason=%s" % note)

    def set_note(self, name, note):
        self.scontrol("update", "nodename=%s" % name, "reason=%s" % note)

    def online(self, name, note=None):
        fields = self._node_fields(name) or {}
        future = "FUTURE" in fields.get("State", "").split("+")
        # undrain keeps a FUTURE node FUTURE (resume would make it IDLE before any slurmd registered);
        # resume also brings a DOWN node back.
        self.scontrol("update", "nodename=%s" % name, "state=%s" % ("undrain" if future else "resume"))

    def remove(self, name):
        try:
            self.scontrol("delete", "nodename=%s" % name)
        except CommandError as exc:
            if "busy" in (exc.stderr or "").lower():
                raise FabricError("Slurm refuses to remove node %s while it runs jobs (Requested nodes are busy); "
                                  "drain it and wait (force=false) or cancel its jobs" % name, field="force",
                                  cmd=exc.argv, rc=exc.rc, stderr=exc.stderr)
            raise

    # -- partitions --------------------------------------------------------------------------------

    def expand_hostlist(self, hostlist):
        if hostlist in NULLS:
            return []
        rc, out, err = self.scontrol("show", "hostnames", hostlist)
        return [line.strip() for line in out.splitlines() if line.strip()]

    def nodes_with_feature(self, feature):
        rc, out, err = self.scontrol("-o", "-F", "show", "node", ok_rcs=(0, 1))
        names = []
        for line in out.splitlines():
            fields = parse_show_line(line)
            if fields.get("NodeName") and feature in _list(fields.get("AvailableFeatures")):
                names.append(fields["NodeName"])
        return sorted(names)

    def queue(self, name):
        rc, out, err = self.scontrol("-o", "show", "partition", name, ok_rcs=(0, 1))
        if rc == 1:
            if "not found" in (out + err).lower():
                return None
            raise CommandError(["scontrol", "-o", "show", "partition", name], rc, out, err)
        fields = None
        for line in out.splitlines():
            candidate = parse_show_line(line)
            if candidate.get("PartitionName") == name:
                fields = candidate
        if fields is None:
            return None
        enabled, started = PARTITION_STATES.get(fields.get("State", "UP").upper(), (True, True))
        groups = [] if fields.get("AllowGroups", "ALL") == "ALL" else _list(fields.get("AllowGroups"))
        accounts = [] if fields.get("AllowAccounts", "ALL") == "ALL" else _list(fields.get("AllowAccounts"))
        nodesets = _list(fields.get("NodeSets"))
        return QueueState(name=name, groups=groups, accounts=accounts, enabled=enabled, started=started,
                          nodes=sorted(self.expand_hostlist(fields.get("Nodes", ""))),
                          nodeset=nodesets[0] if len(nodesets) == 1 else (",".join(nodesets) or None), raw=fields)

    def desired_nodes(self, spec):
        """What ``nodes=`` a partition for ``spec`` gets: its NodeSet, or the nodes with its feature now."""
        if spec.get("nodeset"):
            return spec["nodeset"]
        return ",".join(self.nodes_with_feature(spec["property"]))

    @staticmethod
    def _state_word(spec):
        for word, flags in PARTITION_STATES.items():
            if flags == (spec["enabled"], spec["started"]):
                return word
        return "UP"

    def _partition_args(self, spec):
        return [
            "nodes=%s" % self.desired_nodes(spec),
            "allowgroups=%s" % (",".join(spec["groups"]) or "ALL"),
            "allowaccounts=%s" % (",".join(spec["accounts"]) or "ALL"),
            "state=%s" % self._state_word(spec),
        ]

    def add_queue(self, spec):
        self.scontrol("create", "partitionname=%s" % spec["name"], *self._partition_args(spec))

    def update_queue(self, current, spec):
        self.scontrol("update", "partitionname=%s" % current.name, *self._partition_args(spec))

    def remove_queue(self, name):
        self.scontrol("delete", "partitionname=%s" % name)
