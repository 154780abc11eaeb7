"""skygrid.fabric.batch_node and batch_queue with the slurm backend, live, as real module processes against the
test bed's Slurm 22.05 (scripts/slurm-testbed.sh: munged, slurmctld and this host's slurmd on loopback).

Dynamic nodes for real: nodes made with ``scontrol create ... state=future`` and a second slurmd on this host
(``slurmd -Z -N NAME``, its own port, spool and pid file) that registers one, runs a real job
(``sbatch --wrap 'sleep N'``) while the module drains the node and waits for it, and is resumed and removed.
Every node and partition the tests make is named ``sgbatch-*`` and removed before and after."""

from __future__ import annotations

import glob
import os
import subprocess
import time

import pytest

from conftest import SLURM_TESTBED as TESTBED, sh, slurm_node as show_node, stop_test_slurmds, wait_for
from modrun import run_module

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLURM_DIR = os.environ.get("SKYGRID_SLURM_DIR", "/var/lib/skygrid-test/slurm")
PREFIX = "sgbatch-"
DYN = PREFIX + "dyn1"


VO_CONF_DIR = "/etc/slurm/vo"  # the test bed's per-VO clusters (atlas, lhcb), each with its own slurmctld


def vo_env(vo):
    return {"SLURM_CONF": "%s/%s/slurm.conf" % (VO_CONF_DIR, vo)}


