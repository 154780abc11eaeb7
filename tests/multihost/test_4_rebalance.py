"""Rebalance across the site over SSH: with the VMs on mh-wn1 and mh-wn3 busy (a Slurm job running in each)
and lhcb jobs waiting, `rebalance.yml` moves the one idle slot, mh-wn2's atlas VM, to lhcb (a new VM with a lease
from the one IPAM host, joined to lhcb's cluster, running the waiting jobs) and touches no busy VM on the other
hosts; a second run right after changes nothing, and a convert run afterwards keeps the rebalanced VMs.

The tests share one rebalanced site and run in order. Jobs are named ``sgmhreb-*``, cancelled before and after;
each VO's jobs go to its own cluster on mh-batch (docs/SECURITY.md), not held and with no constraint (see
tests/e2e/test_2_rebalance.py for why)."""

from __future__ import annotations

import ipaddress
import os
import re

import pytest
from sitebox import VOS, assert_unchanged
from conftest import (ALL_SLOTS, SLOTS, STATE, WORKERS, in_host, leases, node_state, run_playbook, slurm,
                      slurm_nodes, virsh, vo_of, wait_for)

pytestmark = pytest.mark.slow
PREFIX = "sgmhreb-"
TARGET = "mh-wn2"                                    # its only VM stays idle: the one slot a rebalance may move
MOVED, NEW = "mh-wn2-atlas-1", "mh-wn2-lhcb-1"       # the lowest free lhcb name on mh-wn2
BUSY = {"mh-wn1-atlas-1": "atlas", "mh-wn3-atlas-1": "atlas", "mh-wn3-lhcb-1": "lhcb"}
WAITING = 2                                           # lhcb jobs waiting for a slot
# The test's own runs follow each other closely: no cool-down or settling pause for the move itself.
FAST = ["-e", "fabric_rebalance_cooldown_s=0", "-e", "fabric_rebalance_settle_s=0"]


def host_of(slot):
    return slot.rsplit("-", 2)[0]


def console(slot):
    """The VM's serial console, in its worker node's private /var/log/libvirt."""
    path = os.path.join(STATE, "hosts", host_of(slot)[3:], "var-log-libvirt", "qemu", slot + "-console.log")
    if not os.path.exists(path):
        return ""
    with open(path, errors="replace") as handle:
        return handle.read()


def uuids():
    """{VM name: UUID} of every VM on every worker node."""
    found = {}
    for host in WORKERS:
        for name in virsh(host, "list", "--all", "--name").split():
            found[name] = virsh(host, "domuuid", name).strip()
    return found


def running():
    return {host: sorted(virsh(host, "list", "--name").split()) for host in WORKERS}


def our_jobs():
    """{(vo, job id): state} of this test's jobs in every VO's cluster."""
    jobs = {}
    for vo in VOS:
        for line in slurm("squeue", "-h", "-o", "%i %j %T", vo=vo).splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1].startswith(PREFIX):
                jobs[(vo, parts[0])] = parts[2]
    return jobs


def cancel_jobs():
    for vo, job in our_jobs():
        slurm("scancel", job, vo=vo)
    wait_for("this test's jobs to end", lambda: not our_jobs(), timeout=120)


def submit(vo, name, seconds, *extra):
    """A job of ``vo`` that writes where it runs to the VM's console; (vo, job id)."""
    command = "echo SGMHREB-JOB $SLURM_JOB_ID ran on $(hostname) > /dev/ttyS0; sleep %d" % seconds
    job = slurm("sbatch", "--parsable", "-J", PREFIX + name, "--chdir=/tmp", "--output=/dev/null", *extra,
                "--wrap", command, vo=vo).strip().splitlines()[-1].split(";")[0]
    assert job.isdigit(), job
    return vo, job


def job_state(job):
    """(state, node) of a job still known to its cluster, (None, None) once it has ended."""
    vo, job_id = job
    words = slurm("squeue", "-h", "-j", job_id, "-o", "%T %N", vo=vo).split()
    if not words or words[0] in ("slurm_load_jobs", "error:"):
        return (None, None)
    return tuple((words + [None])[:2])


def planned_moves(out):
    """(slot, from, to, new VM) of each 'move N: ...' line the plan printed."""
    return re.findall(r"move \d+: (\S+) (\S+) -> (\S+) as ([^\s\"(]+)", out)


def rebalance(*args):
    rc, out = run_playbook("rebalance", *args)
    assert rc == 0, out[-5000:]
    return out


