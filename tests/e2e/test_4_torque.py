"""The site in a box on Torque (inventories/local_torque.yml over inventories/local, the TORQUE 6.1.3 test bed):
convert, a second run changes nothing, a job per VO submitted by a normal user to its VO's queue runs inside
that VO's VM, and the revert leaves no node, queue, VM, lease, hosts line or demo user behind. A site of its
own (slots sgtq-*, network skygrid-sitevm-torque, its own IPAM database), so the Slurm tests' site is not
touched."""

from __future__ import annotations

import os
import pwd
import re
import sqlite3
import subprocess
import time

import pytest

from sitebox import ROOT, VOS, assert_unchanged, run_playbook, sh

TORQUE = os.environ.get("SKYGRID_TORQUE_PREFIX", "/opt/skygrid/torque-6.1.3")
EXTRA = ("-e", "@" + os.path.join(ROOT, "inventories", "local_torque.yml"))
SLOTS = ["sgtq-%s-1" % vo for vo in VOS]
NODE = subprocess.run(["hostname"], stdout=subprocess.PIPE, text=True, check=True).stdout.strip()
IPAM_DB = "/var/lib/skygrid/ipam-torque.sqlite"
USER = "sgdemo"


def tq(command, *args, check=False):
    return sh(os.path.join(TORQUE, "bin", command), *args, check=check)


def torque_nodes():
    return set(re.findall(r"<Node><name>([^<]*)</name>", tq("pbsnodes", "-x").stdout))


def node_state(name):
    match = re.search(r"<state>([^<]*)</state>", tq("pbsnodes", "-x", name).stdout)
    return match.group(1) if match else None


def queues():
    return set(re.findall(r"^create queue (\S+)", tq("qmgr", "-c", "print server").stdout, re.M))


def vms():
    return set(sh("virsh", "-c", "qemu:///system", "list", "--all", "--name", check=False).stdout.split())


def leases():
    if not os.path.exists(IPAM_DB):
        return set()
    with sqlite3.connect(IPAM_DB) as db:
        return {row[0] for row in db.execute("select owner from leases")}


def play(name, *args):
    return run_playbook(name, *(EXTRA + args))


