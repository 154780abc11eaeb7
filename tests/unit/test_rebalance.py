"""The rebalancing planner: examples, and property-based invariants over random sites."""

from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.skygrid.fabric.plugins.module_utils.planning.rebalance import apply_moves, plan_moves

VOS = {"atlas": {"share": 50, "min_slots": 1}, "lhcb": {"share": 50, "min_slots": 1}}


def site(atlas_busy, atlas_idle, lhcb_busy=0, lhcb_idle=0, changed_at=0):
    slots = []
    for vo, busy, idle in (("atlas", atlas_busy, atlas_idle), ("lhcb", lhcb_busy, lhcb_idle)):
        for i in range(busy + idle):
            slots.append({"name": "wn%d-%s-%d" % (i % 2, vo, i), "host": "wn%d" % (i % 2), "vo": vo,
                          "busy": i < busy, "changed_at": changed_at})
    return slots


def test_no_demand_no_moves():
    assert plan_moves(site(0, 6), {}, VOS, now=10000, max_changes=5) == []


def test_idle_slots_go_to_waiting_jobs_busy_ones_stay():
    slots = site(2, 4)
    moves = plan_moves(slots, {"lhcb": {"queued": 6}}, VOS, now=10000, max_changes=10)
    assert [m["to_vo"] for m in moves] == ["lhcb"] * 4  # all 4 idle atlas VMs; its 2 busy ones stay
    busy = {s["name"] for s in slots if s["busy"]}
    assert not busy & {m["slot"] for m in moves}
    assert all(not m["preempt"] for m in moves)


def test_min_max_and_cooldown():
    vos = {"atlas": {"share": 50, "min_slots": 3}, "lhcb": {"share": 50, "max_slots": 2}}
    moves = plan_moves(site(0, 6), {"lhcb": {"queued": 6}}, vos, now=10000, max_changes=10)
    assert len(moves) == 2  # lhcb max_slots
    cool = plan_moves(site(0, 6, changed_at=9500), {"lhcb": {"queued": 6}}, VOS, now=10000, cooldown_s=3600)
    assert cool == []


def test_preemption_only_when_allowed_and_above_share():
    vos = {"atlas": {"share": 50, "preemptible": True}, "lhcb": {"share": 50}}
    slots = site(6, 0)
    assert plan_moves(slots, {"lhcb": {"queued": 4}}, vos, now=10000, max_changes=10) == []
    moves = plan_moves(slots, {"lhcb": {"queued": 4}}, vos, now=10000, max_changes=10, allow_preemption=True)
    assert len(moves) == 3 and all(m["preempt"] for m in moves)  # down to atlas's share (3 of 6), no further

    def preempted(hysteresis):
        return len(plan_moves(site(4, 0), {"lhcb": {"queued": 4}}, vos, now=10000, max_changes=10,
                              allow_preemption=True, hysteresis=hysteresis))

    # 4 slots, atlas's share 2: it gives while it holds at least share + hysteresis.
    assert [preempted(h) for h in (1, 2, 3)] == [2, 1, 0]


def test_max_changes_bounds_a_run():
    assert len(plan_moves(site(0, 6), {"lhcb": {"queued": 6}}, VOS, now=10000, max_changes=2)) == 2


def test_deterministic():
    slots = site(1, 5)
    demand = {"lhcb": {"queued": 3}}
    forward = plan_moves(slots, demand, VOS, now=1e6, max_changes=3)
    assert forward == plan_moves(list(reversed(slots)), demand, VOS, now=1e6, max_changes=3)


SLOT = st.fixed_dictionaries({"host": st.sampled_from(["wn1", "wn2", "wn3"]),
                              "vo": st.sampled_from(["atlas", "lhcb", "alice"]),
                              "busy": st.booleans(),
                              "changed_at": st.sampled_from([0, 5000, 9990])})
VO = st.fixed_dictionaries({"share": st.integers(0, 50), "min_slots": st.integers(0, 3),
                            "max_slots": st.one_of(st.none(), st.integers(0, 12)),
                            "max_slots_per_host": st.one_of(st.none(), st.integers(1, 5)),
                            "preemptible": st.booleans()})


@settings(max_examples=300, deadline=None)
@given(raw=st.lists(SLOT, max_size=24), vos=st.fixed_dictionaries({"atlas": VO, "lhcb": VO, "alice": VO}),
       queued=st.fixed_dictionaries({vo: st.integers(0, 10) for vo in ("atlas", "lhcb", "alice")}),
       max_changes=st.integers(0, 6), preempt=st.booleans())
def test_invariants(raw, vos, queued, max_changes, preempt):
    slots = [dict(slot, name="s%02d" % i) for i, slot in enumerate(raw)]
    demand = {vo: {"queued": n} for vo, n in queued.items()}
    now, cooldown = 10000, 600
    moves = plan_moves(slots, demand, vos, now=now, cooldown_s=cooldown, max_changes=max_changes,
                       allow_preemption=preempt)
    after = apply_moves(slots, moves, now=now)
    before_by_name = {s["name"]: s for s in slots}

    def count(state, vo, host=None):
        return sum(1 for s in state if s["vo"] == vo and (host is None or s["host"] == host))

    assert len(moves) <= max_changes and len(after) == len(slots)  # total slots constant
    assert len({m["slot"] for m in moves}) == len(moves)  # each slot at most once
    for move in moves:
        old = before_by_name[move["slot"]]
        assert old["changed_at"] <= now - cooldown  # nothing changed within its cool-down
        assert move["from_vo"] != move["to_vo"]
        assert not old["busy"] or (preempt and move["preempt"] and vos[old["vo"]]["preemptible"])
    for vo, options in vos.items():
        gained = count(after, vo) > count(slots, vo)
        lost = count(after, vo) < count(slots, vo)
        if lost:
            assert count(after, vo) >= options["min_slots"]
        if gained:
            assert options["max_slots"] is None or count(after, vo) <= options["max_slots"]
            for host in ("wn1", "wn2", "wn3"):
                if count(after, vo, host) > count(slots, vo, host) and options["max_slots_per_host"] is not None:
                    assert count(after, vo, host) <= options["max_slots_per_host"]
    if not any(queued.values()):
        assert moves == []
    # A plan applied twice equals one: the moves are absolute, and re-planning right after (same
    # demand) moves nothing the first plan already settled, and nothing within the cool-down.
    assert apply_moves(after, moves, now=now) == after
    replanned = plan_moves(after, demand, vos, now=now, cooldown_s=cooldown, max_changes=max_changes,
                           allow_preemption=preempt)
    assert not {m["slot"] for m in replanned} & {m["slot"] for m in moves}
    if len(moves) < max_changes:
        assert replanned == []  # not cut short by max_changes: the plan was complete
