"""Unit tests of module_utils/batch/slurm.py against output recorded from Slurm 22.05 (Debian 12, this test
bed), and the exact scontrol/squeue command lines the backend runs. The live behaviour itself is covered by
tests/integration/test_batch_modules_slurm.py."""

from __future__ import annotations

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils.batch.manage import ensure_node, ensure_queue, node_spec, queue_spec
from ansible_collections.skygrid.fabric.plugins.module_utils.batch.slurm import SlurmBackend, node_from_fields, parse_show_line
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.reconcile import Reconciler
from doubles.transcript import FakeClock, Transcript

# Recorded with `scontrol -o -F show node NAME` / `scontrol -o show partition NAME` (Slurm 22.05.8).
FUTURE_DRAINED = (
    "NodeName=sgbatch-p8 CoresPerSocket=1  CPUAlloc=0 CPUEfctv=1 CPUTot=1 CPULoad=N/A AvailableFeatures=lhcb "
    "ActiveFeatures=lhcb Gres=(null) NodeAddr=127.0.0.1 NodeHostName=sgbatch-p8 Port=1  RealMemory=512 AllocMem=0 "
    "FreeMem=N/A Sockets=1 Boards=1 State=FUTURE+DRAIN+DYNAMIC_NORM ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A "
    "MCS_label=N/A Partitions=batch  BootTime=None SlurmdStartTime=None LastBusyTime=Unknown "
    "CfgTRES=cpu=1,mem=512M,billing=1 AllocTRES= CapWatts=n/a CurrentWatts=0 AveWatts=0 ExtSensorsJoules=n/s "
    "ExtSensorsWatts=0 ExtSensorsTemp=n/s Reason=a b c [root@2026-11-24T01:58:27]\n")
REGISTERED_IDLE = (
    "NodeName=sgbatch-proto5 Arch=x86_64 CoresPerSocket=1  CPUAlloc=0 CPUEfctv=1 CPUTot=1 CPULoad=3.05 "
    "AvailableFeatures=atlas ActiveFeatures=atlas Gres=(null) NodeAddr=sgbatch-proto5 NodeHostName=sgbatch-proto5 "
    "Port=6830 Version=22.05.8 OS=Linux 6.18.44-fc-v657 #1 SMP PREEMPT_DYNAMIC @0  RealMemory=512 AllocMem=0 "
    "FreeMem=22572 Sockets=1 Boards=1 State=IDLE+DYNAMIC_NORM ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A "
    "MCS_label=N/A Partitions=batch  BootTime=2026-11-24T01:28:38 SlurmdStartTime=2026-11-24T01:56:16 "
    "LastBusyTime=2026-11-24T01:56:16 CfgTRES=cpu=1,mem=512M,billing=1 AllocTRES= CapWatts=n/a CurrentWatts=0 "
    "AveWatts=0 ExtSensorsJoules=n/s ExtSensorsWatts=0 ExtSensorsTemp=n/s\n")
NOT_RESPONDING = REGISTERED_IDLE.replace("State=IDLE+DYNAMIC_NORM", "State=IDLE+DYNAMIC_NORM+NOT_RESPONDING")
DRAINING = (REGISTERED_IDLE.replace("State=IDLE+DYNAMIC_NORM", "State=ALLOCATED+DRAIN+DYNAMIC_NORM").rstrip("\n")
            + " Reason=skygrid test [root@2026-11-24T01:54:30]\n")
PARTITION = (
    "PartitionName=sgbatch-q1 AllowGroups=root AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=NO QoS=N/A "
    "DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED MaxTime=UNLIMITED "
    "MinNodes=1 LLN=NO MaxCPUsPerNode=UNLIMITED NodeSets=ns_atlas Nodes=sgbatch-p[9-10] PriorityJobFactor=1 "
    "PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP TotalCPUs=2 "
    "TotalNodes=2 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED "
    "TRES=cpu=2,mem=1G,node=2,billing=2\n")
EMPTY_PARTITION = (
    "PartitionName=sgbatch-q3 AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=NO QoS=N/A "
    "DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED MaxTime=UNLIMITED "
    "MinNodes=1 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=(null) PriorityJobFactor=1 PriorityTier=1 RootOnly=NO ReqResv=NO "
    "OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP TotalCPUs=0 TotalNodes=0 SelectTypeParameters=NONE "
    "JobDefaults=(null) DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED TRES=(null)\n")


def show(name):
    return ["scontrol", "-o", "-F", "show", "node", name]


def squeue(name):
    return ["squeue", "-h", "-w", name, "-t", "CF,R,S,CG,SO", "-o", "%i"]