def submit(queue, script):
    """A job of the demo user (a normal user) in ``queue``; its id."""
    proc = subprocess.run(["runuser", "-u", USER, "--", os.path.join(TORQUE, "bin", "qsub"), "-q", queue, "-N", "sgrebal",
                           "-j", "oe", "-o", "/dev/null"], input=script + "\n", stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, check=False, cwd="/tmp")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def wait_for_console(slot, line, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/var/log/libvirt/qemu/%s-console.log" % slot, errors="replace") as handle:
            if line in handle.read():
                return
        time.sleep(1)
    raise AssertionError("%r did not appear on %s's console within %ss" % (line, slot, timeout))


def our_slots():
    return {name for name in vms() if name.startswith("sgtq-")}


@pytest.fixture(scope="module")
def torque_site():
    """libvirt and the Torque test bed up, Torque's commands on the PATH; whatever an earlier run left reverted."""
    if not os.access(os.path.join(TORQUE, "sbin", "pbs_mom"), os.X_OK):
        sh("bash", os.path.join(ROOT, "scripts", "torque", "build.sh"))
    sh("bash", os.path.join(ROOT, "scripts", "testbed.sh"), "start")
    sh("bash", os.path.join(ROOT, "scripts", "torque-testbed.sh"), "start")
    patch = pytest.MonkeyPatch()
    patch.setenv("PATH", os.path.join(TORQUE, "bin") + os.pathsep + os.environ["PATH"])
    # One site at a time on this 2-core host: the Slurm site's VMs (converted by the e2e tests before
    # this module) would leave the Torque site's rebalancing no room, which it rightly refuses.
    rc, out = run_playbook("revert_worker_nodes")
    assert rc == 0, out[-3000:]
    rc, out = play("site_in_a_box_revert")
    assert rc == 0, out[-3000:]
    yield
    play("site_in_a_box_revert")
    patch.undo()


def test_torque_site_converts_idempotently_and_runs_each_vo_job_in_its_vm(torque_site):
    rc, out = play("site_in_a_box")
    assert rc == 0, out[-4000:]
    for vo, slot in zip(VOS, SLOTS):
        assert "SKYGRID-JOB" in out and "ran on %s for %s" % (slot, vo) in out
        assert node_state(slot) == "free"
        node = tq("pbsnodes", "-x", slot).stdout
        assert "<properties>%s,vm</properties>" % vo in node
    assert {"atlas", "lhcb"} <= queues()
    assert node_state(NODE).startswith("offline")  # the physical node is out of the batch system

    rc, out = play("convert_worker_nodes")
    assert_unchanged(rc, out, "the second convert run")

    # A job per VO, submitted by the normal user to the VO's queue (no -l nodes: the queue routes it).
    jobs = {vo: submit(vo, "echo SKYGRID-E2E $PBS_JOBID ran on $(hostname) > /dev/ttyS0") for vo in VOS}
    for vo, job in jobs.items():
        wait_for_console("sgtq-%s-1" % vo, "SKYGRID-E2E %s ran on sgtq-%s-1" % (job, vo))
    for vo, job in jobs.items():
        assert re.search(r"<exec_host>sgtq-%s-1/" % vo, tq("qstat", "-f", "-x", job).stdout) or \
            "Unknown Job" in tq("qstat", "-f", "-x", job).stdout


def test_torque_rebalance_moves_an_idle_vm_to_the_vo_whose_jobs_wait(torque_site):
    """lhcb's VM busy and two lhcb jobs waiting, atlas's VM idle: demand read from qstat, the atlas VM drained
    (pbsnodes -o), removed and replaced by an lhcb VM, on which a waiting job then runs."""
    fast = ("-e", "fabric_rebalance_cooldown_s=0", "-e", "fabric_rebalance_settle_s=0")
    line = "echo SGREBAL $PBS_JOBID ran on $(hostname) > /dev/ttyS0; sleep %d"
    jobs = [submit("lhcb", line % 240)]
    wait_for_console("sgtq-lhcb-1", "SGREBAL %s ran on sgtq-lhcb-1" % jobs[0], 60)
    jobs += [submit("lhcb", line % 1), submit("lhcb", line % 1)]
    try:
        rc, out = play("rebalance", "--check", *fast)
        assert rc == 0, out[-3000:]
        assert "move 1: sgtq-atlas-1 atlas -> lhcb as sgtq-lhcb-2" in out
        assert our_slots() == {"sgtq-atlas-1", "sgtq-lhcb-1"}  # --check moved nothing

        rc, out = play("rebalance", *fast)
        assert rc == 0, out[-3000:]
        assert our_slots() == {"sgtq-lhcb-1", "sgtq-lhcb-2"}
        assert "sgtq-atlas-1" not in torque_nodes()
        assert "<properties>lhcb,vm</properties>" in tq("pbsnodes", "-x", "sgtq-lhcb-2").stdout
        wait_for_console("sgtq-lhcb-2", "SGREBAL %s ran on sgtq-lhcb-2" % jobs[1], 60)

        rc, out = play("rebalance", *fast)
        assert_unchanged(rc, out, "a rebalance run right after the move")
    finally:
        tq("qdel", *jobs)


def test_torque_revert_leaves_nothing_behind(torque_site):
    rc, out = play("site_in_a_box_revert")
    assert rc == 0, out[-3000:]
    assert not [name for name in torque_nodes() if name.startswith("sgtq-")]
    assert not {"atlas", "lhcb"} & queues()
    assert not our_slots()
    assert not [owner for owner in leases() if owner.startswith("sgtq-")]
    with open("/etc/hosts") as handle:
        assert "sgtq-" not in handle.read()
    with pytest.raises(KeyError):
        pwd.getpwnam(USER)
    assert node_state(NODE) == "free"  # back in service
    rc, out = play("revert_worker_nodes")
    assert_unchanged(rc, out, "the second revert")
