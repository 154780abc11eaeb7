# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: rebalance_plan
short_description: Plan which idle VM slots to hand to the VOs whose jobs wait
version_added: "0.1.0"
description:
  - Turns what M(skygrid.fabric.vm_info) reports on the VM hosts and what M(skygrid.fabric.vo_demand) reads
    from the batch system into the moves of one rebalancing run - which VM of which VO to drain and
    replace by a VM of which VO, and the replacement's name and size.
  - The slots are the VMs whose metadata has C(vo) and C(slot_host) (the vm_slots role writes both) and that
    run on that host (a slot VM migrated to another host is neither counted nor moved); a slot is busy when
    the batch system runs a job on it (the C(busy_nodes) of M(skygrid.fabric.vo_demand)).
  - The moves come from the planner in C(module_utils/planning/rebalance.py) - idle spare slots first, each VO's
    minimum, maximum and per-host maximum, a cool-down per slot, at most O(max_changes) moves, busy VMs only
    by preemption and only when allowed; see C(docs/REBALANCE.md).
  - On top of the planner, a move whose new VM would not fit its host is skipped (the target VO's VM may be
    larger than the one it replaces); without O(capacity) for a host, only moves to a VM no larger are made.
  - No move at all is made while the site settles - while a slot changed less than O(settle_s) seconds ago,
    the batch system may not yet have started the waiting jobs on the VMs the last run made - so a second
    run right after a run that moved changes nothing.
  - Each new VM is named C(<host>-<vo>-<n>) with the lowest n no VM of the site has, and gets its VO's VM
    size (C(vm) of O(vos)).
  - Pure and deterministic; changes nothing.
author:
  - skygrid.fabric contributors (@skygrid)
options:
  _input:
    description:
      - The VMs of every VM host, as M(skygrid.fabric.vm_info) lists them (C(name), C(vcpus), C(memory_mb),
        C(metadata)), each with C(hypervisor) - the short name of the host it runs on - added (default its
        C(metadata.slot_host)).
    type: list
    elements: dict
    required: true
  demand:
    description:
      - What M(skygrid.fabric.vo_demand) returned (its C(demand) and C(busy_nodes) are used), or a plain
        C({vo - {queued, running}}).
    type: dict
    required: true
  vos:
    description:
      - The site's VOs (C(fabric_vos)) - C(share) (percent), C(min_slots), C(max_slots), C(max_slots_per_host),
        C(preemptible) and C(vm - {vcpus, memory_mb}).
    type: dict
    required: true
  now:
    description: The time of the run, epoch seconds; also the C(changed_at) the new VMs get.
    type: float
    required: true
  busy:
    description: Nodes running jobs, when O(demand) is a plain dict (a list of names, or a dict keyed by name).
    type: raw
  cooldown_s:
    description: Seconds a slot is left alone after it changed.
    type: int
    default: 3600
  max_changes:
    description: The most moves in one run.
    type: int
    default: 1
  hysteresis:
    description: How many slots above its share a preemptible VO keeps before it gives a busy one.
    type: int
    default: 1
  allow_preemption:
    description: Whether a busy VM of a C(preemptible) VO may be chosen (its jobs are requeued).
    type: bool
    default: false
  settle_s:
    description: No move while any slot changed less than this many seconds ago (0 - no such pause).
    type: int
    default: 0
  capacity:
    description: C({host - {cores, memory_mb}}) each VM host has for VMs (after its own reservation).
    type: dict
"""

EXAMPLES = r"""
- name: Plan this run's moves
  ansible.builtin.set_fact:
    plan: >-
      {{ all_vms | skygrid.fabric.rebalance_plan(demand=demand, vos=fabric_vos, now=now,
           max_changes=2, cooldown_s=3600, settle_s=600, capacity=capacity) }}

- name: Print the plan
  ansible.builtin.debug:
    msg: "{{ plan.table }}"
"""

RETURN = r"""
_value:
  description: The plan.
  type: dict
  contains:
    moves:
      description:
        - "The moves, in order: C({slot, host, from_vo, to_vo, preempt, reason, jobs, new_slot}); C(jobs) - the
          jobs running on a preempted slot; C(new_slot) - C({name, host, vo, index, vcpus, memory_mb}), a
          slot as the vm_slots role's filters take it."
      type: list
      elements: dict
    slots:
      description: The slots seen, C({name, host, hypervisor, vo, busy, changed_at, vcpus, memory_mb}).
      type: list
      elements: dict
    vos:
      description: Per VO - C(slots), C(busy), C(idle), C(queued), C(running), C(share), C(target) slots.
      type: dict
    skipped:
      description: Moves the planner chose but that do not fit their host, C({slot, to_vo, reason}).
      type: list
      elements: dict
    settling:
      description: Whether no move was made because a slot changed less than O(settle_s) ago.
      type: bool
    last_change_at:
      description: The latest C(changed_at) of any slot (0 - never).
      type: float
    table:
      description: The plan as lines of text, for C(ansible.builtin.debug).
      type: list
      elements: str
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.planning.rebalance import plan_moves


