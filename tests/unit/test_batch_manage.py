"""Unit tests of module_utils/batch/manage.py - the batch-system-independent decisions of batch_node and
batch_queue - against an in-memory backend that records every change it is asked for."""

from __future__ import annotations

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils.batch import get_backend
from ansible_collections.skygrid.fabric.plugins.module_utils.batch.base import BatchBackend, NodeState
from ansible_collections.skygrid.fabric.plugins.module_utils.batch.clusters import Clusters
from ansible_collections.skygrid.fabric.plugins.module_utils.batch.manage import (
    DEFAULT_NOTE, ensure_node, ensure_nodes, node_spec, node_specs, queue_spec)
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.reconcile import Reconciler
from doubles.transcript import FakeClock, Transcript


class MemoryBackend(BatchBackend):
    """Nodes in a dict; a node's jobs end after ``polls`` reads (like the Torque double)."""

    name = "torque"
    keeps_online_note = True

    def __init__(self, nodes=None, polls=0):
        clock = FakeClock()
        super().__init__(runner=None, clock=clock, sleep=clock.sleep, poll_interval=10)
        self.clock_ = clock
        self.nodes = nodes or {}
        self.polls = polls
        self.changes = []

    def node(self, name):
        node = self.nodes.get(name)
        if node is None:
            return None
        if node["jobs"] and self.polls is not None:
            self.polls -= 1
            if self.polls < 0:
                node["jobs"] = []
        return NodeState(name, cores=node["cores"], properties=node["properties"], unschedulable=node["offline"],
                         jobs=node["jobs"], note=node["note"])

    def add_node(self, name, cores, memory_mb=None, properties=(), address=None):
        self.changes.append(("add", name, cores, list(properties)))
        self.nodes[name] = {"cores": cores, "properties": list(properties), "offline": False, "jobs": [], "note": None}

    def set_cores(self, node, cores, memory_mb=None):
        self.changes.append(("cores", node.name, cores))
        self.nodes[node.name]["cores"] = cores

    def set_properties(self, name, properties):
        self.changes.append(("properties", name, list(properties)))
        self.nodes[name]["properties"] = list(properties)

    def drain(self, name, note):
        self.changes.append(("drain", name, note))
        self.nodes[name].update(offline=True, note=note)

    def set_note(self, name, note):
        self.changes.append(("note", name, note))
        self.nodes[name]["note"] = note

    def online(self, name, note=None):
        self.changes.append(("online", name, note))
        self.nodes[name].update(offline=False, note=note)

    def remove(self, name):
        self.changes.append(("remove", name))
        del self.nodes[name]


def vm(offline=False, jobs=(), note=None, cores=2, properties=("atlas", "vm")):
    return {"cores": cores, "properties": list(properties), "offline": offline, "jobs": list(jobs), "note": note}


def run(backend, check=False, **params):
    reconciler = Reconciler(check_mode=check)
    result = ensure_node(backend, node_spec(dict({"name": "wn1-atlas-1"}, **params)), reconciler)
    return result, reconciler


def test_add_then_idempotent():
    backend = MemoryBackend()
    result, reconciler = run(backend, state="online", cores=2, properties=["atlas", "vm"])
    assert backend.changes == [("add", "wn1-atlas-1", 2, ["atlas", "vm"])]
    assert reconciler.diff()["before"] == {} and reconciler.diff()["after"]["wn1-atlas-1"]["cores"] == 2
    backend.changes = []
    result, reconciler = run(backend, state="online", cores=2, properties=["vm", "atlas"])
    assert backend.changes == [] and not reconciler.changed


def test_a_nodes_list_changes_only_the_nodes_that_differ():
    backend = MemoryBackend({"wn1-atlas-1": vm()})
    params = {"state": "present", "wait_drained": True, "timeout": 60, "force": False,
              "nodes": [{"name": "wn1-atlas-1", "cores": 2, "properties": ["atlas", "vm"]},
                        {"name": "wn1-lhcb-1", "cores": 1, "properties": ["lhcb", "vm"]}]}
    reconciler = Reconciler()
    results = ensure_nodes(Clusters(lambda env: backend), node_specs(params), reconciler)
    assert backend.changes == [("add", "wn1-lhcb-1", 1, ["lhcb", "vm"])]
    assert [result["name"] for result in results] == ["wn1-atlas-1", "wn1-lhcb-1"]
    assert reconciler.actions == ["add node wn1-lhcb-1 (1 cores, properties lhcb,vm)"]
    assert sorted(reconciler.diff()["after"]) == ["wn1-atlas-1", "wn1-lhcb-1"]
    again = Reconciler()
    ensure_nodes(Clusters(lambda env: backend), node_specs(params), again)
    assert not again.changed


@pytest.mark.parametrize("nodes, field", [
    ([{"name": "ok-1"}, {"name": "bad name"}], "nodes[1].name"),
    ([{"name": "ok-1", "cores": 0}], "nodes[0].cores"),
    ([{"name": "twice"}, {"name": "twice"}], "nodes"),
])
def test_a_nodes_list_error_names_the_item(nodes, field):
    with pytest.raises(FabricError) as err:
        node_specs({"state": "present", "nodes": nodes})
    assert err.value.field == field and str(err.value).startswith(field + ": ")