def backend(steps, clock=None):
    clock = clock or FakeClock()
    runner = Transcript(steps)
    return SlurmBackend(runner, clock=clock, sleep=clock.sleep, poll_interval=2), runner


# ------------------------------------------------------------------------------------------ parsing


def test_future_drained_node():
    fields = parse_show_line(FUTURE_DRAINED)
    assert fields["Reason"] == "a b c [root@2026-11-24T01:58:27]"
    node = node_from_fields(fields)
    assert node.as_dict() == {
        "name": "sgbatch-p8", "cores": 1, "memory_mb": 512, "properties": ["lhcb"], "status": "drained",
        "unschedulable": True, "down": False, "registered": False, "jobs": [], "note": "a b c",
        "address": "127.0.0.1", "raw_state": "FUTURE+DRAIN+DYNAMIC_NORM"}


def test_registered_node_with_os_field_and_no_reason():
    fields = parse_show_line(REGISTERED_IDLE)
    assert fields["OS"] == "Linux 6.18.44-fc-v657 #1 SMP PREEMPT_DYNAMIC @0"
    assert fields["RealMemory"] == "512" and fields["CfgTRES"] == "cpu=1,mem=512M,billing=1"
    node = node_from_fields(fields, jobs=["7"])
    assert (node.status, node.address, node.note, node.registered) == ("online", None, None, True)


def test_not_responding_is_down_and_draining_has_its_reason():
    assert node_from_fields(parse_show_line(NOT_RESPONDING)).status == "down"
    node = node_from_fields(parse_show_line(DRAINING), jobs=["7"])
    assert node.status == "draining" and node.note == "skygrid test"


# ------------------------------------------------------------------------------------------ commands


def test_unknown_node_is_none_and_future_node_skips_squeue():
    slurm, runner = backend([
        (show("sgbatch-x"), 1, "Node sgbatch-x not found\n"),
        (show("sgbatch-p8"), 0, FUTURE_DRAINED),
        (show("sgbatch-proto5"), 0, REGISTERED_IDLE),
        (squeue("sgbatch-proto5"), 0, "7\n8\n"),
    ])
    assert slurm.node("sgbatch-x") is None
    assert slurm.node("sgbatch-p8").jobs == []
    assert slurm.node("sgbatch-proto5").jobs == ["7", "8"]
    runner.assert_done()


def test_squeue_race_with_a_deleted_node_means_no_jobs():
    slurm, runner = backend([
        (show("sgbatch-proto5"), 0, REGISTERED_IDLE),
        (squeue("sgbatch-proto5"), 1, "", "squeue: error: Invalid node name sgbatch-proto5\n"),
    ])
    assert slurm.node("sgbatch-proto5").jobs == []


def test_add_node_command():
    slurm, runner = backend([(["scontrol", "create", "nodename=sgbatch-a", "cpus=4", "realmemory=8000", "feature=atlas,vm",
                               "nodeaddr=10.20.0.17", "state=future"],)])
    slurm.add_node("sgbatch-a", 4, 8000, ["atlas", "vm"], "10.20.0.17")
    runner.assert_done()


def test_online_undrains_future_nodes_and_resumes_registered_ones():
    slurm, runner = backend([
        (show("sgbatch-p8"), 0, FUTURE_DRAINED),
        (["scontrol", "update", "nodename=sgbatch-p8", "state=undrain"],),
        (show("sgbatch-proto5"), 0, DRAINING),
        (["scontrol", "update", "nodename=sgbatch-proto5", "state=resume"],),
    ])
    slurm.online("sgbatch-p8")
    slurm.online("sgbatch-proto5")
    runner.assert_done()


def test_drain_note_and_features_commands():
    slurm, runner = backend([
        (["scontrol", "update", "nodename=n1", "state=drain", "reason=VM shutting down"],),
        (["scontrol", "update", "nodename=n1", "reason=other"],),
        (["scontrol", "update", "nodename=n1", "availablefeatures=atlas,vm", "activefeatures=atlas,vm"],),
    ])
    slurm.drain("n1", "VM shutting down")
    slurm.set_note("n1", "other")
    slurm.set_properties("n1", ["atlas", "vm"])
    runner.assert_done()


def test_remove_busy_node_explains():
    slurm, runner = backend([(["scontrol", "delete", "nodename=n1"], 1, "",
                              "scontrol: error: failed to delete nodes n1\ndelete_node nodename=n1: Requested nodes are busy\n")])
    with pytest.raises(FabricError) as info:
        slurm.remove("n1")
    assert info.value.field == "force" and "runs jobs" in str(info.value)


