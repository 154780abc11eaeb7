# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A hypervisor's state as a Prometheus textfile (node_exporter's textfile collector).

``render`` is pure: VMs, the slot plan, staged images and recorded events in, the file's text out.
The text holds no time of its own (node_exporter exports the file's mtime), so an unchanged host
renders the same text and a run changes nothing. Events (the last converge, staging failures) are
kept in a small JSON state file, since a periodic run has no other way to know them."""

from __future__ import annotations

import calendar
import json
import os
import time

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

EVENTS = ("converge", "staging", "verification")
RESULTS = ("success", "failure")
STATES = ("running", "paused", "shutoff")


def _label(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels):
    return "{%s}" % ",".join('%s="%s"' % (key, _label(value)) for key, value in sorted(labels.items()))


def _metric(lines, name, kind, help_text, samples):
    lines.append("# HELP %s %s" % (name, help_text))
    lines.append("# TYPE %s %s" % (name, kind))
    for labels, value in samples:
        lines.append("%s%s %s" % (name, _labels(**labels) if labels else "", value))


def check_event(event):
    """The ``event`` option: {name, result, vo, reason}."""
    if event is None:
        return None
    if event.get("name") not in EVENTS:
        raise FabricError("must be one of %s" % ", ".join(EVENTS), field="event.name")
    if event.get("result") not in RESULTS:
        raise FabricError("must be success or failure", field="event.result")
    return {"name": event["name"], "result": event["result"], "reason": str(event.get("reason") or "")[:500],
            "vo": str(event.get("vo") or "")}


def check_slots(slots):
    """The ``slots`` option: the slot plan (items with ``name`` and ``vo``) -> {vo: [slot names]}."""
    if slots is None:
        return None
    plan = {}
    for index, slot in enumerate(slots):
        if not isinstance(slot, dict) or not slot.get("vo") or not slot.get("name"):
            raise FabricError("must be a slot of the plan, with its 'name' and 'vo' (vm_slots_plan items)",
                              field="slots[%d]" % index)
        plan.setdefault(str(slot["vo"]), []).append(str(slot["name"]))
    return {vo: sorted(names) for vo, names in plan.items()}


def record_event(state, event, now):
    """Keep the last run, success and failure of each event name (per VO for staging failures)."""
    key = event["name"] + ("/" + event["vo"] if event["vo"] else "")
    entry = dict(state.get("events", {}).get(key) or {}, name=event["name"], vo=event["vo"])
    entry["last"] = now
    entry["last_result"] = event["result"]
    entry["last_" + event["result"]] = now
    if event["result"] == "failure":
        entry["last_failure_reason"] = event["reason"]
    state.setdefault("events", {})[key] = entry
    return state


def read_state(path):
    try:
        with open(path) as handle:
            state = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise FabricError("cannot read %s (%s); remove it to start afresh" % (path, exc), field="state_file")
    return state if isinstance(state, dict) else {}


def staged_timestamp(record):
    try:
        return calendar.timegm(time.strptime(record.get("staged_at") or "", "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return None


def render(vms, images, state, hypervisor):
    """The textfile. ``vms``: vm_info descriptions; ``images``: provenance records of staged images;
    ``state``: {slots: {vo: [slot names]}, events: {...}}."""
    lines = []
    managed = [vm for vm in vms if vm.get("managed")]
    counts = {}
    for vm in managed:
        key = (vm["metadata"].get("vo") or "", vm["state"])
        counts[key] = counts.get(key, 0) + 1
    vos = sorted({vo for vo, _state in counts} | set(state.get("slots") or {}))
    _metric(lines, "skygrid_vms", "gauge", "VMs on this hypervisor by VO and run state.",
            [({"hypervisor": hypervisor, "vo": vo, "state": run}, counts.get((vo, run), 0))
             for vo in vos for run in STATES])
    slots = state.get("slots")
    if slots is not None:
        running = {vm["name"] for vm in managed if vm["state"] == "running"}
        _metric(lines, "skygrid_slots_planned", "gauge", "VM slots the last slot plan gave each VO here.",
                [({"hypervisor": hypervisor, "vo": vo}, len(names)) for vo, names in sorted(slots.items())])
        _metric(lines, "skygrid_slots_free", "gauge", "Planned slots without a running VM.",
                [({"hypervisor": hypervisor, "vo": vo}, len(set(names) - running)) for vo, names in sorted(slots.items())])
    staged = [(record, staged_timestamp(record)) for record in images]
    _metric(lines, "skygrid_image_staged_timestamp_seconds", "gauge",
            "When each staged VO image was verified and published (image age: time() - this).",
            [({"hypervisor": hypervisor, "vo": record.get("vo") or "", "image_id": record.get("image_id") or "",
               "version": record.get("image_version") or "", "volume": record.get("volume") or ""}, ts)
             for record, ts in sorted(staged, key=lambda item: item[0].get("volume") or "") if ts is not None])
    events = sorted((state.get("events") or {}).values(), key=lambda e: (e["name"], e.get("vo") or ""))
    for name, help_text in (("last_success", "Last successful %s."), ("last_failure", "Last failed %s.")):
        _metric(lines, "skygrid_%s_timestamp_seconds" % name, "gauge", help_text % "converge, staging or verification",
                [({"hypervisor": hypervisor, "event": e["name"], "vo": e.get("vo") or ""}, e[name])
                 for e in events if e.get(name) is not None])
    _metric(lines, "skygrid_last_result_success", "gauge",
            "1 when the last converge, staging or verification succeeded, 0 when it failed.",
            [({"hypervisor": hypervisor, "event": e["name"], "vo": e.get("vo") or ""},
              1 if e["last_result"] == "success" else 0) for e in events])
    return "\n".join(lines) + "\n"


def read_textfile(path):
    try:
        with open(path) as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def state_text(state):
    return json.dumps(state, indent=2, sort_keys=True) + "\n"


def check_path(path, field):
    if not os.path.isabs(path or ""):
        raise FabricError("must be an absolute path, got %r" % (path,), field=field)
    return path
