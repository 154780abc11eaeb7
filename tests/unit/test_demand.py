"""Demand per VO (module_utils/planning/demand.py) and the rebalancing plan built on it (plugins/filter/rebalance.py).

Slurm: squeue lines recorded live from Slurm 22.05.8 (this test bed), plus constructed lines for states that
are hard to catch (multi-node, completing, suspended). Torque: recorded-form ``qstat -f -x`` XML from
tests/fixtures/torque/qstat/ (reconstructed from the Torque 6 documentation, see its README). Every command
line a reader runs is stated through a Transcript runner."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible.errors import AnsibleFilterError

from ansible_collections.skygrid.fabric.plugins.filter.rebalance import FilterModule, plan, vm_slots
from ansible_collections.skygrid.fabric.plugins.module_utils.batch import get_backend
from ansible_collections.skygrid.fabric.plugins.module_utils.batch.base import CommandError
from ansible_collections.skygrid.fabric.plugins.module_utils.planning.demand import (
    QSTAT_ARGV, SQUEUE_ARGV, assign, constraint_features, expand_hostlist, parse_qstat_xml, parse_squeue, read_demand,
    summarise, vo_mapping)
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from doubles.transcript import Transcript

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QSTAT = os.path.join(TESTS, "fixtures", "torque", "qstat")
VOS = {"atlas": {}, "lhcb": {}}

# `squeue -h -a -r -t <states> -o '%i\t%P\t%T\t%C\t%f\t%N\t%r'`, recorded live (Slurm 22.05.8): a job held for
# its begin time, one waiting for a dependency, one for resources, one with a constraint no node has
# (BadConstraints), held jobs with OR / AND constraints, a held array of 3 (one line each with -r), a running one.
SQUEUE_RECORDED = (
    "50\tbatch\tPENDING\t1\t(null)\t\tBeginTime\n"
    "51\tbatch\tPENDING\t1\t(null)\t\tDependency\n"
    "54\tbatch\tPENDING\t2\t(null)\t\tResources\n"
    "48\tbatch\tPENDING\t2\tlhcb\t\tBadConstraints\n"
    "53\tbatch\tPENDING\t1\t[atlas|lhcb]\t\tJobHeldUser\n"
    "52\tbatch\tPENDING\t1\tatlas&lhcb\t\tJobHeldUser\n"
    "49_1\tbatch\tPENDING\t1\tatlas\t\tJobHeldUser\n"
    "49_2\tbatch\tPENDING\t1\tatlas\t\tJobHeldUser\n"
    "49_3\tbatch\tPENDING\t1\tatlas\t\tJobHeldUser\n"
    "47\tbatch\tPENDING\t1\tlhcb\t\tJobHeldUser\n"
    "46\tbatch\tRUNNING\t2\t(null)\tvm\tNone\n"
)
# Recorded live too: our own dynamic node running one job, one job waiting behind it, one in a partition over
# that node (its reason is a sentence with spaces and commas).
SQUEUE_RECORDED_BUSY = (
    "63\tbatch\tPENDING\t1\tsgdemand_a\t\tResources\n"
    "62\tbatch\tRUNNING\t1\tsgdemand_a\tsgdemand-dyn1\tNone\n"
    "64\tsgdemand-p\tPENDING\t1\t(null)\t\tNodes required for job are DOWN, DRAINED or reserved for jobs in higher "
    "priority partitions\n"
)
# Constructed in the same format: VO VMs running, completing, suspended; partitions per VO; a limit.
SQUEUE_SITE = (
    "201\tbatch\tRUNNING\t1\tatlas\twn042-atlas-1\tNone\n"
    "202\tbatch\tRUNNING\t2\tatlas\twn042-atlas-[2-3]\tNone\n"
    "203\tbatch\tCOMPLETING\t1\tlhcb\twn042-lhcb-1\tNone\n"
    "204\tlhcb\tPENDING\t4\t(null)\t\tPriority\n"
    "205\tbatch\tPENDING\t1\tlhcb\t\tResources\n"
    "206\tbatch\tPENDING\t1\tlhcb\t\tReqNodeNotAvail, UnavailableNodes:wn042-lhcb-1\n"
    "207\tbatch\tPENDING\t8\tatlas\t\tAssocGrpCpuLimit\n"
    "208\tatlas,lhcb\tPENDING\t1\t(null)\t\tPriority\n"
    "209\tbatch\tSUSPENDED\t1\tlhcb\twn042-lhcb-2\tNone\n"
    "210\tbatch\tREQUEUE_HOLD\t1\tlhcb\t\tJobHeldAdmin\n"
    "211\tbatch\tRUNNING\t4\t(null)\twn004\tNone\n"
)


def qstat(name):
    with open(os.path.join(QSTAT, name)) as handle:
        return handle.read()


def reader(backend_name, *steps):
    runner = Transcript(steps)
    return get_backend(backend_name, runner), runner


# ------------------------------------------------------------------------------------------ the VO mapping


def test_mapping_defaults_to_the_vo_name():
    assert vo_mapping({"atlas": None, "lhcb": {}}, "slurm") == {
        "atlas": {"queues": ["atlas"], "features": ["atlas"]}, "lhcb": {"queues": ["lhcb"], "features": ["lhcb"]}}


def test_mapping_reads_fabric_vos_and_drops_names_several_vos_share():
    fabric_vos = {"atlas": {"share": 60, "vm": {"vcpus": 8}, "batch": {"properties": ["atlas", "vm"], "queue": "atlas"}},
                  "lhcb": {"share": 40, "batch": {"properties": ["lhcb", "vm"], "queue": "lhcb"}}}
    for backend in ("slurm", "torque"):
        assert vo_mapping(fabric_vos, backend) == {"atlas": {"queues": ["atlas"], "features": ["atlas"]},
                                                   "lhcb": {"queues": ["lhcb"], "features": ["lhcb"]}}
    # a partition is Slurm's (Torque takes the queue); direct keys win over batch's; a string is one name
    vos = {"atlas": {"partition": "grid_atlas", "queue": "atlas_q", "features": "atlas,mcore", "batch": {"queue": "x"}},
           "lhcb": {"partition": ["grid_lhcb"], "properties": []}}
    assert vo_mapping(vos, "slurm") == {"atlas": {"queues": ["grid_atlas"], "features": ["atlas", "mcore"]},
                                        "lhcb": {"queues": ["grid_lhcb"], "features": []}}
    assert vo_mapping(vos, "torque") == {"atlas": {"queues": ["atlas_q"], "features": ["atlas", "mcore"]},
                                         "lhcb": {"queues": ["lhcb"], "features": []}}
    # one partition for every VO identifies none of them: VO by feature then
    assert vo_mapping({"atlas": {"partition": "batch"}, "lhcb": {"partition": "batch"}}, "slurm")["atlas"]["queues"] == []


@pytest.mark.parametrize("vos, field", [
    ({"atlas": {"features": [1]}}, "vos.atlas.features"),
    ({"atlas": {"partition": {"a": 1}}}, "vos.atlas.partition"),
    ({"atlas": {"batch": {"queue": "bad name"}}}, "vos.atlas.batch.queue"),
    ({"at las": {}}, "vos"),
    ({"atlas": "atlas"}, "vos.atlas"),
    (["atlas"], "vos"),
])
def test_mapping_errors_name_the_field(vos, field):
    with pytest.raises(FabricError) as err:
        vo_mapping(vos, "slurm")
    assert err.value.field == field


def test_assign_by_queue_then_feature():
    mapping = vo_mapping({"atlas": {}, "lhcb": {}}, "slurm")
    job = {"queues": ["lhcb"], "features": ["atlas"]}
    assert assign(job, mapping, "auto") == "lhcb"
    assert assign(job, mapping, "feature") == "atlas"
    assert assign({"queues": ["batch"], "features": ["atlas"]}, mapping, "queue") is None
    assert assign({"queues": ["batch"], "features": ["vm", "lhcb", "atlas"]}, mapping) == "lhcb"  # the constraint's order
    with pytest.raises(FabricError):
        assign(job, mapping, "account")


# ------------------------------------------------------------------------------------------ Slurm


def test_expand_hostlist():
    assert expand_hostlist("wn042-atlas-[1-3]") == ["wn042-atlas-1", "wn042-atlas-2", "wn042-atlas-3"]
    assert expand_hostlist("wn[08-10,12],vm,rack[1-2]-n[1-2]") == [
        "wn08", "wn09", "wn10", "wn12", "vm", "rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]
    assert expand_hostlist("") == []
    for bad in ("wn[1-", "wn[a-b]", "wn[3-1]"):
        with pytest.raises(FabricError):
            expand_hostlist(bad)


def test_constraint_features():
    assert constraint_features("(null)") == []
    assert constraint_features("[atlas|lhcb]") == ["atlas", "lhcb"]
    assert constraint_features("atlas&vm") == ["atlas", "vm"]
    assert constraint_features("atlas*2,lhcb") == ["atlas", "lhcb"]


def test_parse_recorded_squeue():
    jobs = {job["id"]: job for job in parse_squeue(SQUEUE_RECORDED)}
    assert len(jobs) == 11
    assert [jobs[i]["kind"] for i in ("50", "51", "53", "47", "49_2")] == ["held"] * 5
    assert jobs["54"]["kind"] == jobs["48"]["kind"] == "queued"  # Resources; BadConstraints: the VO has no VM yet
    assert jobs["48"] == {"id": "48", "kind": "queued", "state": "PENDING", "reason": "BadConstraints",
                          "queues": ["batch"], "features": ["lhcb"], "cores": 2, "nodes": []}
    assert jobs["46"]["kind"] == "running" and jobs["46"]["nodes"] == ["vm"] and jobs["46"]["reason"] is None
    assert jobs["53"]["features"] == ["atlas", "lhcb"]


def test_slurm_demand_from_recorded_output():
    backend, runner = reader("slurm", (SQUEUE_ARGV, 0, SQUEUE_RECORDED))
    result = read_demand(backend, VOS)
    runner.assert_done()
    assert SQUEUE_ARGV[:6] == ["squeue", "-h", "-a", "-r", "-t", SQUEUE_ARGV[5]] and SQUEUE_ARGV[6] == "-o"
    assert result["demand"] == {
        # 49_1..3 and 52, 53 (atlas first in "[atlas|lhcb]" and "atlas&lhcb") are held
        "atlas": {"queued": 0, "queued_cores": 0, "running": 0, "running_cores": 0, "held": 5, "held_cores": 5},
        "lhcb": {"queued": 1, "queued_cores": 2, "running": 0, "running_cores": 0, "held": 1, "held_cores": 1}}
    assert result["unmatched"] == {"queued": 1, "queued_cores": 2, "running": 1, "running_cores": 2,
                                   "held": 2, "held_cores": 2}
    assert result["busy_nodes"] == {"vm": ["46"]}
    held = read_demand(get_backend("slurm", Transcript([(SQUEUE_ARGV, 0, SQUEUE_RECORDED)])), VOS, count_held=True)
    assert held["demand"]["atlas"]["queued"] == 5 and held["demand"]["atlas"]["held"] == 0


def test_slurm_demand_from_recorded_busy_node():
    backend, runner = reader("slurm", (SQUEUE_ARGV, 0, SQUEUE_RECORDED_BUSY))
    result = read_demand(backend, {"a": {"features": ["sgdemand_a"]}, "p": {"partition": "sgdemand-p"}})
    assert result["demand"]["a"] == {"queued": 1, "queued_cores": 1, "running": 1, "running_cores": 1,
                                     "held": 0, "held_cores": 0}
    assert result["demand"]["p"]["queued"] == 1  # waiting for the node: demand
    assert result["busy_nodes"] == {"sgdemand-dyn1": ["62"]}


def test_slurm_demand_of_a_site():
    backend, runner = reader("slurm", (SQUEUE_ARGV, 0, SQUEUE_SITE))
    result = read_demand(backend, VOS, details=True)
    assert result["demand"] == {
        "atlas": {"queued": 1, "queued_cores": 1, "running": 2, "running_cores": 3, "held": 1, "held_cores": 8},
        "lhcb": {"queued": 3, "queued_cores": 6, "running": 1, "running_cores": 1, "held": 1, "held_cores": 1}}
    # 208 waits in partitions atlas,lhcb: the first VO partition wins; 203 completes (busy, not running)
    assert result["busy_nodes"] == {"wn004": ["211"], "wn042-atlas-1": ["201"], "wn042-atlas-2": ["202"],
                                    "wn042-atlas-3": ["202"], "wn042-lhcb-1": ["203"], "wn042-lhcb-2": ["209"]}
    assert result["unmatched"]["running"] == 1 and result["unmatched"]["running_cores"] == 4
    assert {job["id"]: job["vo"] for job in result["jobs"]}["208"] == "atlas"
    by_feature = read_demand(get_backend("slurm", Transcript([(SQUEUE_ARGV, 0, SQUEUE_SITE)])), VOS, match_by="feature")
    assert by_feature["demand"]["lhcb"]["queued"] == 2  # 204 (partition lhcb, no constraint) is nobody's now
    assert by_feature["unmatched"]["queued"] == 2


def test_slurm_errors():
    backend, dummy = reader("slurm", (SQUEUE_ARGV, 1, "", "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"))
    with pytest.raises(CommandError) as err:
        read_demand(backend, VOS)
    assert "Unable to contact slurm controller" in str(err.value) and err.value.rc == 1
    backend, dummy = reader("slurm", (SQUEUE_ARGV, 127, "", "squeue: command not found"))
    with pytest.raises(CommandError, match="command not found - run the module where"):
        read_demand(backend, VOS)
    backend, dummy = reader("slurm", (SQUEUE_ARGV, 0, "47 batch PENDING\n"))
    with pytest.raises(FabricError, match="cannot read this squeue line"):
        read_demand(backend, VOS)
    with pytest.raises(FabricError) as err:
        read_demand(get_backend("slurm", Transcript()), VOS, match_by="user")
    assert err.value.field == "match_by"


# ------------------------------------------------------------------------------------------ Torque


def test_parse_qstat_recorded_live():
    """Recorded from the TORQUE 6.1.3 test bed: one job running on the VM node, one waiting behind it (its own
    -l nodes=1:ppn=1:atlas), one held, one for a VO whose only node is down."""
    jobs = {job["id"]: job for job in parse_qstat_xml(qstat("qstat_fx_site.xml"))}
    assert jobs["18.vm"] == {"id": "18.vm", "kind": "running", "state": "R", "reason": None, "queues": ["sgtrq-atlas"],
                             "features": ["atlas"], "cores": 1, "nodes": ["sgtrq-vm1"]}
    assert jobs["19.vm"]["kind"] == "queued" and jobs["19.vm"]["features"] == ["atlas"] and jobs["19.vm"]["cores"] == 1
    assert jobs["20.vm"]["kind"] == "held" and jobs["21.vm"]["features"] == ["lhcb"]
    result = read_demand(get_backend("torque", Transcript([(QSTAT_ARGV, 0, qstat("qstat_fx_site.xml"))])),
                         {"atlas": {"queue": "sgtrq-atlas"}, "lhcb": {"queue": "sgtrq-lhcb"}})
    assert result["demand"]["atlas"] == {"queued": 1, "queued_cores": 1, "running": 1, "running_cores": 1,
                                         "held": 1, "held_cores": 1}
    assert result["demand"]["lhcb"]["queued"] == 1 and result["busy_nodes"] == {"sgtrq-vm1": ["18.vm"]}


def test_parse_qstat_reconstructed_forms():
    """Forms the one-host test bed does not produce (multi-node exec_host, job arrays, -L requests, Torque 4
    exec_host, in-transit jobs): a reconstructed site, see tests/fixtures/torque/README.md."""
    jobs = {job["id"].split(".")[0]: job for job in parse_qstat_xml(qstat("qstat_fx_reconstructed.xml"))}
    assert "1208" not in jobs  # completed (keep_completed) jobs are left out
    assert jobs["1201"] == {"id": "1201.torque.example.org", "kind": "running", "state": "R", "reason": None,
                            "queues": ["atlas"], "features": ["atlas"], "cores": 2, "nodes": ["wn042-atlas-1"]}
    assert jobs["1203"]["features"] == ["lhcb"] and jobs["1203"]["cores"] == 1  # neednodes from the queue default
    assert jobs["1204"]["kind"] == "held" and jobs["1204"]["cores"] == 4
    assert jobs["1206"]["kind"] == "held"  # W: waiting for its execution time
    assert jobs["1207"]["kind"] == "ending" and jobs["1207"]["nodes"] == ["wn042-atlas-2"]
    assert jobs["1210[]"]["count"] == 10  # an array summary stands for its 10 elements
    assert jobs["1211"]["cores"] == 8  # -L tasks=2:lprocs=4
    assert jobs["1212"]["nodes"] == ["wn042-lhcb-1", "wn042-lhcb-2"] and jobs["1212"]["cores"] == 4  # Torque 4 exec_host
    assert jobs["1214"]["kind"] == "queued"  # T: in transit


def test_torque_demand_from_reconstructed_site():
    backend, runner = reader("torque", (QSTAT_ARGV, 0, qstat("qstat_fx_reconstructed.xml")))
    result = read_demand(backend, VOS)
    runner.assert_done()
    assert QSTAT_ARGV == ["qstat", "-f", "-x"]
    assert result["demand"] == {
        "atlas": {"queued": 2, "queued_cores": 10, "running": 2, "running_cores": 3, "held": 0, "held_cores": 0},
        "lhcb": {"queued": 12, "queued_cores": 12, "running": 1, "running_cores": 4, "held": 2, "held_cores": 5}}
    assert result["unmatched"] == {"queued": 1, "queued_cores": 1, "running": 1, "running_cores": 8,
                                   "held": 0, "held_cores": 0}
    assert result["busy_nodes"] == {
        "wn004.example.org": ["1209.torque.example.org"], "wn042-atlas-1": ["1201.torque.example.org"],
        "wn042-atlas-2": ["1207.torque.example.org"], "wn042-atlas-3": ["1213.torque.example.org"],
        "wn042-lhcb-1": ["1212.torque.example.org"], "wn042-lhcb-2": ["1212.torque.example.org"]}
    by_queue = read_demand(get_backend("torque", Transcript([(QSTAT_ARGV, 0, qstat("qstat_fx_reconstructed.xml"))])),
                           {"atlas": {}, "lhcb": {}, "alice": {}}, match_by="queue")
    assert by_queue["demand"]["lhcb"]["queued"] == 11  # 1205 sits in queue batch: only its property says lhcb
    assert by_queue["demand"]["alice"]["queued"] == 1


def test_torque_without_jobs_and_errors():
    backend, dummy = reader("torque", (QSTAT_ARGV, 0, qstat("qstat_fx_no_jobs.txt")))
    result = read_demand(backend, VOS)
    assert result["demand"]["atlas"] == {"queued": 0, "queued_cores": 0, "running": 0, "running_cores": 0,
                                         "held": 0, "held_cores": 0}
    assert result["busy_nodes"] == {}
    backend, dummy = reader("torque", (QSTAT_ARGV, 111, "", qstat("qstat_cannot_connect.stderr")))
    with pytest.raises(CommandError, match="cannot connect to server"):
        read_demand(backend, VOS)
    backend, dummy = reader("torque", (QSTAT_ARGV, 0, "<Data><Job><Job_Id>1.srv</Job_Id>"))
    with pytest.raises(FabricError, match="cannot parse qstat"):
        read_demand(backend, VOS)


def test_summarise_counts_array_elements_and_details():
    jobs = [{"id": "1[].s", "kind": "queued", "state": "Q", "reason": None, "queues": ["lhcb"], "features": [],
             "cores": 2, "nodes": [], "count": 3}]
    result = summarise(jobs, vo_mapping(VOS, "torque"), details=True)
    assert result["demand"]["lhcb"]["queued"] == 3 and result["demand"]["lhcb"]["queued_cores"] == 6
    assert result["jobs"][0]["vo"] == "lhcb"


# ------------------------------------------------------------------------------------------ the plan

SITE_VOS = {"atlas": {"share": 50, "vm": {"vcpus": 1, "memory_mb": 512}},
            "lhcb": {"share": 50, "vm": {"vcpus": 1, "memory_mb": 512}}}


def vm(name, vo, host="wn1", changed_at="0", vcpus=1, memory_mb=512, slot=True):
    metadata = {"vo": vo, "slot_host": host, "changed_at": changed_at} if slot else {}
    return {"name": name, "vcpus": vcpus, "memory_mb": memory_mb, "metadata": metadata, "hypervisor": host}


def demand(busy=None, **queued):
    return {"demand": {vo: {"queued": n, "running": 0} for vo, n in queued.items()},
            "busy_nodes": {name: ["9%d" % i] for i, name in enumerate(busy or [])}}


def test_vm_slots_reads_vm_info():
    vms = [vm("wn1-atlas-1", "atlas", changed_at="1700000000"), vm("other", None, slot=False),
           {"name": "wn1-lhcb-1", "vcpus": 1, "memory_mb": 512, "metadata": {"vo": "lhcb", "slot_host": "wn1"}}]
    assert vm_slots(vms) == [
        {"name": "wn1-atlas-1", "host": "wn1", "hypervisor": "wn1", "vo": "atlas", "changed_at": 1700000000.0,
         "vcpus": 1, "memory_mb": 512},
        {"name": "wn1-lhcb-1", "host": "wn1", "hypervisor": "wn1", "vo": "lhcb", "changed_at": 0.0,
         "vcpus": 1, "memory_mb": 512}]
    with pytest.raises(FabricError):
        vm_slots([{"metadata": {}}])
    migrated = dict(vm("wn1-atlas-2", "atlas"), hypervisor="wn2")
    assert vm_slots([migrated]) == []  # not wn2's slot, and no longer on wn1: left alone


def test_plan_moves_idle_atlas_vms_to_waiting_lhcb_jobs_and_leaves_busy_ones():
    vms = [vm("wn1-atlas-1", "atlas"), vm("wn1-atlas-2", "atlas"), vm("wn1-atlas-3", "atlas")]
    result = plan(vms, demand(busy=["wn1-atlas-2"], lhcb=6), SITE_VOS, now=10000, max_changes=5)
    assert [(m["slot"], m["to_vo"], m["new_slot"]["name"]) for m in result["moves"]] == [
        ("wn1-atlas-1", "lhcb", "wn1-lhcb-1"), ("wn1-atlas-3", "lhcb", "wn1-lhcb-2")]
    assert result["moves"][0]["new_slot"] == {"name": "wn1-lhcb-1", "host": "wn1", "vo": "lhcb", "index": 1,
                                              "vcpus": 1, "memory_mb": 512}
    assert result["vos"]["atlas"] == {"slots": 3, "busy": 1, "idle": 2, "queued": 0, "running": 0, "share": 50.0,
                                      "target": 1.5}
    assert "move 1: wn1-atlas-1 atlas -> lhcb as wn1-lhcb-1" in result["table"]
    assert result["table"][0].split() == ["VO", "slots", "busy", "idle", "queued", "running", "share", "target"]


def test_plan_no_demand_no_move():
    result = plan([vm("wn1-atlas-1", "atlas")], demand(), SITE_VOS, now=10000)
    assert result["moves"] == [] and result["table"][-1] == "no move: nothing to rebalance"


def test_plan_new_names_skip_taken_ones():
    vms = [vm("wn1-atlas-1", "atlas"), vm("wn1-atlas-2", "atlas"), vm("wn1-lhcb-1", "lhcb", slot=False),
           vm("wn1-lhcb-3", "lhcb", changed_at="9999")]
    result = plan(vms, demand(lhcb=5), SITE_VOS, now=10000, max_changes=2, cooldown_s=60)
    assert [m["new_slot"]["name"] for m in result["moves"]] == ["wn1-lhcb-2", "wn1-lhcb-4"]
    assert [m["new_slot"]["index"] for m in result["moves"]] == [2, 4]


def test_plan_settles_after_a_change_so_a_second_run_right_after_changes_nothing():
    vms = [vm("wn1-atlas-1", "atlas"), vm("wn1-atlas-2", "atlas")]
    first = plan(vms, demand(lhcb=6), SITE_VOS, now=10000, max_changes=1, settle_s=600)
    assert len(first["moves"]) == 1
    move = first["moves"][0]
    after = [v for v in vms if v["name"] != move["slot"]] + [vm(move["new_slot"]["name"], "lhcb", changed_at="10000")]
    second = plan(after, demand(lhcb=6), SITE_VOS, now=10030, max_changes=1, settle_s=600)
    assert second["moves"] == [] and second["settling"]
    assert second["table"][-1] == "settling: a slot changed 30s ago (less than 600s): no move this run"
    later = plan(after, demand(lhcb=6), SITE_VOS, now=10700, max_changes=1, settle_s=600)
    assert [m["slot"] for m in later["moves"]] == ["wn1-atlas-2" if move["slot"] == "wn1-atlas-1" else "wn1-atlas-1"]


def test_plan_skips_moves_that_do_not_fit_the_host():
    vos = {"atlas": {"share": 50, "vm": {"vcpus": 1, "memory_mb": 512}},
           "lhcb": {"share": 50, "vm": {"vcpus": 4, "memory_mb": 4096}}}
    vms = [vm("wn1-atlas-1", "atlas", host="wn1"), vm("wn2-atlas-1", "atlas", host="wn2")]
    # no capacity known: a 4-vCPU VM never replaces a 1-vCPU one
    result = plan(vms, demand(lhcb=2), vos, now=10000, max_changes=2)
    assert result["moves"] == [] and len(result["skipped"]) == 2
    assert result["skipped"][0]["reason"].startswith("a lhcb VM (4 vCPUs, 4096 MiB) does not fit")
    # wn2 has room for it, wn1 has not
    capacity = {"wn1": {"cores": 2, "memory_mb": 8192}, "wn2": {"cores": 8, "memory_mb": 16384}}
    result = plan(vms, demand(lhcb=2), vos, now=10000, max_changes=2, capacity=capacity)
    assert [m["slot"] for m in result["moves"]] == ["wn2-atlas-1"]
    assert [s["slot"] for s in result["skipped"]] == ["wn1-atlas-1"]


def test_plan_preemption_carries_the_jobs_to_requeue():
    vos = {"atlas": {"share": 50, "preemptible": True, "vm": {"vcpus": 1, "memory_mb": 512}},
           "lhcb": {"share": 50, "vm": {"vcpus": 1, "memory_mb": 512}}}
    vms = [vm("wn1-atlas-%d" % i, "atlas") for i in (1, 2, 3, 4)]
    busy = ["wn1-atlas-%d" % i for i in (1, 2, 3, 4)]
    assert plan(vms, demand(busy=busy, lhcb=4), vos, now=10000, max_changes=4)["moves"] == []
    result = plan(vms, demand(busy=busy, lhcb=4), vos, now=10000, max_changes=4, allow_preemption=True)
    assert [m["jobs"] for m in result["moves"]] == [["90"], ["91"]] and all(m["preempt"] for m in result["moves"])
    assert "(preempting 90)" in result["table"][-4]


def test_plan_takes_a_plain_demand_and_busy_list():
    vms = [vm("wn1-atlas-1", "atlas"), vm("wn1-atlas-2", "atlas")]
    result = plan(vms, {"lhcb": {"queued": 1}}, SITE_VOS, now=10000, busy=["wn1-atlas-1"])
    assert [m["slot"] for m in result["moves"]] == ["wn1-atlas-2"]


@pytest.mark.parametrize("kwargs, message", [
    ({"now": None}, "now: is required"),
    ({"now": "soon"}, "now: must be a number"),
    ({"max_changes": -1}, "max_changes: must be at least 0"),
    ({"demand": ["lhcb"]}, "demand: must be vo_demand's result"),
    ({"vos": {"atlas": {"share": 50, "vm": {"vcpus": "many"}}, "lhcb": {"share": 50, "vm": {"vcpus": "x"}}}},
     "vm.vcpus and vm.memory_mb must be whole numbers"),
])
def test_plan_errors_through_the_filter(kwargs, message):
    args = dict(demand=demand(lhcb=3), vos=SITE_VOS, now=10000)
    args.update(kwargs)
    rebalance_plan = FilterModule().filters()["rebalance_plan"]
    with pytest.raises(AnsibleFilterError, match="rebalance_plan: .*" + message.replace("(", r"\(")):
        rebalance_plan([vm("wn1-atlas-1", "atlas"), vm("wn1-atlas-2", "atlas")], **args)


SITE_VM = st.fixed_dictionaries({"host": st.sampled_from(["wn1", "wn2"]), "vo": st.sampled_from(["atlas", "lhcb"]),
                                 "busy": st.booleans(), "changed_at": st.sampled_from([0, 9500])})
SIZE = st.fixed_dictionaries({"vcpus": st.integers(1, 4), "memory_mb": st.sampled_from([512, 2048, 4096])})


@settings(max_examples=200, deadline=None)
@given(raw=st.lists(SITE_VM, max_size=12), sizes=st.fixed_dictionaries({"atlas": SIZE, "lhcb": SIZE}),
       queued=st.fixed_dictionaries({"atlas": st.integers(0, 6), "lhcb": st.integers(0, 6)}),
       cores=st.fixed_dictionaries({"wn1": st.integers(0, 16), "wn2": st.integers(0, 16)}),
       max_changes=st.integers(0, 5))
def test_plan_invariants(raw, sizes, queued, cores, max_changes):
    vos = {vo: {"share": 50, "vm": size} for vo, size in sizes.items()}
    counters = {}
    vms, busy = [], []
    for item in raw:
        counters[(item["host"], item["vo"])] = counters.get((item["host"], item["vo"]), 0) + 1
        name = "%s-%s-%d" % (item["host"], item["vo"], counters[(item["host"], item["vo"])])
        vms.append(vm(name, item["vo"], host=item["host"], changed_at=str(item["changed_at"]),
                      **sizes[item["vo"]]))
        if item["busy"]:
            busy.append(name)
    capacity = {host: {"cores": n, "memory_mb": n * 2048} for host, n in cores.items()}
    result = plan(vms, demand(busy=busy, **queued), vos, now=10000, max_changes=max_changes, cooldown_s=600,
                  capacity=capacity, settle_s=0)
    names = [v["name"] for v in vms]
    new_names = [m["new_slot"]["name"] for m in result["moves"]]
    assert len(result["moves"]) <= max_changes
    assert len(set(new_names)) == len(new_names) and not set(new_names) & set(names)  # fresh, unique names
    assert not {m["slot"] for m in result["moves"]} & set(busy)  # busy VMs are never touched
    for host in ("wn1", "wn2"):  # a host never gets more VMs than it has room for, unless it had already
        before = [v for v in vms if v["hypervisor"] == host]
        moved = {m["slot"] for m in result["moves"]}
        after = [v for v in before if v["name"] not in moved] + [m["new_slot"] for m in result["moves"] if m["host"] == host]
        used_before = sum(v["vcpus"] for v in before)
        used_after = sum(v["vcpus"] for v in after)
        assert used_after <= max(used_before, capacity[host]["cores"])
    if not any(queued.values()):
        assert result["moves"] == []
