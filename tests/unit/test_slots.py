"""Slot planning: shares, sizes, leftovers, limits, determinism, errors."""

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.planning.slots import batch_node_items, batch_nodes, plan_slots

VOS = {"atlas": {"share": 60, "vm": {"vcpus": 2, "memory_mb": 4096}},
       "lhcb": {"share": 40, "vm": {"vcpus": 1, "memory_mb": 2048}}}


def by_vo(slots):
    counts = {}
    for slot in slots:
        counts[slot["vo"]] = counts.get(slot["vo"], 0) + 1
    return counts


def test_split_by_share_and_names():
    slots = plan_slots("wn1", 10, 64000, VOS)
    assert by_vo(slots) == {"atlas": 3, "lhcb": 4}
    assert [s["name"] for s in slots][:2] == ["wn1-atlas-1", "wn1-atlas-2"]
    assert sum(s["vcpus"] for s in slots) <= 10


def test_deterministic():
    assert plan_slots("wn1", 30, 120000, VOS) == plan_slots("wn1", 30, 120000, dict(reversed(list(VOS.items()))))


def test_memory_bounds_the_plan():
    slots = plan_slots("wn1", 64, 8192, VOS)
    assert sum(s["memory_mb"] for s in slots) <= 8192 and slots


def test_leftover_goes_to_the_most_under_served():
    slots = plan_slots("wn1", 3, 64000, {"atlas": {"share": 50, "vm": {"vcpus": 2, "memory_mb": 1024}},
                                         "lhcb": {"share": 50, "vm": {"vcpus": 2, "memory_mb": 1024}}})
    assert by_vo(slots) == {"atlas": 1}  # only one 2-core VM fits; ties go to name order


def test_limits_and_zero_share():
    vos = dict(VOS, alice={"share": 0, "vm": {"vcpus": 1, "memory_mb": 1024}})
    vos["lhcb"] = dict(vos["lhcb"], max_slots_per_host=1)
    assert by_vo(plan_slots("wn1", 10, 64000, vos)) == {"atlas": 3, "lhcb": 1}


def test_small_host_gets_nothing_rather_than_overcommit():
    assert plan_slots("wn1", 1, 64000, {"atlas": {"share": 100, "vm": {"vcpus": 2, "memory_mb": 1024}}}) == []


@pytest.mark.parametrize("vos, field", [
    ({"atlas": {"share": 70}, "lhcb": {"share": 40}}, "fabric_vos"),
    ({"atlas": {"share": "lots"}}, "fabric_vos.atlas.share"),
    ({"atlas": {"share": 10, "vm": {"vcpus": 0}}}, "fabric_vos.atlas.vm"),
])
def test_errors(vos, field):
    with pytest.raises(FabricError) as err:
        plan_slots("wn1", 8, 8000, vos)
    assert err.value.field == field


def test_ip_pool_size():
    from ansible_collections.skygrid.fabric.plugins.module_utils.planning.slots import ip_pool_size
    assert ip_pool_size({"cidr": "10.0.0.0/24"}) == 254
    assert ip_pool_size({"cidr": "10.0.0.0/24", "gateway": "10.0.0.1", "reserved": ["10.0.0.2", "10.0.1.9"]}) == 252
    assert ip_pool_size({"cidr": "10.0.0.0/22", "range": {"start": "10.0.0.10", "end": "10.0.0.19"},
                         "gateway": "10.0.0.1"}) == 10
    with pytest.raises(FabricError):
        ip_pool_size({"cidr": "nonsense"})


def test_batch_node_items_keep_what_batch_node_takes():
    plan = plan_slots("wn1", 10, 64000, VOS)
    nodes = batch_nodes(plan, VOS, {plan[0]["name"]: {"ip": "10.20.0.17"}})
    slurm = batch_node_items(nodes, "slurm")
    assert slurm[0] == {"name": plan[0]["name"], "cores": 2, "properties": ["atlas", "vm"], "address": "10.20.0.17"}
    assert all(set(item) <= {"name", "cores", "properties", "address"} for item in slurm)
    torque = batch_node_items(nodes, "torque")
    assert torque[0]["memory_mb"] == 4096 and len(torque) == len(plan)