def test_check_mode_changes_nothing_and_reports_all():
    backend = MemoryBackend({"wn1-atlas-1": vm(cores=1, properties=["atlas"])})
    result, reconciler = run(backend, check=True, state="offline", cores=2, properties=["atlas", "vm"], note="maintenance")
    assert backend.changes == []
    assert reconciler.actions == ["resize node wn1-atlas-1 to 2 cores", "set the properties of node wn1-atlas-1 to atlas,vm",
                                  "take node wn1-atlas-1 offline (maintenance)"]
    expected = {"name": "wn1-atlas-1", "cores": 2, "properties": ["atlas", "vm"], "schedulable": False, "note": "maintenance"}
    assert reconciler.diff()["after"]["wn1-atlas-1"] == expected


def test_offline_keeps_an_existing_note_and_default_note():
    backend = MemoryBackend({"wn1-atlas-1": vm(offline=True, note="admin said so")})
    result, reconciler = run(backend, state="offline")
    assert backend.changes == [] and not reconciler.changed
    backend = MemoryBackend({"wn1-atlas-1": vm()})
    run(backend, state="offline")
    assert backend.changes == [("drain", "wn1-atlas-1", DEFAULT_NOTE)]


def test_offline_does_not_wait_drained_does():
    backend = MemoryBackend({"wn1-atlas-1": vm(jobs=["1.srv"])}, polls=2)
    result, reconciler = run(backend, state="offline")
    assert not result["waited"] and result["node"]["status"] == "draining"
    backend = MemoryBackend({"wn1-atlas-1": vm(jobs=["1.srv"])}, polls=2)
    result, reconciler = run(backend, state="drained")
    assert result["waited"] and result["node"]["status"] == "drained" and backend.clock_.sleeps == [10]


def test_drained_without_waiting():
    backend = MemoryBackend({"wn1-atlas-1": vm(jobs=["1.srv"])}, polls=5)
    result, reconciler = run(backend, state="drained", wait_drained=False)
    assert not result["waited"] and result["node"]["status"] == "draining"


def test_check_mode_never_waits():
    backend = MemoryBackend({"wn1-atlas-1": vm(jobs=["1.srv"])}, polls=None)
    result, reconciler = run(backend, check=True, state="drained", timeout=1)
    assert not result["waited"] and backend.clock_.sleeps == []


def test_absent_drains_and_waits_first():
    backend = MemoryBackend({"wn1-atlas-1": vm(jobs=["1.srv", "2.srv"])}, polls=1)
    result, reconciler = run(backend, state="absent", note="VM going away")
    assert backend.changes == [("drain", "wn1-atlas-1", "VM going away"), ("remove", "wn1-atlas-1")]
    assert result["waited"] and result["node"] is None
    assert reconciler.diff()["after"] == {}


def test_absent_with_force_removes_at_once():
    backend = MemoryBackend({"wn1-atlas-1": vm(jobs=["1.srv"])}, polls=None)
    result, reconciler = run(backend, state="absent", force=True)
    assert backend.changes == [("remove", "wn1-atlas-1")] and not result["waited"]


def test_absent_times_out_leaving_the_node_offline():
    backend = MemoryBackend({"wn1-atlas-1": vm(jobs=["1.srv"])}, polls=None)
    with pytest.raises(FabricError) as info:
        run(backend, state="absent", timeout=30)
    assert info.value.field == "timeout" and "1.srv" in str(info.value)
    assert backend.changes == [("drain", "wn1-atlas-1", DEFAULT_NOTE)] and backend.nodes["wn1-atlas-1"]["offline"]


def test_absent_node_that_is_gone():
    backend = MemoryBackend()
    result, reconciler = run(backend, state="absent")
    assert not reconciler.changed and backend.changes == []


def test_online_clears_the_note_unless_given():
    backend = MemoryBackend({"wn1-atlas-1": vm(offline=True, note="drain")})
    result, reconciler = run(backend, state="online")
    assert backend.changes == [("online", "wn1-atlas-1", None)]
    assert reconciler.diff()["after"]["wn1-atlas-1"]["note"] is None
    backend = MemoryBackend({"wn1-atlas-1": vm(note="watch this one")})
    result, reconciler = run(backend, state="online")
    assert backend.changes == [] and reconciler.diff()["after"]["wn1-atlas-1"]["note"] == "watch this one"


@pytest.mark.parametrize("params,field", [
    ({"name": "bad name"}, "name"),
    ({"name": "-x"}, "name"),
    ({"name": "n1", "cores": 0}, "cores"),
    ({"name": "n1", "properties": ["at las"]}, "properties"),
    ({"name": "n1", "note": "two\nlines"}, "note"),
    ({"name": "n1", "timeout": -1}, "timeout"),
])
def test_node_spec_errors_name_the_field(params, field):
    with pytest.raises(FabricError) as info:
        node_spec(params)
    assert info.value.field == field


def test_queue_spec_defaults_and_errors():
    torque = get_backend("torque", Transcript())
    slurm = get_backend("slurm", Transcript())
    spec = queue_spec({"name": "atlas"}, torque)
    assert spec["property"] == "atlas" and spec["enabled"] and spec["started"] and spec["groups"] == []
    for params, backend, field in [({"name": "atlas", "nodeset": "vo_atlas"}, torque, "nodeset"),
                                   ({"name": "atlas", "state": "gone"}, slurm, "state"),
                                   ({"name": "atlas", "groups": ["a b"]}, slurm, "groups"),
                                   ({"name": "atlas", "nodeset": "bad set"}, slurm, "nodeset")]:
        with pytest.raises(FabricError) as info:
            queue_spec(params, backend)
        assert info.value.field == field


def test_unknown_backend():
    with pytest.raises(FabricError) as info:
        get_backend("pbspro", Transcript())
    assert info.value.field == "backend"