@pytest.fixture(scope="module")
def busy_site(site):
    """The site as convert_worker_nodes makes it, a long job running in each VM but mh-wn2's, lhcb jobs waiting."""
    rc, out = run_playbook("convert_worker_nodes")  # a no-op when an earlier test left the site converted
    assert rc == 0, out[-4000:]
    assert running() == {host: sorted(SLOTS[host]) for host in WORKERS}, "expects the slots convert makes"
    cancel_jobs()
    before = uuids()
    busy = {slot: submit(vo, "busy-" + slot, 1800, "--nodelist=" + slot) for slot, vo in BUSY.items()}
    for slot, job in busy.items():
        wait_for("job %s to run on %s" % (job, slot), lambda job=job, slot=slot: job_state(job) == ("RUNNING", slot),
                 timeout=180)
    waiting = [submit("lhcb", "wait%d" % index, 5) for index in range(WAITING)]
    wait_for("the lhcb jobs to wait", lambda: all(job_state(job)[0] == "PENDING" for job in waiting), timeout=60)
    yield {"before": before, "busy": busy, "waiting": waiting}
    cancel_jobs()


@pytest.fixture(scope="module")
def rebalanced(busy_site):
    """The first rebalance run, its output kept for the tests."""
    return dict(busy_site, out=rebalance(*FAST))


def test_the_idle_slot_on_one_host_moves_to_the_waiting_vo(rebalanced):
    out = rebalanced["out"]
    assert planned_moves(out) == [(MOVED, "atlas", "lhcb", NEW)], out[-3000:]
    assert running()[TARGET] == [NEW]
    assert MOVED not in virsh(TARGET, "list", "--all", "--name").split()
    # joined lhcb's cluster at its leased address, left atlas's
    lease = leases()[NEW]
    assert ipaddress.ip_address(lease["ip"]) in ipaddress.ip_network("10.254.9%s.0/24" % TARGET[-1]), lease
    assert lease["ip"] in virsh(TARGET, "domifaddr", NEW, "--source", "lease")
    assert "NodeAddr=%s " % lease["ip"] in slurm("scontrol", "show", "node", NEW, vo="lhcb")
    assert node_state(NEW, vo="lhcb").rstrip("*") in ("idle", "mixed", "allocated"), node_state(NEW, vo="lhcb")
    assert MOVED not in slurm_nodes("atlas") and NEW not in slurm_nodes("atlas") | slurm_nodes()
    # the waiting lhcb jobs run there
    waiting = rebalanced["waiting"]
    wait_for("the waiting lhcb jobs to run", lambda: all(job_state(job)[0] is None for job in waiting), timeout=300)
    for vo, job in waiting:
        assert "SGMHREB-JOB %s ran on %s" % (job, NEW) in console(NEW), (vo, job)


def test_busy_vms_on_the_other_hosts_are_not_touched(rebalanced):
    now = uuids()
    for slot, job in rebalanced["busy"].items():
        assert now.get(slot) == rebalanced["before"][slot], slot  # the same VM, not recreated
        assert job_state(job) == ("RUNNING", slot), (slot, job)
        state = node_state(slot, vo=BUSY[slot])
        assert state in ("allocated", "mixed"), (slot, state)  # still scheduling: not drained
        assert "SGMHREB-JOB %s ran on %s" % (job[1], slot) in console(slot)
    for host in WORKERS:
        if host != TARGET:
            assert running()[host] == sorted(SLOTS[host]), host


def test_leases_match_the_vms_with_no_address_twice(rebalanced):
    leased = leases()
    slots_now = sorted(set(ALL_SLOTS) - {MOVED} | {NEW})
    assert sorted(leased) == slots_now  # the moved VM's lease released, the new one's taken
    ips = [lease["ip"] for lease in leased.values()]
    macs = [lease["mac"] for lease in leased.values()]
    assert len(set(ips)) == len(ips) and len(set(macs)) == len(macs), leased
    network = virsh(TARGET, "net-dumpxml", "skygrid-mh")
    assert leased[NEW]["mac"] in network and leased[NEW]["ip"] in network, network  # its DHCP reservation
    assert "name='%s'" % MOVED not in network and "name=\"%s\"" % MOVED not in network, network
    # no worker node keeps a lease database of its own
    for host in WORKERS:
        assert in_host(host, "test", "-e", "/var/lib/skygrid/ipam.sqlite").returncode == 1


def test_a_second_rebalance_changes_nothing(rebalanced):
    before = uuids()
    out = rebalance()
    assert_unchanged(0, out, "a rebalance right after one that moved")
    assert planned_moves(out) == [] and "settling:" in out, out[-3000:]
    assert uuids() == before


def test_a_convert_run_afterwards_keeps_the_rebalanced_vms(rebalanced):
    before = uuids()
    assert NEW in before and MOVED not in before
    rc, out = run_playbook("convert_worker_nodes")
    assert_unchanged(rc, out, "convert after the rebalance")
    assert uuids() == before  # no share-plan VM beside the rebalanced one, none recreated
    for slot, job in rebalanced["busy"].items():
        assert job_state(job) == ("RUNNING", slot), (slot, job)
    assert vo_of(NEW) == "lhcb" and node_state(NEW, vo="lhcb").rstrip("*") in ("idle", "mixed", "allocated")