def _number(value, field, default=0.0):
    if value in (None, ""):
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise FabricError("must be a number, got %r" % (value,), field=field)


def _whole(value, field, minimum=0):
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise FabricError("must be a whole number, got %r" % (value,), field=field)
    if number < minimum:
        raise FabricError("must be at least %d" % minimum, field=field)
    return number


def _vm_size(vos, vo):
    vm = (vos.get(vo) or {}).get("vm") or {}
    try:
        return int(vm.get("vcpus", 1)), int(vm.get("memory_mb", 2048))
    except (TypeError, ValueError):
        raise FabricError("vm.vcpus and vm.memory_mb must be whole numbers", field="vos.%s.vm" % vo)


def vm_slots(vms):
    """The slot VMs among vm_info ``vms``: ``{name, host, hypervisor, vo, changed_at, vcpus, memory_mb}``."""
    slots = []
    for vm in vms or []:
        if not isinstance(vm, dict) or not vm.get("name"):
            raise FabricError("each VM needs a name (vm_info's vms)", field="_input")
        metadata = vm.get("metadata") or {}
        if not metadata.get("vo") or not metadata.get("slot_host"):
            continue
        if str(vm.get("hypervisor") or metadata["slot_host"]) != str(metadata["slot_host"]):
            continue  # a slot VM migrated to another host: not that host's slot, left alone
        slots.append({
            "name": vm["name"],
            "host": str(metadata["slot_host"]),
            "hypervisor": str(vm.get("hypervisor") or metadata["slot_host"]),
            "vo": str(metadata["vo"]),
            "changed_at": _number(metadata.get("changed_at"), "%s.metadata.changed_at" % vm["name"]),
            "vcpus": int(vm.get("vcpus") or 0),
            "memory_mb": int(vm.get("memory_mb") or 0),
        })
    return sorted(slots, key=lambda slot: slot["name"])


def _demand_and_busy(demand, busy):
    if not isinstance(demand, dict):
        raise FabricError("must be vo_demand's result or a dict {vo: {queued, running}}", field="demand")
    if isinstance(demand.get("demand"), dict):
        per_vo = demand["demand"]
        busy_nodes = demand.get("busy_nodes") or {}
    else:
        per_vo = demand
        busy_nodes = {}
    if busy is not None:
        busy_nodes = busy if isinstance(busy, dict) else dict((name, []) for name in busy)
    return per_vo, busy_nodes


def _new_name(host, vo, taken):
    index = 1
    while "%s-%s-%d" % (host, vo, index) in taken:
        index += 1
    return "%s-%s-%d" % (host, vo, index), index


def _free(vms, capacity):
    """Cores and memory each host has left for VMs, from ``capacity`` and every VM on it."""
    free = {}
    for host, limits in (capacity or {}).items():
        limits = limits or {}
        free[str(host)] = [_whole(limits.get("cores", 0), "capacity.%s.cores" % host),
                           _whole(limits.get("memory_mb", 0), "capacity.%s.memory_mb" % host)]
    for vm in vms or []:
        host = str(vm.get("hypervisor") or (vm.get("metadata") or {}).get("slot_host") or "")
        if host in free:
            free[host][0] -= int(vm.get("vcpus") or 0)
            free[host][1] -= int(vm.get("memory_mb") or 0)
    return free


