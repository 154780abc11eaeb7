# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What each VO asks of the batch system: its waiting and running jobs and cores, and which nodes run jobs.

Read-only. One command per call, run through a batch backend's runner (so a missing command and a failing
one are reported as the other batch modules report them):

* Slurm: ``squeue -h -a -r -t <states> -o '%i<TAB>%P<TAB>%T<TAB>%C<TAB>%f<TAB>%N<TAB>%r'`` - one line per
  job (``-r``: one per job array element, ``-a``: hidden partitions too). ``%C`` is the CPUs a pending job
  asks for or a running job holds, ``%f`` the job's feature constraint (``atlas``, ``atlas&vm``,
  ``[atlas|lhcb]``), ``%N`` the nodes it holds as a Slurm host list, ``%r`` why it waits (last: it may hold
  spaces). Checked live against Slurm 22.05.
* Torque: ``qstat -f -x`` - XML, ``<Data><Job><Job_Id>…</Job_Id><job_state>Q</job_state><queue>atlas</queue>
  <exec_host>wn1/0-3+wn2/0-3</exec_host><Resource_List><nodes>2:ppn=4:atlas</nodes><nodect>2</nodect>
  </Resource_List>…</Job>…</Data>``; nothing at all when the server has no job. Written from the Torque 6
  documentation and tested against recorded output (tests/fixtures/torque/qstat/), not a live pbs_server.

Which VO a job belongs to (``match_by``): ``queue`` - its partition (Slurm; a pending job may name several)
or queue (Torque) is one of the VO's; ``feature`` - its constraint (Slurm) or requested node properties
(Torque ``nodes=1:ppn=2:atlas``, ``neednodes``) name one of the VO's features; ``auto`` (default) - by queue,
else by feature. A queue or feature that several VOs name (the ``vm`` feature every VM carries) identifies
none of them and is ignored. Jobs of no VO are counted under ``unmatched``.

What counts (``count_held`` adds the held ones to ``queued``):

=============  ======================================================  ===============================
figure         Slurm                                                   Torque
=============  ======================================================  ===============================
queued         PENDING for resources (Resources, Priority,             Q, T (in transit)
               ReqNodeNotAvail, BadConstraints - no node has its
               feature yet - ...)
held           PENDING held or not yet eligible (JobHeld*, BeginTime,  H, W (waiting for its start time)
               Dependency, partition down, a ``...Limit``,
               Assoc*/QOS*/Invalid* reasons), REQUEUE_HOLD
running        RUNNING, CONFIGURING, SUSPENDED                         R, S
busy nodes     the nodes of RUNNING, CONFIGURING, SUSPENDED,           the exec_host nodes of R, S,
               COMPLETING jobs                                         E (exiting)
=============  ======================================================  ===============================
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from ansible_collections.skygrid.fabric.plugins.module_utils.batch.base import CommandError
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

MATCH_BY = ("auto", "queue", "feature")
FIGURES = ("queued", "running", "held", "queued_cores", "running_cores", "held_cores")

SQUEUE_STATES = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
                 "REQUEUE_FED", "RESV_DEL_HOLD", "SIGNALING", "STAGE_OUT", "RESIZING")
SQUEUE_FIELDS = ("%i", "%P", "%T", "%C", "%f", "%N", "%r")
SQUEUE_ARGV = ["squeue", "-h", "-a", "-r", "-t", ",".join(SQUEUE_STATES), "-o", "\t".join(SQUEUE_FIELDS)]
QSTAT_ARGV = ["qstat", "-f", "-x"]

