"""skygrid.fabric.vo_demand as a real module process: live against the Slurm test bed, and with Torque against a
``qstat`` double first on PATH that plays back tests/fixtures/torque/qstat/ (no registry ships Torque).

Slurm, live: the test bed may be in use by a converted site (VO VMs as nodes ``<host>-<vo>-<n>``), so this test
never queues a job any of those could run. It starts its own dynamic node (a second slurmd, ``slurmd -Z -N
sgdemand-dyn1``, with a feature no one else has), runs one job on it, queues more behind it (Resources), holds
one, and queues one in a partition of its own over that node; everything is named ``sgdemand-*`` and removed
before and after. Its assertions look only at its own VOs and node, so other jobs on the test bed do no harm."""

from __future__ import annotations

import json
import os
import sys

import pytest

from conftest import sh, slurm_node as show_node, stop_test_slurmds, wait_for
from modrun import run_module

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QSTAT = os.path.join(ROOT, "tests", "fixtures", "torque", "qstat")
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


# ------------------------------------------------------------------------------------------ Torque, double

QSTAT_DOUBLE = """#!%s
import json, os, sys
with open(os.environ["QSTAT_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
fixture = os.environ.get("QSTAT_FIXTURE")
if fixture:
    with open(fixture) as handle:
        sys.stdout.write(handle.read())
error = os.environ.get("QSTAT_STDERR")
if error:
    with open(error) as handle:
        sys.stderr.write(handle.read())
sys.exit(int(os.environ.get("QSTAT_RC", "0")))
"""


class Qstat:
    """``qstat`` first on PATH (or in ``bin_dir``): prints a fixture, logs its arguments."""

    def __init__(self, tmp_path):
        self.bin = tmp_path / "torque" / "bin"
        self.bin.mkdir(parents=True)
        script = self.bin / "qstat"
        script.write_text(QSTAT_DOUBLE % sys.executable)
        script.chmod(0o755)
        self.log = tmp_path / "qstat.log"

    def run(self, fixture=None, stderr=None, rc=0, on_path=True, check=False, **args):
        env = {"QSTAT_LOG": str(self.log), "QSTAT_RC": str(rc),
               "PATH": os.pathsep.join(([str(self.bin)] if on_path else []) + [os.path.dirname(sys.executable), "/usr/bin", "/bin"])}
        if fixture:
            env["QSTAT_FIXTURE"] = os.path.join(QSTAT, fixture)
        if stderr:
            env["QSTAT_STDERR"] = os.path.join(QSTAT, stderr)
        return run_module("vo_demand", dict(args, backend="torque"), check=check, env=env)

    def calls(self):
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []


@pytest.fixture
def qstat(tmp_path):
    return Qstat(tmp_path)


def test_torque_site(qstat):
    vos = {"atlas": {"batch": {"properties": ["atlas", "vm"], "queue": "atlas"}},
           "lhcb": {"batch": {"properties": ["lhcb", "vm"], "queue": "lhcb"}}}
    result = ok(qstat.run("qstat_fx_site.xml", vos=vos))
    assert qstat.calls() == [["-f", "-x"]]
    assert result["changed"] is False
    assert result["demand"]["atlas"] == {"queued": 2, "queued_cores": 10, "running": 2, "running_cores": 3,
                                         "held": 0, "held_cores": 0}
    assert result["demand"]["lhcb"]["queued"] == 12 and result["demand"]["lhcb"]["held"] == 2
    assert sorted(result["busy_nodes"]) == ["wn004.example.org", "wn042-atlas-1", "wn042-atlas-2", "wn042-atlas-3",
                                            "wn042-lhcb-1", "wn042-lhcb-2"]
    checked = ok(qstat.run("qstat_fx_site.xml", vos=vos, check=True))
    assert checked["demand"] == result["demand"]


def test_torque_quiet_server_bin_dir_and_errors(qstat):
    quiet = ok(qstat.run("qstat_fx_no_jobs.txt", vos={"atlas": {}}, on_path=False, bin_dir=str(qstat.bin)))
    assert quiet["demand"] == {"atlas": {"queued": 0, "queued_cores": 0, "running": 0, "running_cores": 0,
                                         "held": 0, "held_cores": 0}}
    two = ok(qstat.run("qstat_fx_two_waiting.xml", vos={"lhcb": {}}, count_held=True))
    assert two["demand"]["lhcb"]["queued"] == 2 and two["demand"]["lhcb"]["queued_cores"] == 5
    down = qstat.run(stderr="qstat_cannot_connect.stderr", rc=1, vos={"atlas": {}})
    assert down.failed and "cannot connect to server torque.example.org" in down["msg"] and down["rc"] != 0
    missing = qstat.run("qstat_fx_site.xml", on_path=False)
    assert missing.failed and "qstat: command not found" in missing["msg"]
    bad = qstat.run("qstat_fx_site.xml", vos={"atlas": {"queue": ["bad queue"]}})
    assert bad.failed and bad["field"] == "vos.atlas.queue"
