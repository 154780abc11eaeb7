"""skygrid.fabric.vo_demand as a real module process, live against the Slurm test bed and against the TORQUE 6.1.3
test bed (scripts/torque-testbed.sh; see torque_live.py).

Slurm, live: the test bed may be in use by a converted site (VO VMs as nodes ``<host>-<vo>-<n>``), so this test
never queues a job any of those could run. It starts its own dynamic node (a second slurmd, ``slurmd -Z -N
sgdemand-dyn1``, with a feature no one else has), runs one job on it, queues more behind it (Resources), holds
one, and queues one in a partition of its own over that node; everything is named ``sgdemand-*`` and removed
before and after. Its assertions look only at its own VOs and node, so other jobs on the test bed do no harm."""

from __future__ import annotations


import pytest

import torque_live
from conftest import sh, slurm_node as show_node, stop_test_slurmds, wait_for
from modrun import run_module
from torque_live import torque

__all__ = ["torque"]  # the fixture, used by name

PREFIX = "sgdemand-"
NODE = PREFIX + "dyn1"
PARTITION = PREFIX + "p"
FEATURE = "sgdemand_a"
LIVE_VOS = {"sgd_a": {"features": [FEATURE], "partition": []}, "sgd_p": {"partition": PARTITION, "features": []}}


def ok(result):
    assert result["rc"] == 0 and not result.failed, result.get("msg")
    return result


# ------------------------------------------------------------------------------------------ Slurm, live


def our_jobs():
    return [line.split()[0] for line in sh("squeue", "-h", "-a", "-o", "%i %j", check=False).stdout.splitlines()
            if len(line.split()) == 2 and line.split()[1].startswith(PREFIX)]


def cleanup():
    # Jobs first, and wait until they are gone: a slurmd stopped under a job leaves it COMPLETING.
    for job in our_jobs():
        sh("scancel", job, check=False)
    wait_for(lambda: not our_jobs(), 60, "our jobs to end", interval=0.5)
    if "PartitionName=%s " % PARTITION in sh("scontrol", "-o", "show", "partition", PARTITION, check=False).stdout:
        sh("scontrol", "delete", "partitionname=%s" % PARTITION, check=False)
    stop_test_slurmds(PREFIX)
    if show_node(NODE):
        wait_for(lambda: sh("scontrol", "delete", "nodename=%s" % NODE, check=False).returncode == 0
                 or not show_node(NODE), 60, "removing node %s" % NODE, interval=1)


@pytest.fixture(scope="module")
def slurm(slurm_testbed):
    cleanup()
    yield
    cleanup()


def submit(*args):
    return sh("sbatch", "--parsable", "-o", "/dev/null", *args).stdout.strip().split(";")[0]


def job_field(job, field):
    for item in sh("scontrol", "-o", "show", "job", job, check=False).stdout.split():
        if item.startswith(field + "="):
            return item.split("=", 1)[1]
    return None


def demand(check=False, **args):
    return ok(run_module("vo_demand", dict(dict(backend="slurm", vos=LIVE_VOS), **args), check=check))


def test_slurm_live(slurm):
    # Our own node: 1 CPU, a feature only our jobs ask for, a high weight so other jobs prefer other nodes.
    sh("/usr/sbin/slurmd", "-Z", "-N", NODE, "--conf", "CPUs=1 RealMemory=256 Weight=60000 Feature=%s" % FEATURE)
    wait_for(lambda: "State=IDLE" in (show_node(NODE) or ""), 30, "slurmd %s to register" % NODE)
    sh("scontrol", "create", "partitionname=%s" % PARTITION, "nodes=%s" % NODE, "state=UP")

    running = submit("-J", PREFIX + "run", "-C", FEATURE, "--wrap", "sleep 120")
    wait_for(lambda: job_field(running, "JobState") == "RUNNING", 30, "job %s to run" % running)
    waiting = [submit("-J", PREFIX + "wait%d" % i, "-C", FEATURE, "--wrap", "sleep 1") for i in (1, 2)]
    held = submit("-J", PREFIX + "held", "--hold", "-C", FEATURE, "-c", "1", "--wrap", "sleep 1")
    in_partition = submit("-J", PREFIX + "part", "-p", PARTITION, "--wrap", "sleep 1")
    # They wait for the one node: Resources, or for the partition job "Nodes required for job are DOWN, ...".
    wait_for(lambda: all(job_field(job, "JobState") == "PENDING" and job_field(job, "Reason") not in (None, "None")
                         for job in waiting + [in_partition]), 30, "the jobs behind the running one to wait")

    result = demand(details=True)
    assert result["changed"] is False
    assert result["demand"]["sgd_a"] == {"queued": 2, "queued_cores": 2, "running": 1, "running_cores": 1,
                                         "held": 1, "held_cores": 1}
    assert result["demand"]["sgd_p"] == {"queued": 1, "queued_cores": 1, "running": 0, "running_cores": 0,
                                         "held": 0, "held_cores": 0}
    assert result["busy_nodes"][NODE] == [running]
    assert result["mapping"] == {"sgd_a": {"queues": [], "features": [FEATURE]}, "sgd_p": {"queues": [PARTITION], "features": []}}
    jobs = {job["id"]: job for job in result["jobs"]}
    assert jobs[held]["reason"] == "JobHeldUser" and jobs[held]["kind"] == "held"
    assert jobs[running]["nodes"] == [NODE] and jobs[in_partition]["queues"] == [PARTITION]

    checked = demand(check=True)
    assert checked["demand"] == result["demand"] and checked["changed"] is False
    assert demand(count_held=True)["demand"]["sgd_a"]["queued"] == 3
    by_feature = demand(match_by="feature")
    assert by_feature["demand"]["sgd_p"]["queued"] == 0  # the partition job asks for no feature

    # The fabric_vos form: VO names as features (through batch.properties), the shared "vm" ignored.
    fabric = demand(vos={"sgdemand_a": {"share": 50, "batch": {"properties": [FEATURE, "vm"]}},
                         "other": {"share": 50, "batch": {"properties": ["vm"]}}})
    assert fabric["demand"]["sgdemand_a"]["queued"] == 2 and fabric["mapping"]["other"]["features"] == []


