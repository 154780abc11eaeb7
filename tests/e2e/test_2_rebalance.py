"""Rebalancing on the site in a box (inventories/local: this host, two 1-vCPU slot VMs, Slurm), live.

The tests share the converted site and run in this order, each leaving it as the next expects:

1. preemption: with both VMs busy nothing moves; with ``fabric_allow_preemption`` (and a site whose shares
   favour atlas, lhcb preemptible) the busy lhcb VM's job is requeued and the VM becomes an atlas one -
   the site is then all atlas;
2. the issue's scenario: all VMs atlas, one of them busy, 6 lhcb jobs queued: ``--check`` prints the plan
   and changes nothing; the run converts exactly the planned (idle) VMs to lhcb, the busy VM is not
   touched, the lhcb jobs run on the new VMs, and a second run right after changes nothing;
3. the site is left as convert_worker_nodes makes it: a convert run afterwards changes nothing.
   (In 2, a convert run on the all-atlas site changes nothing either: it keeps a rebalanced host's VMs.)

Jobs are named ``sgrebal-*`` and cancelled before and after. Each VO's jobs go to its own cluster
(docs/SECURITY.md), with no constraint and not held: a cluster whose VO has no VM yet refuses a constraint
at submission ("Invalid feature specification") and refuses to release a held job ("Requested partition
configuration not available now"), but keeps a plain job waiting (PartitionConfig, which vo_demand counts
as queued) until a VM of the VO joins. A job is named by (VO, id): each cluster counts its own.
Every job writes a line to the VM's serial console, so where it ran is read from the console log."""

from __future__ import annotations

import json
import os
import re
import time

import pytest
import yaml

from sitebox import ROOT, VOS, assert_unchanged, run_playbook, sh
from modrun import run_module

HOST = "localhost"
PREFIX = "sgrebal-"
# The tests change slots that were just changed: no cool-down or settling pause between their own runs.
FAST = ["-e", "fabric_rebalance_cooldown_s=0", "-e", "fabric_rebalance_settle_s=0"]


def slots():
    """This host's slot VMs by name (vm_info)."""
    result = run_module("vm_info", {})
    assert result["rc"] == 0, result.get("msg")
    return {vm["name"]: vm for vm in result["vms"] if vm["metadata"].get("slot_host") == HOST}


def vos_of(current):
    return sorted(vm["metadata"]["vo"] for vm in current.values())


def our_jobs():
    jobs = {}
    for vo in VOS:
        lines = sh("squeue", "-h", "-a", "-o", "%i %j %T %N", vo=vo).stdout.splitlines()
        jobs.update({(vo, parts[0]): parts[2:] for parts in (line.split() for line in lines)
                     if len(parts) >= 3 and parts[1].startswith(PREFIX)})
    return jobs


def cancel_jobs():
    for vo, job in our_jobs():
        sh("scancel", job, check=False, vo=vo)
    wait_for(lambda: not our_jobs(), 120, "our jobs to end")


def wait_for(predicate, timeout, what, interval=1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))


def submit(vo, name, seconds, *extra):
    """A job of ``vo`` in its cluster that writes where it runs to the VM's console (see above: never held;
    Slurm refuses to release a held job while the VO's cluster has no node). Returns (vo, job id)."""
    command = "echo SGREBAL-JOB $SLURM_JOB_ID ran on $(hostname) > /dev/ttyS0; sleep %d" % seconds
    job = sh("sbatch", "--parsable", "-J", PREFIX + name, "--chdir=/tmp",
             "--output=/dev/null", *extra, "--wrap", command, vo=vo).stdout.strip().splitlines()[-1].split(";")[0]
    return vo, job


def job_state(job):
    vo, job_id = job
    state = sh("squeue", "-h", "-j", job_id, "-o", "%T %N", check=False, vo=vo).stdout.split()
    if state and state[0] in ("slurm_load_jobs", "error:"):  # the job is gone (purged)
        return (None, None)
    return (state + [None, None])[:2] if state else (None, None)


def wait_running(job, node=None, timeout=300):
    return wait_for(lambda: job_state(job)[0] == "RUNNING" and (node is None or job_state(job)[1] == node),
                    timeout, "job %s to run%s" % (job, " on " + node if node else ""))


def console(name):
    path = "/var/log/libvirt/qemu/%s-console.log" % name
    if not os.path.exists(path):
        return ""
    with open(path, errors="replace") as handle:
        return handle.read()


