"""The rebalance_plan filter around the planner: capacity checks and the misfit exclusion."""

from __future__ import annotations

import signal

import pytest

from ansible_collections.skygrid.fabric.plugins.filter.rebalance import plan

VOS = {"atlas": {"share": 50, "vm": {"vcpus": 1, "memory_mb": 512}},
       "lhcb": {"share": 50, "vm": {"vcpus": 8, "memory_mb": 512}}}


def atlas_vm(name):
    return {"name": name, "vcpus": 1, "memory_mb": 512, "hypervisor": "wn1",
            "metadata": {"vo": "atlas", "slot_host": "wn1", "changed_at": 0}}


@pytest.fixture
def deadline():
    """The planner once looped forever here (cooldown_s 0 and a move that does not fit): fail, not hang."""
    def expired(signum, frame):
        raise TimeoutError("the planner did not return within 5 s")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("cooldown_s", [0, 3600])
def test_a_move_that_does_not_fit_is_skipped_once_whatever_the_cooldown(deadline, cooldown_s):
    vms = [atlas_vm("wn1-atlas-1"), atlas_vm("wn1-atlas-2")]
    result = plan(vms, {"lhcb": {"queued": 5}}, VOS, now=10000, cooldown_s=cooldown_s, max_changes=2,
                  capacity={"wn1": {"cores": 2, "memory_mb": 4096}})
    assert result["moves"] == []  # an 8-vCPU lhcb VM fits nowhere on a 2-core host
    assert sorted(skip["slot"] for skip in result["skipped"]) == ["wn1-atlas-1", "wn1-atlas-2"]
    assert all("does not fit" in skip["reason"] for skip in result["skipped"])