def plan(vms, demand, vos, now, busy=None, cooldown_s=3600, max_changes=1, hysteresis=1, allow_preemption=False,
         settle_s=0, capacity=None):
    """See DOCUMENTATION."""
    if not isinstance(vos, dict):
        raise FabricError("must be the site's VOs, a dict", field="vos")
    now = _number(now, "now", default=None)
    if now is None:
        raise FabricError("is required: the time of the run, epoch seconds", field="now")
    cooldown_s = _whole(cooldown_s, "cooldown_s")
    max_changes = _whole(max_changes, "max_changes")
    hysteresis = _whole(hysteresis, "hysteresis")
    settle_s = _whole(settle_s, "settle_s")
    per_vo, busy_nodes = _demand_and_busy(demand, busy)
    slots = vm_slots(vms)
    for slot in slots:
        slot["busy"] = slot["name"] in busy_nodes
    taken = set(vm["name"] for vm in vms or [])
    last_change = max([slot["changed_at"] for slot in slots] or [0.0])
    settling = bool(settle_s) and last_change > now - settle_s

    moves, skipped = [], []
    if not settling and max_changes > 0:
        free = _free(vms, capacity)
        excluded = set()
        while True:
            # A slot whose move does not fit is taken out of this run the planner's own way: as if it had
            # just changed (in its cool-down), so the planner's invariants still hold for the rest. "Just"
            # is a second from now: with cooldown_s 0, changed_at == now would not cool it, and the same
            # misfit would be chosen again forever.
            view = [dict(slot, changed_at=now + 1) if slot["name"] in excluded else slot for slot in slots]
            chosen = plan_moves(view, per_vo, vos, now=now, cooldown_s=cooldown_s, max_changes=max_changes,
                                hysteresis=hysteresis, allow_preemption=bool(allow_preemption))
            left = dict((host, list(values)) for host, values in free.items())
            misfit = None
            for move in chosen:
                slot = next(slot for slot in slots if slot["name"] == move["slot"])
                vcpus, memory_mb = _vm_size(vos, move["to_vo"])
                host_free = left.get(slot["hypervisor"], [0, 0])
                cores = host_free[0] + slot["vcpus"]
                memory = host_free[1] + slot["memory_mb"]
                if vcpus > cores or memory_mb > memory:
                    misfit = (move, vcpus, memory_mb, cores, memory)
                    break
                left[slot["hypervisor"]] = [cores - vcpus, memory - memory_mb]
            if misfit is None:
                moves = chosen
                break
            move, vcpus, memory_mb, cores, memory = misfit
            excluded.add(move["slot"])
            skipped.append({"slot": move["slot"], "to_vo": move["to_vo"],
                            "reason": "a %s VM (%d vCPUs, %d MiB) does not fit where %s frees room for %d vCPUs, %d MiB"
                                      % (move["to_vo"], vcpus, memory_mb, move["slot"], cores, memory)})

    by_name = dict((slot["name"], slot) for slot in slots)
    for move in moves:
        slot = by_name[move["slot"]]
        name, index = _new_name(slot["host"], move["to_vo"], taken)
        taken.add(name)
        vcpus, memory_mb = _vm_size(vos, move["to_vo"])
        move["jobs"] = list(busy_nodes.get(move["slot"]) or []) if isinstance(busy_nodes, dict) else []
        move["new_slot"] = {"name": name, "host": slot["host"], "vo": move["to_vo"], "index": index,
                            "vcpus": vcpus, "memory_mb": memory_mb}
    summary = _summary(slots, per_vo, vos)
    result = {"moves": moves, "slots": slots, "vos": summary, "skipped": skipped, "settling": settling,
              "last_change_at": last_change, "now": now}
    result["table"] = table(result, settle_s=settle_s)
    return result


def _summary(slots, per_vo, vos):
    names = sorted(set(vos) | set(slot["vo"] for slot in slots) | set(per_vo))
    total = len(slots)
    summary = {}
    for vo in names:
        mine = [slot for slot in slots if slot["vo"] == vo]
        share = _number((vos.get(vo) or {}).get("share"), "vos.%s.share" % vo)
        figures = per_vo.get(vo) or {}
        summary[vo] = {"slots": len(mine), "busy": sum(1 for slot in mine if slot["busy"]),
                       "idle": sum(1 for slot in mine if not slot["busy"]),
                       "queued": int(figures.get("queued") or 0), "running": int(figures.get("running") or 0),
                       "share": share, "target": round(share / 100.0 * total, 2)}
    return summary


def _rows(header, rows):
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    return ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header] + rows]


def table(result, settle_s=0):
    """The plan as text lines: the VOs, then one line per move (``move N: SLOT FROM -> TO as NEW``)."""
    lines = _rows(["VO", "slots", "busy", "idle", "queued", "running", "share", "target"],
                  [[vo, figures["slots"], figures["busy"], figures["idle"], figures["queued"], figures["running"],
                    "%g%%" % figures["share"], "%g" % figures["target"]] for vo, figures in sorted(result["vos"].items())])
    if result["settling"]:
        lines.append("settling: a slot changed %ds ago (less than %ds): no move this run"
                     % (int(result["now"] - result["last_change_at"]), settle_s))
    for entry in result["skipped"]:
        lines.append("skipped: %s -> %s: %s" % (entry["slot"], entry["to_vo"], entry["reason"]))
    if not result["moves"]:
        if not result["settling"]:
            lines.append("no move: nothing to rebalance")
        return lines
    for number, move in enumerate(result["moves"], 1):
        lines.append("move %d: %s %s -> %s as %s%s" % (number, move["slot"], move["from_vo"], move["to_vo"],
                                                       move["new_slot"]["name"],
                                                       " (preempting %s)" % ", ".join(move["jobs"]) if move["preempt"] else ""))
        lines.append("  why: %s" % move["reason"])
    return lines


def _filter(name, func):
    def run(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except FabricError as exc:
            raise AnsibleFilterError("%s: %s" % (name, exc))
    return run


class FilterModule:
    def filters(self):
        return {"rebalance_plan": _filter("rebalance_plan", plan)}