def leases():
    """The owners of the site's IPAM leases (inventories/local: fabric_ipam_db)."""
    out = sh(os.path.join(ROOT, ".venv", "bin", "python"), "-c", (
        "import sqlite3,json; c=sqlite3.connect('/var/lib/skygrid/ipam.sqlite');"
        "print(json.dumps([r[0] for r in c.execute('select owner from leases')]))")).stdout
    return json.loads(out.strip().splitlines()[-1])


def rebalance(*args):
    rc, out = run_playbook("rebalance", *args)
    assert rc == 0, out[-5000:]
    return out


def planned_moves(out):
    """(slot, from, to, new VM) of each 'move N: ...' line the plan printed."""
    return re.findall(r"move \d+: (\S+) (\S+) -> (\S+) as ([^\s\"(]+)", out)


def site_vos(**changes):
    """A copy of the site's fabric_vos with ``changes`` ({vo: {key: value}}), as an extra-vars file."""
    with open(os.path.join(ROOT, "inventories", "local", "group_vars", "all.yml")) as handle:
        vos = yaml.safe_load(handle)["fabric_vos"]
    for vo, values in changes.items():
        vos[vo].update(values)
    return vos


@pytest.fixture(scope="module")
def rebalance_site(converted_site, tmp_path_factory):
    # An earlier test module may have reverted the site: converting again is a no-op on a converted one.
    rc, out = run_playbook("convert_worker_nodes")
    assert rc == 0, out[-4000:]
    cancel_jobs()
    yield {"inventory": converted_site, "tmp": tmp_path_factory.mktemp("rebalance")}
    cancel_jobs()


def all_atlas():
    """Make every slot an idle atlas VM, with a rebalance towards waiting atlas jobs (no-op if it is)."""
    current = slots()
    if vos_of(current) != ["atlas"] * len(current):
        atlas = [name for name, vm in current.items() if vm["metadata"]["vo"] == "atlas"]
        jobs = [submit("atlas", "setup%d" % i, 900) for i in range(len(current) + 1)]
        # every atlas VM busy and atlas jobs still waiting: atlas needs the other slots
        wait_for(lambda: sum(1 for job in jobs if job_state(job)[0] == "RUNNING") >= len(atlas), 300,
                 "the atlas VMs to be busy")
        rebalance("-e", "fabric_rebalance_max_changes=%d" % len(current), *FAST)
        cancel_jobs()
        current = slots()
    assert vos_of(current) == ["atlas"] * len(current), current.keys()
    assert len(current) >= 2, "the site needs at least two slots for these tests"
    return current


def test_preemption_requeues_a_busy_vm_only_when_allowed(rebalance_site):
    current = slots()
    names = sorted(current)
    # Start from the converted site's two VOs: atlas-1 and lhcb-1 (a previous run may have changed them).
    if vos_of(current) != ["atlas", "lhcb"]:
        pytest.skip("expects one atlas and one lhcb VM as convert_worker_nodes makes them, found %s" % vos_of(current))
    atlas_vm = next(name for name in names if current[name]["metadata"]["vo"] == "atlas")
    lhcb_vm = next(name for name in names if current[name]["metadata"]["vo"] == "lhcb")
    # each the only VM of its VO, so no --nodelist (a requeued job pinned to a removed node could not wait)
    busy_atlas = submit("atlas", "busy-atlas", 900)
    busy_lhcb = submit("lhcb", "busy-lhcb", 900, "--requeue")
    wait_running(busy_atlas, atlas_vm)
    wait_running(busy_lhcb, lhcb_vm)
    waiting = [submit("atlas", "wait%d" % i, 5) for i in range(2)]

    # atlas is to hold every slot, lhcb none and may be preempted
    extra = rebalance_site["tmp"] / "preemptible.yml"
    extra.write_text(yaml.safe_dump({"fabric_vos": site_vos(atlas={"share": 100}, lhcb={"share": 0, "preemptible": True})}))
    out = rebalance("-e", "@%s" % extra, *FAST)
    assert planned_moves(out) == [] and "no move: nothing to rebalance" in out  # no idle VM, preemption off
    assert_unchanged(0, out, "a rebalance with nothing idle to move")
    assert sorted(slots()) == names

    out = rebalance("-e", "@%s" % extra, "-e", "fabric_allow_preemption=true", *FAST)
    moves = planned_moves(out)
    assert [move[:3] for move in moves] == [(lhcb_vm, "lhcb", "atlas")], out[-3000:]
    assert "(preempting %s)" % busy_lhcb[1] in out
    after = slots()
    assert lhcb_vm not in after and after[moves[0][3]]["metadata"]["vo"] == "atlas"
    assert after[atlas_vm]["uuid"] == current[atlas_vm]["uuid"]  # the busy atlas VM is not touched
    assert job_state(busy_atlas) == ["RUNNING", atlas_vm]
    # the lhcb job was requeued, not killed: it waits again (no lhcb VM is left to run it)
    state = job_state(busy_lhcb)[0]
    assert state in ("PENDING", "REQUEUED", "REQUEUE_HOLD"), state
    assert "Restarts=1" in sh("scontrol", "-o", "show", "job", busy_lhcb[1], vo="lhcb").stdout
    wait_for(lambda: all(job_state(job)[0] is None for job in waiting), 300, "the waiting atlas jobs to run")
    cancel_jobs()


