"""Convert this machine into a VM host, check idempotency, run a job per VO inside its VO's VM,
revert, and check nothing is left behind."""

from __future__ import annotations

import json
import os
import subprocess
import time

from sitebox import ROOT, VOS, assert_unchanged, recap, run_playbook, sh

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


def test_check_mode_on_a_new_node_plans_its_fabric_too(site):
    """What a site admin runs first on a new worker node: --check --diff, with no image pool and no VM network
    yet (here: names no run created). It plans the pool, the network, the images and the VMs, and creates none."""
    fabric = json.dumps({"fabric_image_pool": "sgnew-images", "fabric_image_pool_path": "/var/lib/skygrid-test/sgnew-images",
                         "fabric_vm_network": {"name": "sgnew-net", "mode": "isolated", "bridge": "sgnew0", "pool": "sitevm"}})
    rc, out = run_playbook("convert_worker_nodes", "--check", "--diff", "-e", fabric)
    assert rc == 0, out[-3000:]
    assert "storage pool 'sgnew-images' does not exist yet" in out  # the images are planned into it
    assert "libvirt network 'sgnew-net' does not exist (yet)" in out  # the VMs' NICs are planned onto it
    assert recap(out)[3] == 0 and recap(out)[1] > 0 and all(slot in out for slot in SLOTS)
    assert "sgnew-images" not in virsh("pool-list", "--all", "--name").split()
    assert "sgnew-net" not in virsh("net-list", "--all", "--name").split()
    assert not os.path.exists("/var/lib/skygrid-test/sgnew-images")
    assert not set(SLOTS) & set(virsh("list", "--all", "--name").split())


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
    # Each VM's usage record was opened by the run that started it; a run that changes no VM does not
    # account (the running VMs' CPU time is operations.yml's, from cron).
    open_records = set(json.loads(subprocess.run([os.path.join(ROOT, ".venv", "bin", "python"), "-c", (
        "import sqlite3,json; c=sqlite3.connect('/var/lib/skygrid/accounting.sqlite');"
        "print(json.dumps([r[0] for r in c.execute('select vm_name from usage where end is null')]))")],
        stdout=subprocess.PIPE, text=True, check=True).stdout))
    assert set(SLOTS) <= open_records
    assert "Account the VMs' usage" not in out

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


def slurmctld_port(vo):
    with open("/etc/slurm/vo/%s/slurm.conf" % vo) as handle:
        return next(line.split("=", 1)[1].strip() for line in handle if line.startswith("SlurmctldPort="))


RETRYING = "skygrid-slurm-join: slurmd could not join"


def console_log(slot):
    with open("/var/log/libvirt/qemu/%s-console.log" % slot, errors="replace") as handle:
        return handle.read()


def test_a_slot_that_cannot_reach_its_cluster_is_named_and_joins_once_it_can(converted_site):
    """A slot's VM boots while its VO's slurmctld cannot be reached (its port dropped on the VM network, as a
    firewall mistake or a slurmctld restart at that moment would do): the convert fails naming the slot and
    its console log and keeps the VM; once the port is open the VM's slurmd joins by itself (configless
    slurmd exits when it cannot fetch its configuration: the join script retries it), so a run converges."""
    vo, slot = VOS[1], SLOTS[1]
    bridge = next(line.split()[1] for line in virsh("net-info", "skygrid-sitevm").splitlines() if line.startswith("Bridge:"))
    drop = ["PREROUTING", "-i", bridge, "-p", "tcp", "--dport", slurmctld_port(vo), "-j", "DROP"]
    virsh("destroy", slot)  # the VM off and its node gone: the convert starts it and registers the node anew
    sh("scontrol", "delete", "nodename=" + slot, vo=vo)
    sh("iptables", "-t", "raw", "-I", *drop)
    try:
        rc, out = run_playbook("convert_worker_nodes", "-e", "vm_slots_join_timeout=30")
        assert rc != 0, "the convert passed although %s could not join:\n%s" % (slot, out[-3000:])
        message = next((line for line in out.splitlines() if "did not join the batch system" in line), "")
        assert "%s did not join the batch system within vm_slots_join_timeout (30 s)" % slot in message, out[-3000:]
        assert "/var/log/libvirt/qemu/NAME-console.log" in message and SLOTS[0] not in message  # only the late slot
        assert slot in virsh("list", "--name").split()  # the VM is kept
        # Still unreachable: the VM's slurmd gives up (configless slurmd 22.05 exits when it cannot fetch its
        # configuration) and the join script says so on the console and retries; without the retry the VM
        # would never join, whatever a later run does.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and RETRYING not in console_log(slot):
            time.sleep(3)
        assert RETRYING in console_log(slot), "no join retry on %s's console:\n%s" % (slot, console_log(slot)[-2000:])
    finally:
        sh("iptables", "-t", "raw", "-D", *drop)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and node_state(slot, vo) != "idle":
        time.sleep(2)
    assert node_state(slot, vo) == "idle", "%s did not join after its cluster became reachable" % slot
    rc, out = run_playbook("convert_worker_nodes")
    assert rc == 0, out[-3000:]
    rc, out = run_playbook("convert_worker_nodes")
    assert_unchanged(rc, out, "a convert run after the slot joined")


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
