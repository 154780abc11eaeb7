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

from conftest import ROOT, VOS, assert_unchanged, run_playbook, sh

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


@pytest.fixture(scope="module")
def torque_site():
    """libvirt and the Torque test bed up, Torque's commands on the PATH; whatever an earlier run left reverted."""
    if not os.access(os.path.join(TORQUE, "sbin", "pbs_mom"), os.X_OK):
        sh("bash", os.path.join(ROOT, "scripts", "torque", "build.sh"))
    sh("bash", os.path.join(ROOT, "scripts", "testbed.sh"), "start")
    sh("bash", os.path.join(ROOT, "scripts", "torque-testbed.sh"), "start")
    patch = pytest.MonkeyPatch()
    patch.setenv("PATH", os.path.join(TORQUE, "bin") + os.pathsep + os.environ["PATH"])
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
    jobs = {}
    for vo in VOS:
        proc = subprocess.run(["runuser", "-u", USER, "--", os.path.join(TORQUE, "bin", "qsub"), "-q", vo, "-j", "oe",
                               "-o", "/dev/null"], input="echo SKYGRID-E2E $PBS_JOBID ran on $(hostname) > /dev/ttyS0\n",
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False, cwd="/tmp")
        assert proc.returncode == 0, proc.stderr
        jobs[vo] = proc.stdout.strip()
    deadline = time.monotonic() + 180
    pending = dict(jobs)
    while pending and time.monotonic() < deadline:
        for vo, job in list(pending.items()):
            with open("/var/log/libvirt/qemu/sgtq-%s-1-console.log" % vo, errors="replace") as handle:
                if "SKYGRID-E2E %s ran on sgtq-%s-1" % (job, vo) in handle.read():
                    del pending[vo]
        time.sleep(1)
    assert not pending, "jobs that did not report from their VO's VM: %s" % pending
    for vo, job in jobs.items():
        assert re.search(r"<exec_host>sgtq-%s-1/" % vo, tq("qstat", "-f", "-x", job).stdout) or \
            "Unknown Job" in tq("qstat", "-f", "-x", job).stdout


def test_torque_revert_leaves_nothing_behind(torque_site):
    rc, out = play("site_in_a_box_revert")
    assert rc == 0, out[-3000:]
    assert not set(SLOTS) & torque_nodes()
    assert not {"atlas", "lhcb"} & queues()
    assert not set(SLOTS) & vms()
    assert not set(SLOTS) & leases()
    with open("/etc/hosts") as handle:
        assert "sgtq-" not in handle.read()
    with pytest.raises(KeyError):
        pwd.getpwnam(USER)
    assert node_state(NODE) == "free"  # back in service
    rc, out = play("revert_worker_nodes")
    assert_unchanged(rc, out, "the second revert")
