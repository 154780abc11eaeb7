"""The site over SSH: convert every worker node (each drained in the batch server, VMs with leases from the
one IPAM host), a second run changes nothing, a job per VO runs in a VM on a worker node, and the revert
leaves nothing on any host."""

from __future__ import annotations

import time

import pytest
from sitebox import VOS, assert_unchanged
from conftest import (ALL_SLOTS, BATCH, SLOTS, WORKERS, checked_leases, console_log, host_of, in_host, leases,
                      node_state, run_playbook, slurm, slurm_nodes, virsh, vo_of)

pytestmark = pytest.mark.slow


def test_convert_drains_every_worker_node_and_starts_its_vms(converted_site):
    for host in WORKERS:
        assert sorted(virsh(host, "list", "--name").split()) == sorted(SLOTS[host]), host
        assert node_state(host).startswith("drain"), host  # in the batch server, out of scheduling
    for slot in ALL_SLOTS:  # each VM a node of its VO's cluster, none in the site's
        assert node_state(slot, vo=vo_of(slot)) == "idle", slot
    assert not set(ALL_SLOTS) & slurm_nodes()


def test_leases_come_from_the_one_ipam_host_without_duplicates(converted_site):
    for slot, lease in checked_leases().items():
        # the batch server reaches the VM at its leased address
        assert "NodeAddr=%s " % lease["ip"] in slurm("scontrol", "show", "node", slot, vo=vo_of(slot))


def test_a_second_run_changes_nothing(converted_site):
    rc, out = run_playbook("convert_worker_nodes")
    assert_unchanged(rc, out, "the second convert run")


def test_a_job_per_vo_runs_in_a_vm_on_a_worker_node(converted_site):
    jobs = {}
    for vo in VOS:
        jobs[vo] = slurm("sbatch", "--parsable", "--chdir=/tmp", "--output=/dev/null", "--wrap",
                         "echo SKYGRID-JOB $SLURM_JOB_ID ran on $(hostname) for %s > /dev/ttyS0" % vo, vo=vo).strip()
        assert jobs[vo].isdigit(), jobs[vo]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and any(slurm("squeue", "-h", "-j", job, vo=vo).strip() for vo, job in jobs.items()):
        time.sleep(2)
    for vo, job in jobs.items():
        ran = slurm("scontrol", "show", "job", job, vo=vo)
        node = [word.split("=", 1)[1] for word in ran.split() if word.startswith("NodeList=")]
        assert node and node[0] in ALL_SLOTS and "-%s-" % vo in node[0], ran
        with open(console_log(node[0]), errors="replace") as handle:
            assert "SKYGRID-JOB %s ran on %s for %s" % (job, node[0], vo) in handle.read()
        assert host_of(node[0]) != BATCH


def test_revert_leaves_nothing_on_any_host(converted_site):
    rc, out = run_playbook("revert_worker_nodes")
    assert rc == 0, out[-3000:]
    for host in WORKERS:
        assert not virsh(host, "list", "--all", "--name").split(), host
        assert not in_host(host, "sh", "-c", "ls /var/lib/skygrid/images | grep '^%s-' || true" % host).stdout.strip()
        assert node_state(host).rstrip("*") in ("idle", "mixed", "allocated"), host  # back in the batch system
        network = virsh(host, "net-dumpxml", "skygrid-mh")
        assert "<host " not in network, network  # no DHCP reservation left
    assert not leases()
    for vo in VOS:
        assert not set(ALL_SLOTS) & slurm_nodes(vo), vo
    assert not set(ALL_SLOTS) & slurm_nodes()
    rc, out = run_playbook("revert_worker_nodes")
    assert_unchanged(rc, out, "the second revert")
