"""Convert this machine into a VM host, check idempotency, run a job per VO inside its VO's VM,
revert, and check nothing is left behind."""

from __future__ import annotations

import json
import os
import subprocess
import time

from sitebox import ROOT, VOS, assert_unchanged, run_playbook, sh

HOST = "localhost"
SLOTS = ["%s-%s-1" % (HOST, vo) for vo in VOS]
POOL_DIR = "/var/lib/skygrid/images"
NODE = subprocess.run(["hostname", "-s"], stdout=subprocess.PIPE, text=True, check=True).stdout.strip()


def virsh(*args):
    return sh("virsh", "-c", "qemu:///system", *args, check=False).stdout


def slurm_nodes(vo=None):
    return set(sh("sinfo", "-h", "-N", "-o", "%N", vo=vo).stdout.split())


def all_slurm_nodes():
    """The nodes of the site's cluster and of every VO's."""
    return set().union(slurm_nodes(), *(slurm_nodes(vo) for vo in VOS))


def node_state(name, vo=None):
    return sh("sinfo", "-h", "-N", "-n", name, "-o", "%T", vo=vo).stdout.strip()


def leases():
    out = subprocess.run([os.path.join(ROOT, ".venv", "bin", "python"), "-c", (
        "import sqlite3,json,sys; c=sqlite3.connect('/var/lib/skygrid/ipam.sqlite');"
        "print(json.dumps([r[0] for r in c.execute('select owner from leases')]))")],
        stdout=subprocess.PIPE, text=True, check=False).stdout
    return json.loads(out or "[]")


def test_check_mode_shows_the_plan_and_changes_nothing(site):
    rc, out = run_playbook("convert_worker_nodes", "--check", "--diff")
    assert rc == 0, out[-3000:]
    for slot in SLOTS:
        assert slot in out and slot not in virsh("list", "--all", "--name")  # in the plan and the diff
    assert not set(SLOTS) & all_slurm_nodes()
    assert not set(SLOTS) & set(leases())


def test_convert_is_idempotent_and_runs_each_vo_job_in_its_vm(converted_site):
    running = virsh("list", "--name").split()
    assert set(SLOTS) <= set(running)
    # Each VM is a node of its VO's own cluster only, with the name, address and features the site gave it.
    for vo, slot in zip(VOS, SLOTS):
        assert node_state(slot, vo) == "idle"
        assert slurm_nodes(vo) == {slot}
        node = sh("scontrol", "-o", "show", "node", slot, vo=vo).stdout
        assert "AvailableFeatures=%s,vm " % vo in node and "NodeAddr=192.168.244." in node
    assert not set(SLOTS) & slurm_nodes()  # not in the site's cluster
    assert node_state(NODE).startswith("drain")  # the physical node is out of the batch system

    rc, out = run_playbook("convert_worker_nodes")
    assert_unchanged(rc, out, "the second convert run")

    jobs = {}
    for vo in VOS:
        jobs[vo] = sh("sbatch", "--parsable", "--constraint=" + vo, "--chdir=/tmp", "--output=/dev/null",
                      "--wrap", "echo SKYGRID-JOB $SLURM_JOB_ID ran on $(hostname) for %s > /dev/ttyS0" % vo,
                      vo=vo).stdout.strip()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(sh("squeue", "-h", "-j", job, vo=vo).stdout.strip() for vo, job in jobs.items()):
        time.sleep(1)
    for vo, job in jobs.items():
        with open("/var/log/libvirt/qemu/%s-%s-1-console.log" % (HOST, vo), errors="replace") as handle:
            assert "SKYGRID-JOB %s ran on %s-%s-1 for %s" % (job, HOST, vo, vo) in handle.read()

    # Each VM took exactly its leased address from the network's DHCP (the lease became a reservation).
    leased = dict(json.loads(subprocess.run([os.path.join(ROOT, ".venv", "bin", "python"), "-c", (
        "import sqlite3,json; c=sqlite3.connect('/var/lib/skygrid/ipam.sqlite');"
        "print(json.dumps([[r[0], r[1]] for r in c.execute('select owner, ip from leases')]))")],
        stdout=subprocess.PIPE, text=True, check=True).stdout))
    for slot in SLOTS:
        assert leased[slot] in virsh("domifaddr", slot, "--source", "lease")

    xml = virsh("dumpxml", SLOTS[0])
    assert "<skygrid:vo>atlas</skygrid:vo>" in xml and "<skygrid:endorser_dn>" in xml
    assert "clean-traffic" in xml  # each VM may only use its leased address


def boot_time(slot, vo):
    """The VM's boot time as its slurmd last reported it to its VO's slurmctld."""
    node = sh("scontrol", "-o", "show", "node", slot, vo=vo).stdout
    return next((field.split("=", 1)[1] for field in node.split() if field.startswith("BootTime=")), "")


def test_a_vm_started_again_rejoins_its_cluster(converted_site):
    """A host's power cut (the VM destroyed), then libvirt starting it again (autostart after the host's reboot):
    the VM's slurmd comes back by itself and the node is idle in its VO's cluster, with no converge run."""
    vo, slot = VOS[0], SLOTS[0]
    before = boot_time(slot, vo)
    assert before, "scontrol reports no BootTime for %s" % slot
    virsh("destroy", slot)
    time.sleep(2)  # BootTime has a resolution of a second
    assert slot in virsh("start", slot)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (boot_time(slot, vo) not in ("", before) and node_state(slot, vo) == "idle"):
        time.sleep(2)
    assert boot_time(slot, vo) != before, "%s's slurmd did not register again after the VM restarted" % slot
    assert node_state(slot, vo) == "idle", "%s is %s after the VM restarted" % (slot, node_state(slot, vo))
    rc, out = run_playbook("convert_worker_nodes")
    assert_unchanged(rc, out, "a convert run after the VM restarted")


def test_revert_leaves_nothing_behind(converted_site):
    rc, out = run_playbook("revert_worker_nodes")
    assert rc == 0, out[-3000:]
    assert not set(SLOTS) & set(virsh("list", "--all", "--name").split())
    assert not [name for name in os.listdir(POOL_DIR) if name.startswith(HOST + "-")]  # overlays and seeds
    assert not set(SLOTS) & set(leases())
    assert not set(SLOTS) & all_slurm_nodes()
    # Back online: schedulable again ("*" only says slurmctld has not heard from slurmd lately).
    assert node_state(NODE).rstrip("*") in ("idle", "mixed", "allocated")
    rc, out = run_playbook("revert_worker_nodes")
    assert_unchanged(rc, out, "the second revert")