def test_partition_with_nodeset():
    slurm, runner = backend([
        (["scontrol", "-o", "show", "partition", "sgbatch-q1"], 0, PARTITION),
        (["scontrol", "show", "hostnames", "sgbatch-p[9-10]"], 0, "sgbatch-p9\nsgbatch-p10\n"),
    ])
    queue = slurm.queue("sgbatch-q1")
    assert queue.as_dict() == {"name": "sgbatch-q1", "property": None, "groups": ["root"], "accounts": [], "enabled": True,
                               "started": True, "nodes": ["sgbatch-p10", "sgbatch-p9"], "nodeset": "ns_atlas"}


def test_empty_partition_and_unknown_partition():
    slurm, runner = backend([
        (["scontrol", "-o", "show", "partition", "sgbatch-q3"], 0, EMPTY_PARTITION),
        (["scontrol", "-o", "show", "partition", "nope"], 1, "Partition nope not found\n"),
    ])
    assert slurm.queue("sgbatch-q3").nodes == []
    assert slurm.queue("nope") is None
    runner.assert_done()


# ------------------------------------------------------------------------------------------ through manage


def test_size_of_registered_node_cannot_change():
    slurm, runner = backend([(show("sgbatch-proto5"), 0, REGISTERED_IDLE), (squeue("sgbatch-proto5"), 0, "")])
    with pytest.raises(FabricError) as info:
        ensure_node(slurm, node_spec(dict(name="sgbatch-proto5", cores=2)), Reconciler())
    assert info.value.field == "cores" and "registered" in str(info.value)
    runner.assert_done()


def test_future_node_is_recreated_with_its_drain():
    slurm, runner = backend([
        (show("sgbatch-p8"), 0, FUTURE_DRAINED),
        (["scontrol", "delete", "nodename=sgbatch-p8"],),
        (["scontrol", "create", "nodename=sgbatch-p8", "cpus=2", "realmemory=1024", "feature=lhcb", "nodeaddr=127.0.0.1",
          "state=future"],),
        (["scontrol", "update", "nodename=sgbatch-p8", "state=drain", "reason=a b c"],),
        (show("sgbatch-p8"), 0, FUTURE_DRAINED.replace("CPUTot=1", "CPUTot=2").replace("RealMemory=512", "RealMemory=1024")),
    ])
    reconciler = Reconciler()
    result = ensure_node(slurm, node_spec(dict(name="sgbatch-p8", cores=2, memory_mb=1024)), reconciler)
    runner.assert_done()
    assert reconciler.actions == ["resize node sgbatch-p8 to 2 cores, 1024 MB"]
    assert result["node"]["cores"] == 2 and result["node"]["status"] == "drained"


def test_partition_by_feature_created_from_current_nodes():
    all_nodes = FUTURE_DRAINED.replace("AvailableFeatures=lhcb", "AvailableFeatures=atlas,vm") + REGISTERED_IDLE
    slurm, runner = backend([
        (["scontrol", "-o", "show", "partition", "atlas"], 1, "Partition atlas not found\n"),
        (["scontrol", "-o", "-F", "show", "node"], 0, all_nodes),  # expected nodes, for the diff
        (["scontrol", "-o", "-F", "show", "node"], 0, all_nodes),  # the create
        (["scontrol", "create", "partitionname=atlas", "nodes=sgbatch-p8,sgbatch-proto5", "allowgroups=atlas",
          "allowaccounts=ALL", "state=UP"],),
        (["scontrol", "-o", "show", "partition", "atlas"], 0,
         EMPTY_PARTITION.replace("sgbatch-q3", "atlas").replace("Nodes=(null)", "Nodes=sgbatch-p8,sgbatch-proto5")
         .replace("AllowGroups=ALL", "AllowGroups=atlas")),
        (["scontrol", "show", "hostnames", "sgbatch-p8,sgbatch-proto5"], 0, "sgbatch-p8\nsgbatch-proto5\n"),
    ])
    reconciler = Reconciler()
    result = ensure_queue(slurm, queue_spec(dict(name="atlas", groups=["atlas"]), slurm), reconciler)
    runner.assert_done()
    assert result["queue"]["nodes"] == ["sgbatch-p8", "sgbatch-proto5"] and result["queue"]["groups"] == ["atlas"]


def test_partition_states_from_enabled_and_started():
    slurm = SlurmBackend(Transcript())
    words = {(e, s): slurm._state_word({"enabled": e, "started": s}) for e in (True, False) for s in (True, False)}
    assert words == {(True, True): "UP", (True, False): "DOWN", (False, True): "DRAIN", (False, False): "INACTIVE"}