# Slurm: how each state counts. Pending jobs are "queued" unless their reason says they cannot start yet.
_SLURM_PENDING = ("PENDING", "REQUEUED", "REQUEUE_FED")
_SLURM_HELD_STATES = ("REQUEUE_HOLD", "RESV_DEL_HOLD")
_SLURM_RUNNING = ("RUNNING", "CONFIGURING", "SUSPENDED", "SIGNALING", "RESIZING")
_SLURM_ENDING = ("COMPLETING", "STAGE_OUT")
_SLURM_HELD_REASONS = ("JobHeldUser", "JobHeldAdmin", "BeginTime", "Dependency", "DependencyNeverSatisfied",
                       "PartitionDown", "PartitionInactive", "Reservation", "Licenses", "JobArrayTaskLimit",
                       "launch failed requeued held")
_SLURM_HELD_PREFIXES = ("Assoc", "QOS", "Invalid", "AccountNotAllowed")

# Torque job_state letters.
_TORQUE_KIND = {"Q": "queued", "T": "queued", "H": "held", "W": "held", "R": "running", "S": "running",
                "E": "ending", "C": None}

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_NULLS = ("", "(null)", "n/a", "N/A", "None", "none")


# ------------------------------------------------------------------------------------------ the VO mapping


def _names(value, field):
    """A queue/feature setting as a list of names (a string is one name)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]
    if not isinstance(value, (list, tuple)):
        raise FabricError("must be a name or a list of names, got %r" % (value,), field=field)
    result = []
    for item in value:
        if not isinstance(item, str) or not _NAME.fullmatch(item):
            raise FabricError("%r is not a queue/partition or feature name" % (item,), field=field)
        if item not in result:
            result.append(item)
    return result


def _first(*candidates):
    for value, field in candidates:
        if value is not None:
            return value, field
    return None, None


def vo_mapping(vos, backend):
    """``{vo: {"queues": [...], "features": [...]}}`` for ``backend`` ('slurm' or 'torque') from the ``vos``
    option. Each VO's entry may give ``partition`` (Slurm), ``queue`` and ``features`` or ``properties``,
    directly or under ``batch`` (so the site's ``fabric_vos`` serves as it is); what it leaves out defaults
    to the VO's name; an empty list means none. A name several VOs give is dropped from all of them."""
    if not isinstance(vos, dict):
        raise FabricError("must be a dict of VO name to {partition, queue, features, properties}", field="vos")
    mapping = {}
    for vo, spec in vos.items():
        if not isinstance(vo, str) or not _NAME.fullmatch(vo):
            raise FabricError("%r is not a VO name" % (vo,), field="vos")
        spec = spec or {}
        if not isinstance(spec, dict):
            raise FabricError("must be a dict ({partition, queue, features, properties})", field="vos.%s" % vo)
        batch = spec.get("batch") or {}
        if not isinstance(batch, dict):
            raise FabricError("must be a dict", field="vos.%s.batch" % vo)
        where = "vos.%s" % vo
        queue_keys = (("partition", "queue") if backend == "slurm" else ("queue",))
        candidates = [(spec.get(key), "%s.%s" % (where, key)) for key in queue_keys]
        candidates += [(batch.get(key), "%s.batch.%s" % (where, key)) for key in queue_keys]
        queues, field = _first(*candidates)
        queues = _names(queues, field) if field else [vo]
        feature_keys = ("features", "properties") if backend == "slurm" else ("properties", "features")
        candidates = [(spec.get(key), "%s.%s" % (where, key)) for key in feature_keys]
        candidates += [(batch.get(key), "%s.batch.%s" % (where, key)) for key in feature_keys]
        features, field = _first(*candidates)
        features = _names(features, field) if field else [vo]
        mapping[vo] = {"queues": queues, "features": features}
    for key in ("queues", "features"):
        seen = {}
        for vo, entry in mapping.items():
            for name in entry[key]:
                seen[name] = seen.get(name, 0) + 1
        for entry in mapping.values():
            entry[key] = [name for name in entry[key] if seen[name] == 1]
    return mapping


def assign(job, mapping, match_by="auto"):
    """The VO of ``job`` (a dict with ``queues`` and ``features``), or None."""
    if match_by not in MATCH_BY:
        raise FabricError("must be one of %s" % ", ".join(MATCH_BY), field="match_by")
    if match_by in ("auto", "queue"):
        for queue in job["queues"]:
            for vo in sorted(mapping):
                if queue in mapping[vo]["queues"]:
                    return vo
    if match_by in ("auto", "feature"):
        for feature in job["features"]:  # the constraint's order: the first VO feature it names wins
            for vo in sorted(mapping):
                if feature in mapping[vo]["features"]:
                    return vo
    return None


# ------------------------------------------------------------------------------------------ Slurm


def _split_top(text, sep=","):
    """Split at ``sep`` outside brackets."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(0, depth - 1)
        if char == sep and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part for part in parts if part]


def _expand_range(spec):
    values = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        if "-" in item:
            first, last = item.split("-", 1)
            if not (first.isdigit() and last.isdigit()) or int(last) < int(first):
                raise FabricError("cannot read the host list range %r" % item)
            width = len(first) if first.startswith("0") else 0
            values.extend(str(number).zfill(width) for number in range(int(first), int(last) + 1))
        elif item.isdigit():
            values.append(item)
        else:
            raise FabricError("cannot read the host list range %r" % item)
    return values


def expand_hostlist(text):
    """The node names of a Slurm host list (``wn[01-03,7],vm-atlas-[1-2]x``), in order, once each."""
    names = []
    for part in _split_top((text or "").strip()):
        expanded = [""]
        rest = part
        while rest:
            start = rest.find("[")
            if start < 0:
                expanded = [prefix + rest for prefix in expanded]
                break
            end = rest.find("]", start)
            if end < 0:
                raise FabricError("cannot read the host list %r (unbalanced bracket)" % text)
            head, values = rest[:start], _expand_range(rest[start + 1:end])
            expanded = [prefix + head + value for prefix in expanded for value in values]
            rest = rest[end + 1:]
        for name in expanded:
            if name and name not in names:
                names.append(name)
    return names


def constraint_features(expression):
    """The feature names in a Slurm constraint (``atlas&vm``, ``[atlas|lhcb]``, ``atlas*2``), in order."""
    if expression in _NULLS or expression is None:
        return []
    result = []
    for name in _NAME.findall(expression):
        if not name.isdigit() and name not in result:
            result.append(name)
    return result


def _slurm_kind(state, reason):
    if state in _SLURM_HELD_STATES:
        return "held"
    if state in _SLURM_PENDING:
        if reason in _SLURM_HELD_REASONS or reason.startswith(_SLURM_HELD_PREFIXES) or reason.endswith("Limit"):
            return "held"
        return "queued"
    if state in _SLURM_RUNNING:
        return "running"
    if state in _SLURM_ENDING:
        return "ending"
    return None


def parse_squeue(text):
    """Jobs of ``squeue -o`` with SQUEUE_FIELDS, as dicts: id, kind (queued, held, running, ending), state,
    reason, queues, features, cores, nodes."""
    jobs = []
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        fields = line.split("\t", len(SQUEUE_FIELDS) - 1)
        if len(fields) < len(SQUEUE_FIELDS):
            raise FabricError("cannot read this squeue line (expected %d tab-separated fields): %.200s"
                              % (len(SQUEUE_FIELDS), line))
        job_id, partitions, state, cpus, features, nodes, reason = (field.strip() for field in fields)
        kind = _slurm_kind(state, reason)
        if kind is None:
            continue
        jobs.append({
            "id": job_id,
            "kind": kind,
            "state": state,
            "reason": None if reason in _NULLS else reason,
            "queues": [name for name in partitions.split(",") if name],
            "features": constraint_features(features),
            "cores": int(cpus) if cpus.isdigit() else 1,
            "nodes": [] if kind in ("queued", "held") or nodes in _NULLS else expand_hostlist(nodes),
        })
    return jobs


def read_slurm(backend):
    rc, out, err = backend.call(SQUEUE_ARGV)
    if rc != 0:
        raise CommandError(SQUEUE_ARGV, rc, out, err, msg="squeue failed (rc=%s): %s - is slurmctld reachable from "
                           "here?" % (rc, (err or out or "no output").strip()))
    return parse_squeue(out)


# ------------------------------------------------------------------------------------------ Torque


def _flatten(element, prefix=""):
    """A job element's children as {"tag": text, "Resource_List.nodes": text, ...}."""
    fields = {}
    for child in element:
        key = prefix + child.tag
        if len(child):
            fields.update(_flatten(child, key + "."))
        else:
            fields[key] = (child.text or "").strip()
    return fields


def _node_spec(spec):
    """(cores, properties) of a Torque ``nodes`` request: ``2:ppn=4:atlas+wn01:ppn=2`` is (10, [atlas])."""
    cores, properties = 0, []
    for part in (spec or "").split("+"):
        tokens = [token.strip() for token in part.split(":") if token.strip()]
        if not tokens:
            continue
        count, ppn = 1, 1
        for position, token in enumerate(tokens):
            if "=" in token:
                key, value = token.split("=", 1)
                if key == "ppn" and value.isdigit():
                    ppn = int(value)
            elif position == 0 and token.isdigit():
                count = int(token)
            elif token not in properties:
                # A first token that is not a number is a host name or a property: Torque decides by its
                # node list; either way it is worth matching as a property.
                properties.append(token)
        cores += count * ppn
    return cores, properties


def _exec_host(value):
    """(nodes, cores) of ``exec_host``: ``wn1/0-3+wn2/0,2`` (Torque 6) or ``wn1/0+wn1/1`` (Torque 4)."""
    nodes, cores = [], 0
    for part in (value or "").split("+"):
        part = part.strip()
        if not part:
            continue
        host, slots = (part.split("/", 1) + [""])[:2]
        if host and host not in nodes:
            nodes.append(host)
        count = 0
        for item in slots.split(","):
            first, last = (item.split("-", 1) + [""])[:2]
            if first.isdigit() and last.isdigit():
                count += int(last) - int(first) + 1
            elif first.isdigit():
                count += 1
        cores += count or 1
    return nodes, cores


def _array_size(request):
    """How many elements a Torque array request (``0-99%10``, ``1-5,7``) holds."""
    size = 0
    for item in (request or "").split("%")[0].split(","):
        first, last = (item.strip().split("-", 1) + [""])[:2]
        if first.isdigit() and last.isdigit():
            size += max(0, int(last) - int(first) + 1)
        elif first.isdigit():
            size += 1
    return size


def _torque_requested_cores(fields):
    """Cores a Torque job asks for: ``-L`` tasks (``req_information.task_count.N`` x ``lprocs.N``), else
    ``nodes`` (count x ppn) plus ``procs``, else ``ncpus``, else one per ``nodect``."""
    tasks = 0
    for key, value in fields.items():
        match = re.fullmatch(r"req_information\.task_count\.(\d+)", key)
        if match and value.isdigit():
            lprocs = fields.get("req_information.lprocs.%s" % match.group(1), "1")
            tasks += int(value) * (int(lprocs) if lprocs.isdigit() else 1)
    if tasks:
        return tasks
    cores, _props = _node_spec(fields.get("Resource_List.nodes"))
    procs = fields.get("Resource_List.procs", "")
    cores += int(procs) if procs.isdigit() else 0
    if cores:
        return cores
    ncpus = fields.get("Resource_List.ncpus", "")
    if ncpus.isdigit() and int(ncpus) > 0:
        return int(ncpus)
    nodect = fields.get("Resource_List.nodect", "")
    return int(nodect) if nodect.isdigit() and int(nodect) > 0 else 1


def _torque_properties(fields):
    properties = []
    for key in ("Resource_List.nodes", "Resource_List.neednodes"):
        for prop in _node_spec(fields.get(key))[1]:
            if prop not in properties:
                properties.append(prop)
    for key, value in sorted(fields.items()):
        if re.fullmatch(r"req_information\.(?:features?|reqattr)\.\d+", key):
            for prop in _NAME.findall(value or ""):
                if prop not in properties:
                    properties.append(prop)
    return properties


def parse_qstat_xml(text):
    """Jobs of ``qstat -f -x`` as dicts (see parse_squeue); completed jobs (C) are left out."""
    text = (text or "").strip()
    if not text:
        return []
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise FabricError("cannot parse qstat -f -x output (%s): %.200s" % (exc, text))
    jobs = []
    for element in root.iter("Job"):
        fields = _flatten(element)
        job_id = fields.get("Job_Id")
        state = fields.get("job_state", "")
        kind = _TORQUE_KIND.get(state)
        if not job_id or kind is None:
            continue
        nodes, held_cores = _exec_host(fields.get("exec_host")) if kind in ("running", "ending") else ([], 0)
        cores = held_cores or _torque_requested_cores(fields)
        count = 1
        if job_id.split(".", 1)[0].endswith("[]") and kind in ("queued", "held"):
            # An array summary (qstat without -t): it stands for each of its elements.
            count = _array_size(fields.get("job_array_request")) or 1
        job = {
            "id": job_id,
            "kind": kind,
            "state": state,
            "reason": None,
            "queues": [fields["queue"]] if fields.get("queue") else [],
            "features": _torque_properties(fields),
            "cores": cores,
            "nodes": nodes,
        }
        if count > 1:
            job["count"] = count
        jobs.append(job)
    return jobs


def read_torque(backend):
    rc, out, err = backend.call(QSTAT_ARGV)
    if rc != 0 or (err.strip() and not out.strip()):
        # qstat prints "cannot connect to server ..." or "Unauthorized Request" on stderr; some versions exit 0.
        raise CommandError(QSTAT_ARGV, rc, out, err, msg="qstat -f -x failed (rc=%s): %s - is pbs_server reachable "
                           "from here?" % (rc, (err or out or "no output").strip()))
    return parse_qstat_xml(out)


# ------------------------------------------------------------------------------------------ the figures


def _zero():
    return dict((figure, 0) for figure in FIGURES)


def summarise(jobs, mapping, match_by="auto", count_held=False, details=False):
    """The module's result from parsed ``jobs``: demand per VO, unmatched, busy nodes (and the jobs)."""
    demand = dict((vo, _zero()) for vo in mapping)
    unmatched = _zero()
    busy = {}
    listed = []
    for job in jobs:
        vo = assign(job, mapping, match_by)
        figures = demand[vo] if vo else unmatched
        count = job.get("count", 1)
        kind = job["kind"]
        if kind == "held" and count_held:
            kind = "queued"
        if kind in ("queued", "held", "running"):
            figures[kind] += count
            figures[kind + "_cores"] += count * job["cores"]
        if kind in ("running", "ending"):
            for node in job["nodes"]:
                if job["id"] not in busy.setdefault(node, []):
                    busy[node].append(job["id"])
        if details:
            listed.append(dict(job, vo=vo))
    result = {
        "demand": demand,
        "unmatched": unmatched,
        "busy_nodes": dict((node, sorted(ids)) for node, ids in sorted(busy.items())),
        "mapping": mapping,
        "match_by": match_by,
    }
    if details:
        result["jobs"] = listed
    return result


def read_demand(backend, vos, match_by="auto", count_held=False, details=False):
    """Read the batch system behind ``backend`` (a :mod:`batch` backend, for its runner) and summarise it."""
    if match_by not in MATCH_BY:
        raise FabricError("must be one of %s" % ", ".join(MATCH_BY), field="match_by")
    mapping = vo_mapping(vos, backend.name)
    if backend.name == "slurm":
        jobs = read_slurm(backend)
    elif backend.name == "torque":
        jobs = read_torque(backend)
    else:
        raise FabricError("no demand reader for backend %r" % backend.name, field="backend")
    return summarise(jobs, mapping, match_by=match_by, count_held=count_held, details=details)
