# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Moving VM slots towards the VOs whose jobs wait: the rebalancing planner. Pure and deterministic.

A VO *needs* slots when more of its jobs wait than it has idle VMs; it has *spare* slots when it has
more idle VMs than waiting jobs. Each move turns one spare, idle VM of one VO into a VM of a VO in
need (drain and replace), one slot at a time, the neediest VO (furthest below its share) first.
Rules that always hold: a VO never drops below ``min_slots`` nor rises above ``max_slots`` (site) or
``max_slots_per_host``; a slot changed less than ``cooldown_s`` ago is not changed again; each slot
moves at most once per plan and at most ``max_changes`` move; busy VMs are never touched, except
that, when the site allows preemption, a busy VM of a ``preemptible`` VO that holds more than its
share plus ``hysteresis`` slots may be requeued for a VO below its share. With no waiting jobs
anywhere, nothing moves; the total number of slots never changes.
"""

from __future__ import annotations

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError


def _int(value, field, default=0):
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise FabricError("must be a whole number, got %r" % (value,), field=field)


class _Site:
    def __init__(self, slots, demand, vos):
        self.slots = sorted((dict(slot) for slot in slots), key=lambda slot: slot["name"])
        self.vos = vos
        self.names = sorted(set(vos) | {slot["vo"] for slot in self.slots})
        self.queued = {vo: _int((demand.get(vo) or {}).get("queued"), "demand.%s.queued" % vo) for vo in self.names}
        total = len(self.slots)
        self.target = {vo: float((vos.get(vo) or {}).get("share", 0)) / 100.0 * total for vo in self.names}

    def option(self, vo, key, default=None):
        return (self.vos.get(vo) or {}).get(key, default)

    def count(self, vo, host=None):
        return sum(1 for slot in self.slots if slot["vo"] == vo and (host is None or slot["host"] == host))

    def idle(self, vo):
        return sum(1 for slot in self.slots if slot["vo"] == vo and not slot.get("busy"))

    def need(self, vo):
        return max(0, self.queued[vo] - self.idle(vo))

    def spare(self, vo):
        return max(0, self.idle(vo) - self.queued[vo])

    def room(self, vo, host):
        site_max = self.option(vo, "max_slots")
        host_max = self.option(vo, "max_slots_per_host")
        return (site_max is None or self.count(vo) < int(site_max)) and \
            (host_max is None or self.count(vo, host) < int(host_max))

    def above_min(self, vo):
        return self.count(vo) > _int(self.option(vo, "min_slots"), "vos.%s.min_slots" % vo)


def plan_moves(slots, demand, vos, now=0, cooldown_s=3600, max_changes=1, hysteresis=1, allow_preemption=False):
    """The moves for one rebalancing run: a list of ``{slot, host, from_vo, to_vo, preempt, reason}``.

    ``slots``: ``[{name, host, vo, busy, changed_at}]`` (``changed_at``: epoch seconds of the slot's
    last change, from the VM metadata); ``demand``: ``{vo: {queued, running}}``; ``vos``:
    ``{vo: {share, min_slots, max_slots, max_slots_per_host, preemptible}}``.
    """
    site = _Site(slots, demand, vos)
    moved, moves = set(), []

    def cooling(slot):
        return float(slot.get("changed_at") or 0) > now - cooldown_s

    def candidates(receiver, preempt):
        for slot in site.slots:
            donor = slot["vo"]
            if donor == receiver or slot["name"] in moved or cooling(slot) or not site.above_min(donor):
                continue
            if not site.room(receiver, slot["host"]):
                continue
            if not preempt and not slot.get("busy") and site.spare(donor) > 0:
                yield slot
            elif preempt and slot.get("busy") and site.option(donor, "preemptible") \
                    and site.count(donor) - hysteresis >= site.target[donor] \
                    and site.count(receiver) < site.target[receiver]:
                yield slot

    while len(moves) < max_changes:
        receivers = sorted((vo for vo in site.names if site.need(vo) > 0),
                           key=lambda vo: (-(site.target[vo] - site.count(vo)), -site.need(vo), vo))
        chosen = None
        for preempt in ([False, True] if allow_preemption else [False]):
            for receiver in receivers:
                options = sorted(candidates(receiver, preempt),
                                 key=lambda slot: (-(site.count(slot["vo"]) - site.target[slot["vo"]]),
                                                   -site.spare(slot["vo"]), slot["name"]))
                if options:
                    chosen = (options[0], receiver, preempt)
                    break
            if chosen:
                break
        if not chosen:
            break
        slot, receiver, preempt = chosen
        reason = ("%s has %d job(s) waiting and %d idle VM(s); %s has %d idle VM(s) beyond its waiting jobs"
                  % (receiver, site.queued[receiver], site.idle(receiver), slot["vo"], site.spare(slot["vo"])))
        if preempt:
            reason = ("%s has %d job(s) waiting and is below its share; %s is preemptible and above its share"
                      % (receiver, site.queued[receiver], slot["vo"]))
        moves.append({"slot": slot["name"], "host": slot["host"], "from_vo": slot["vo"], "to_vo": receiver,
                      "preempt": preempt, "reason": reason})
        moved.add(slot["name"])
        slot["vo"], slot["busy"], slot["changed_at"] = receiver, False, now
    return moves


def apply_moves(slots, moves, now=0):
    """The slots after ``moves``: each moved slot has its new VO, is idle and was changed ``now``."""
    by_name = {move["slot"]: move for move in moves}
    result = []
    for slot in slots:
        slot = dict(slot)
        if slot["name"] in by_name:
            slot.update(vo=by_name[slot["name"]]["to_vo"], busy=False, changed_at=now)
        result.append(slot)
    return result