def show_node_in(env, name):
    """``scontrol show node`` of ``name`` in the cluster ``env`` reaches, or None when it does not know it."""
    proc = subprocess.run(["scontrol", "-o", "-F", "show", "node", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, env=dict(os.environ, **env), check=False)
    return proc.stdout if proc.returncode == 0 else None


def cleanup_vo_clusters():
    for vo in ("atlas", "lhcb"):
        env = dict(os.environ, **vo_env(vo))
        out = subprocess.run(["scontrol", "-o", "-F", "show", "node"], stdout=subprocess.PIPE, universal_newlines=True,
                             env=env, check=False).stdout
        for line in out.splitlines():
            name = line.split()[0].split("=", 1)[1] if line.startswith("NodeName=") else ""
            if name.startswith(PREFIX):
                subprocess.run(["scontrol", "delete", "nodename=%s" % name], env=env, check=False)


def cleanup():
    cleanup_vo_clusters()
    stop_test_slurmds(PREFIX)
    jobs = sh("squeue", "-h", "-o", "%i %N", check=False).stdout.split("\n")
    for line in jobs:
        parts = line.split()
        if len(parts) == 2 and parts[1].startswith(PREFIX):
            sh("scancel", parts[0], check=False)
    for line in sh("scontrol", "-o", "show", "partition", check=False).stdout.splitlines():
        name = line.split()[0].split("=", 1)[1] if line.startswith("PartitionName=") else ""
        if name.startswith(PREFIX):
            sh("scontrol", "delete", "partitionname=%s" % name, check=False)
    for line in sh("scontrol", "-o", "-F", "show", "node", check=False).stdout.splitlines():
        name = line.split()[0].split("=", 1)[1] if line.startswith("NodeName=") else ""
        if name.startswith(PREFIX):
            wait_for(lambda name=name: sh("scontrol", "delete", "nodename=%s" % name, check=False).returncode == 0
                     or "not found" in sh("scontrol", "show", "node", name, check=False).stdout, 30, "removing %s" % name)


@pytest.fixture(scope="module")
def slurm(slurm_testbed):
    cleanup()
    yield
    cleanup()


def node(check=False, diff=False, **args):
    return run_module("batch_node", dict(args, backend="slurm", poll_interval=0.5), check=check, diff=diff)


def queue(check=False, diff=False, **args):
    return run_module("batch_queue", dict(args, backend="slurm"), check=check, diff=diff)


def ok(result):
    assert result["rc"] == 0 and not result.failed, result.get("msg")
    return result


def start_slurmd(name, conf):
    """A second slurmd on this host as dynamic node ``name``: SlurmdPort (6819) is free for it, and the pid
    file, spool and log carry its name (%n in the test bed's slurm.conf)."""
    sh("/usr/sbin/slurmd", "-Z", "-N", name, "--conf", conf)
    wait_for(lambda: (show_node(name) or "").find("State=IDLE") >= 0, 30, "slurmd %s to register" % name)


def job_state(job):
    out = sh("scontrol", "-o", "show", "job", job, check=False).stdout
    for field in out.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return None


def submit(node_name, seconds):
    job = sh("sbatch", "--parsable", "-w", node_name, "-o", "/dev/null", "--wrap", "sleep %d" % seconds).stdout.strip()
    wait_for(lambda: job_state(job) == "RUNNING", 30, "job %s to run on %s" % (job, node_name))
    return job


def test_testbed_is_idempotent_and_keeps_the_munge_key_private(slurm):
    pids = sorted(glob.glob(os.path.join(SLURM_DIR, "run", "*.pid")))
    before = {path: open(path).read() for path in pids}
    out = sh("bash", TESTBED, "start").stdout
    assert "starting" not in out and "wrote" not in out
    assert {path: open(path).read() for path in pids} == before
    mode = os.stat("/etc/munge/munge.key").st_mode & 0o777
    assert mode == 0o400
    assert "munge.key" not in sh("bash", TESTBED, "status").stdout


def test_future_node_lifecycle(slurm):
    name = PREFIX + "f1"
    args = dict(name=name, state="present", cores=1, memory_mb=512, properties=["atlas", "vm"], address="127.0.0.1")
    checked = ok(node(check=True, diff=True, **args))
    assert checked["actions"] == ["add node %s (1 cores, 512 MB, properties atlas,vm)" % name]
    assert show_node(name) is None

    created = ok(node(diff=True, **args))
    assert created["node"]["status"] == "future" and created["node"]["properties"] == ["atlas", "vm"]
    assert "State=FUTURE" in show_node(name)
    again = ok(node(**args))
    assert not again["changed"] and again["actions"] == []

    changed = ok(node(name=name, properties=["lhcb", "vm"], cores=2, diff=True))
    assert changed["actions"] == ["resize node %s to 2 cores" % name, "set the properties of node %s to lhcb,vm" % name]
    assert changed["node"]["cores"] == 2 and changed["node"]["properties"] == ["lhcb", "vm"]
    assert changed["node"]["address"] == "127.0.0.1"

    offline = ok(node(name=name, state="offline", note="image revoked by the VO"))
    assert offline["node"]["status"] == "drained" and offline["node"]["note"] == "image revoked by the VO"
    assert "Reason=image revoked by the VO" in show_node(name)
    online = ok(node(name=name, state="online"))
    # undrain, not resume: the node stays FUTURE until a slurmd registers it
    assert online["node"]["status"] == "future" and "State=FUTURE+DYNAMIC_NORM" in show_node(name)

    removed = ok(node(name=name, state="absent", diff=True))
    assert removed["changed"] and removed["diff"]["before"][name]["cores"] == 2 and show_node(name) is None
    assert not ok(node(name=name, state="absent"))["changed"]


def test_a_nodes_list_in_one_call(slurm):
    names = [PREFIX + "list1", PREFIX + "list2"]
    nodes = [{"name": names[0], "cores": 1, "properties": ["atlas", "vm"], "address": "127.0.0.1"},
             {"name": names[1], "cores": 1, "properties": ["lhcb", "vm"], "address": "127.0.0.1"}]
    checked = ok(node(check=True, state="present", nodes=nodes))
    assert len(checked["actions"]) == 2 and all(show_node(name) is None for name in names)
    created = ok(node(state="present", nodes=nodes, diff=True))
    assert [item["node"]["status"] for item in created["nodes"]] == ["future", "future"]
    assert sorted(created["diff"]["after"]) == names
    assert "AvailableFeatures=lhcb,vm" in show_node(names[1])
    again = ok(node(state="present", nodes=nodes))
    assert not again["changed"] and again["actions"] == []
    bad = node(state="present", nodes=[nodes[0], dict(nodes[1], name="bad name")])
    assert bad.failed and bad["field"] == "nodes[1].name"
    gone = ok(node(state="absent", nodes=[{"name": name} for name in names]))
    assert gone["changed"] and all(show_node(name) is None for name in names)


def test_a_nodes_list_across_the_vo_clusters_in_one_call(slurm):
    """One run registers nodes in the site's cluster and in each VO's own (their environment), reports them in
    the order given, and a second run changes nothing."""
    atlas, site, lhcb = PREFIX + "vo-atlas", PREFIX + "vo-site", PREFIX + "vo-lhcb"
    envs = {atlas: vo_env("atlas"), site: {}, lhcb: vo_env("lhcb")}
    nodes = [{"name": atlas, "cores": 1, "properties": ["atlas", "vm"], "address": "127.0.0.1", "environment": envs[atlas]},
             {"name": site, "cores": 1, "properties": ["site", "vm"], "address": "127.0.0.1"},
             {"name": lhcb, "cores": 1, "properties": ["lhcb", "vm"], "address": "127.0.0.1", "environment": envs[lhcb]}]
    checked = ok(node(check=True, diff=True, state="present", nodes=nodes))
    assert len(checked["actions"]) == 3 and all(show_node_in(env, name) is None for name, env in envs.items())
    created = ok(node(state="present", nodes=nodes, diff=True))
    assert [item["name"] for item in created["nodes"]] == [atlas, site, lhcb]
    assert [item["node"]["status"] for item in created["nodes"]] == ["future"] * 3
    for name, env in envs.items():
        assert "State=FUTURE" in show_node_in(env, name)
        for other, other_env in envs.items():
            if other_env != env:
                assert show_node_in(other_env, name) is None, "%s leaked into the cluster of %s" % (name, other)
    assert "AvailableFeatures=lhcb,vm" in show_node_in(envs[lhcb], lhcb)
    again = ok(node(state="present", nodes=nodes))
    assert not again["changed"] and again["actions"] == []
    gone = ok(node(state="absent", nodes=[{"name": item["name"], "environment": item.get("environment")} for item in nodes]))
    assert gone["changed"] and all(show_node_in(env, name) is None for name, env in envs.items())


def test_registered_vm_node_drain_waits_for_a_real_job(slurm):
    ok(node(name=DYN, state="online", cores=1, memory_mb=512, properties=["atlas", "vm"], address="127.0.0.1"))
    start_slurmd(DYN, "CPUs=1 RealMemory=512 Feature=atlas,vm")
    registered = ok(node(name=DYN, state="online", cores=1, memory_mb=512, properties=["atlas", "vm"], address="127.0.0.1"))
    assert not registered["changed"] and registered["node"]["status"] == "online" and registered["node"]["registered"]

    refused = node(name=DYN, cores=2)
    assert refused.failed and refused["field"] == "cores" and "registered" in refused["msg"]

    job = submit(DYN, 5)
    running = ok(node(name=DYN))
    assert running["node"]["jobs"] == [job]
    started = time.monotonic()
    drained = ok(node(name=DYN, state="drained", note="VM going away", timeout=60))
    assert drained["waited"] and drained["node"]["status"] == "drained" and drained["node"]["jobs"] == []
    assert drained["actions"] == ["take node %s offline (VM going away)" % DYN]
    assert time.monotonic() - started > 1
    assert job_state(job) == "COMPLETED"
    assert not ok(node(name=DYN, state="drained", note="VM going away"))["changed"]

    resumed = ok(node(name=DYN, state="online"))
    assert resumed["actions"] == ["put node %s back online" % DYN]
    wait_for(lambda: "State=IDLE+DYNAMIC_NORM " in (show_node(DYN) or ""), 20, "%s to be idle" % DYN)

    job = submit(DYN, 4)
    busy = node(name=DYN, state="absent", force=True)
    assert busy.failed and busy["field"] == "force" and "runs jobs" in busy["msg"]
    gone = ok(node(name=DYN, state="absent", note="VM stopping", timeout=60))
    assert gone["waited"] and gone["actions"] == ["drain node %s (VM stopping) before removing it" % DYN, "remove node %s" % DYN]
    assert show_node(DYN) is None and job_state(job) == "COMPLETED"
    stop_test_slurmds(PREFIX)


def test_self_registered_node_matches_without_changes(slurm):
    name = PREFIX + "self1"
    start_slurmd(name, "CPUs=1 RealMemory=512 Feature=lhcb")
    same = ok(node(name=name, state="online", cores=1, memory_mb=512, properties=["lhcb"]))
    assert not same["changed"] and same["node"]["registered"]
    more = ok(node(name=name, properties=["lhcb", "vm"]))
    assert more["actions"] == ["set the properties of node %s to lhcb,vm" % name]
    assert "AvailableFeatures=lhcb,vm" in show_node(name)
    stop_test_slurmds(PREFIX)
    ok(node(name=name, state="absent"))


def test_partitions(slurm):
    for index, feature in ((1, "atlas"), (2, "atlas"), (3, "lhcb")):
        ok(node(name="%sp%d" % (PREFIX, index), properties=[feature], address="127.0.0.1"))
    name = PREFIX + "atlas"
    checked = ok(queue(check=True, diff=True, name=name, property="atlas", groups=["root"]))
    assert checked["actions"] == ["create partition %s for atlas" % name]
    assert checked["diff"]["after"][name]["nodes"] == [PREFIX + "p1", PREFIX + "p2"]

    created = ok(queue(name=name, property="atlas", groups=["root"]))
    assert created["queue"]["nodes"] == [PREFIX + "p1", PREFIX + "p2"] and created["queue"]["groups"] == ["root"]
    assert not ok(queue(name=name, property="atlas", groups=["root"]))["changed"]

    updated = ok(queue(name=name, property="atlas", accounts=["atlas"], enabled=True, started=False))
    assert updated["actions"] == ["update partition %s (accounts, groups, started)" % name]
    assert updated["queue"]["accounts"] == ["atlas"] and updated["queue"]["groups"] == []
    assert "State=DOWN" in sh("scontrol", "-o", "show", "partition", name).stdout

    # over the test bed's NodeSet vo_lhcb: a node that gets the feature later joins by itself
    lhcb = PREFIX + "lhcb"
    ok(queue(name=lhcb, nodeset="vo_lhcb", groups=["root"]))
    assert ok(queue(name=lhcb, nodeset="vo_lhcb", groups=["root"]))["changed"] is False
    ok(node(name=PREFIX + "p4", properties=["lhcb"], address="127.0.0.1"))
    joined = ok(queue(name=lhcb, nodeset="vo_lhcb", groups=["root"]))
    assert not joined["changed"] and joined["queue"]["nodes"] == [PREFIX + "p3", PREFIX + "p4"]
    assert joined["queue"]["nodeset"] == "vo_lhcb"

    for partition in (name, lhcb):
        assert ok(queue(name=partition, state="absent"))["changed"]
        assert not ok(queue(name=partition, state="absent"))["changed"]
    for index in range(1, 5):
        ok(node(name="%sp%d" % (PREFIX, index), state="absent"))


def test_slurm_role_nodes_live(slurm, tmp_path):
    """The slurm role's node list, through ansible-playbook, against the live controller."""
    from test_batch_roles import playbook, recap_changed

    name = PREFIX + "role1"
    play = [{"hosts": "localhost", "gather_facts": False, "roles": [{"role": "skygrid.fabric.slurm", "vars": {
        "slurm_manage_conf": False,
        "slurm_nodes": [{"name": name, "cores": 1, "properties": ["atlas", "vm"], "address": "127.0.0.1"}]}}]}]
    rc, out = playbook(tmp_path, play)
    assert rc == 0 and recap_changed(out) == 1, out
    assert "AvailableFeatures=atlas,vm" in show_node(name) and "State=FUTURE" in show_node(name)
    rc, out = playbook(tmp_path, play)
    assert rc == 0 and recap_changed(out) == 0, out
    ok(node(name=name, state="absent"))