def test_batch_node_items_carry_their_vos_environment():
    plan = plan_slots("wn1", 10, 64000, VOS)
    atlas = {"SLURM_CONF": "/etc/slurm/vo/atlas/slurm.conf"}
    items = batch_node_items(batch_nodes(plan, VOS), "slurm", {"atlas": atlas, "lhcb": {}})
    assert [item["environment"] for item in items] == [atlas if slot["vo"] == "atlas" else {} for slot in plan]
    assert batch_node_items(batch_nodes(plan, VOS), "slurm", {"atlas": atlas})[-1]["environment"] == {}
    items[0]["environment"]["SLURM_CONF"] = "changed"
    assert atlas["SLURM_CONF"] == "/etc/slurm/vo/atlas/slurm.conf"


# ---------------------------------------------------------------- a host's slots after a rebalance

EVEN = {"atlas": {"share": 50, "vm": {"vcpus": 1, "memory_mb": 512}},
        "lhcb": {"share": 50, "vm": {"vcpus": 1, "memory_mb": 512}}}


def vm(name, vo, host="wn1"):
    return {"name": name, "metadata": {"vo": vo, "slot_host": host}}


def test_the_existing_slots_of_the_shares_plan_are_that_plan():
    plan = plan_slots("wn1", 4, 4096, EVEN)
    existing = [vm(slot["name"], slot["vo"]) for slot in plan]
    assert plan_slots("wn1", 4, 4096, EVEN, existing=existing) == plan


def test_a_rebalanced_host_keeps_its_slots_and_gets_nothing_beside_them():
    # A rebalance turned wn1-atlas-2 into wn1-lhcb-3: the shares would say 2 + 2, the host has 1 + 3.
    existing = [vm("wn1-atlas-1", "atlas"), vm("wn1-lhcb-1", "lhcb"), vm("wn1-lhcb-2", "lhcb"), vm("wn1-lhcb-3", "lhcb")]
    plan = plan_slots("wn1", 4, 4096, EVEN, existing=existing)
    assert [(slot["name"], slot["vo"], slot["index"]) for slot in plan] == [
        ("wn1-atlas-1", "atlas", 1), ("wn1-lhcb-1", "lhcb", 1), ("wn1-lhcb-2", "lhcb", 2), ("wn1-lhcb-3", "lhcb", 3)]


def test_free_room_beside_kept_slots_goes_to_the_shares_under_new_names():
    existing = [vm("wn1-lhcb-2", "lhcb"), vm("wn1-lhcb-3", "lhcb"), vm("wn1-lhcb-4", "lhcb")]
    plan = plan_slots("wn1", 6, 8192, EVEN, existing=existing)
    names = sorted(slot["name"] for slot in plan)
    assert names == ["wn1-atlas-1", "wn1-atlas-2", "wn1-atlas-3", "wn1-lhcb-2", "wn1-lhcb-3", "wn1-lhcb-4"]
    existing = [vm("wn1-lhcb-2", "lhcb")]
    plan = plan_slots("wn1", 4, 4096, EVEN, existing=existing)
    assert sorted(slot["name"] for slot in plan) == ["wn1-atlas-1", "wn1-atlas-2", "wn1-lhcb-1", "wn1-lhcb-2"]


def test_kept_slots_must_still_fit_have_a_share_and_be_this_hosts():
    existing = [vm("wn1-alice-1", "alice"), vm("wn1-atlas-1", "atlas"), vm("wn1-atlas-2", "atlas"),
                vm("wn1-atlas-3", "atlas"), vm("wn2-atlas-1", "atlas", host="wn2"), {"name": "desktop", "metadata": {}}]
    plan = plan_slots("wn1", 2, 4096, EVEN, existing=existing)  # room for 2: the first two atlas slots, by name
    assert [slot["name"] for slot in plan] == ["wn1-atlas-1", "wn1-atlas-2"]
    limited = dict(EVEN, atlas=dict(EVEN["atlas"], max_slots_per_host=1))
    # a limit drops the kept slots beyond it; lhcb takes its share, not more (as without existing slots)
    assert [slot["name"] for slot in plan_slots("wn1", 4, 4096, limited, existing=existing)] == \
        ["wn1-atlas-1", "wn1-lhcb-1", "wn1-lhcb-2"]