def test_slurm_command_missing(tmp_path):
    result = run_module("vo_demand", {"backend": "slurm"}, env={"PATH": str(tmp_path)})
    assert result.failed and "squeue: command not found" in result["msg"]


# ------------------------------------------------------------------------------------------ Torque, live

TORQUE_VOS = {"sgtrq_a": {"queue": "sgtrq-atlas", "properties": ["atlas"]},
              "sgtrq_l": {"queue": "sgtrq-lhcb", "properties": ["lhcb"]}}


def torque_demand(check=False, **args):
    return ok(run_module("vo_demand", dict(dict(backend="torque", vos=TORQUE_VOS, bin_dir=torque_live.BIN), **args),
                         check=check))


def test_torque_live(torque):
    """TORQUE 6.1.3 (see torque_live.py): the VM node sgtrq-vm1 (np=1, property atlas) runs one job of the atlas
    queue, a second waits behind it, a third is held; the lhcb queue routes to property lhcb, which no node has."""
    tq = torque_live.tq
    tq("qmgr", "-c", "create node %s np=1" % torque_live.VM)
    tq("qmgr", "-c", "set node %s properties += atlas" % torque_live.VM)
    for name, prop in (("sgtrq-atlas", "atlas"), ("sgtrq-lhcb", "lhcb")):
        for directive in ("create queue %s queue_type = Execution", "set queue %%s resources_default.neednodes = 1:%s" % prop,
                          "set queue %s enabled = True", "set queue %s started = True"):
            tq("qmgr", "-c", directive % name)
    wait_for(lambda: torque_live.node_field(torque_live.VM, "state") == "free", 120, "the VM node to report in")
    running = torque_live.wait_running(torque_live.submit("sgtrq-atlas", 120))
    waiting = torque_live.submit("sgtrq-atlas", 1)
    held = torque_live.submit("sgtrq-atlas", 1, "-h")
    other = torque_live.submit("sgtrq-lhcb", 1)
    # a user's own -l nodes= replaces the queue's neednodes: this one runs on this host's node, no lhcb node needed
    escaped = torque_live.wait_running(torque_live.submit("sgtrq-lhcb", 30, "-l", "nodes=1:ppn=1"), node=torque_live.HOST)
    states = {waiting: "Q", held: "H", other: "Q"}
    wait_for(lambda: all(torque_live.job_field(job, "job_state") == state for job, state in states.items()), 30,
             "the jobs to wait or be held")

    result = torque_demand(details=True)
    assert result["changed"] is False
    assert result["demand"]["sgtrq_a"] == {"queued": 1, "queued_cores": 1, "running": 1, "running_cores": 1,
                                           "held": 1, "held_cores": 1}
    assert result["demand"]["sgtrq_l"] == {"queued": 1, "queued_cores": 1, "running": 1, "running_cores": 1,
                                           "held": 0, "held_cores": 0}
    assert result["busy_nodes"][torque_live.VM] == [running]
    jobs = {job["id"]: job for job in result["jobs"]}
    assert jobs[running]["nodes"] == [torque_live.VM] and jobs[held]["kind"] == "held"
    assert jobs[other]["features"] == ["lhcb"] and jobs[other]["queues"] == ["sgtrq-lhcb"]
    assert jobs[escaped]["features"] == [] and jobs[escaped]["nodes"] == [torque_live.HOST]  # matched by its queue

    assert torque_demand(check=True)["demand"] == result["demand"]
    assert torque_demand(count_held=True)["demand"]["sgtrq_a"]["queued"] == 2
    by_property = torque_demand(match_by="feature")
    assert by_property["demand"]["sgtrq_a"]["running"] == 1 and by_property["demand"]["sgtrq_l"]["running"] == 0


def test_torque_errors(tmp_path):
    missing = run_module("vo_demand", {"backend": "torque"}, env={"PATH": str(tmp_path)})
    assert missing.failed and "qstat: command not found" in missing["msg"]
    bad = run_module("vo_demand", {"backend": "torque", "vos": {"atlas": {"queue": ["bad queue"]}}},
                     env={"PATH": str(tmp_path)})
    assert bad.failed and bad["field"] == "vos.atlas.queue"