def test_idle_atlas_vms_go_to_waiting_lhcb_jobs_and_busy_ones_stay(rebalance_site):
    current = all_atlas()
    names = sorted(current)
    # A convert run on the site a rebalance made all atlas keeps its VMs, and starts no share-plan VM beside them.
    rc, out = run_playbook("convert_worker_nodes")
    assert_unchanged(rc, out, "convert on the site a rebalance made all atlas")
    assert {name: vm["uuid"] for name, vm in slots().items()} == {name: vm["uuid"] for name, vm in current.items()}
    busy = names[0]  # the lowest: so the VMs left afterwards carry the names convert_worker_nodes gives
    long_job = submit("atlas", "busy", 900, "--nodelist=" + busy)
    wait_running(long_job, busy)
    lhcb_jobs = [submit("lhcb", "lhcb%d" % i, 5) for i in range(6)]
    wait_for(lambda: all(job_state(job)[0] == "PENDING" for job in lhcb_jobs), 60, "the lhcb jobs to wait")
    limit = ["-e", "fabric_rebalance_max_changes=%d" % len(names)]

    # --check: the plan, and no change
    out = rebalance("--check", *(limit + FAST))
    planned = planned_moves(out)
    idle = [name for name in names if name != busy]
    assert sorted(move[0] for move in planned) == idle, out[-3000:]  # 6 waiting > idle VMs: all idle ones
    assert all(move[1:3] == ("atlas", "lhcb") for move in planned)
    assert_unchanged(0, out, "rebalance --check")
    assert {name: vm["uuid"] for name, vm in slots().items()} == {name: vm["uuid"] for name, vm in current.items()}

    # the run: exactly the planned VMs become lhcb VMs; the busy one is not touched
    started = time.time()
    out = rebalance(*(limit + FAST))
    assert planned_moves(out) == planned
    after = slots()
    assert after[busy]["uuid"] == current[busy]["uuid"] and after[busy]["state"] == "running"
    assert job_state(long_job) == ["RUNNING", busy]
    new_vms = [move[3] for move in planned]
    for slot, new in ((move[0], move[3]) for move in planned):
        assert slot not in after
        assert after[new]["metadata"]["vo"] == "lhcb" and after[new]["state"] == "running"
        assert started - 5 <= float(after[new]["metadata"]["changed_at"]) <= time.time()  # the cool-down starts now
    assert sorted(after) == sorted([busy] + new_vms)
    assert set(new_vms) <= set(leases()) and not {move[0] for move in planned} & set(leases())

    # a second run right after changes nothing (the site settles: fabric_rebalance_settle_s)
    out = rebalance()
    assert_unchanged(0, out, "a rebalance right after one that moved")
    assert planned_moves(out) == [] and "settling:" in out

    # the waiting lhcb jobs run, on the new lhcb VMs
    wait_for(lambda: all(job_state(job)[0] is None for job in lhcb_jobs), 600, "the lhcb jobs to run")
    logs = "".join(console(name) for name in new_vms)
    for job in lhcb_jobs:
        assert re.search(r"SGREBAL-JOB %s ran on (%s)\b" % (job[1], "|".join(map(re.escape, new_vms))), logs), job
    assert job_state(long_job) == ["RUNNING", busy]
    cancel_jobs()


def test_site_is_left_as_convert_makes_it(rebalance_site):
    current = slots()
    assert vos_of(current) == ["atlas", "lhcb"]
    rc, out = run_playbook("convert_worker_nodes")
    assert_unchanged(rc, out, "convert after the rebalance")
    assert {name: vm["uuid"] for name, vm in slots().items()} == {name: vm["uuid"] for name, vm in current.items()}
