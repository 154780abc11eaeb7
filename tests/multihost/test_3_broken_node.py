"""A worker node broken on the day of the conversion: with mh-wn2's sshd stopped, or its libvirtd, the other
worker nodes are converted, mh-wn2 is reported (unreachable, or failed with the reason) with nothing done to
it (not drained, no lease, no VM), and a re-run after the repair converges it and changes nothing on the
others."""

from __future__ import annotations

import re

import pytest
from sitebox import changed_tasks, recap, sh
from conftest import ALL_SLOTS, SLOTS, TESTBED, WORKERS, fqdn, leases, node_state, run_playbook, virsh, vo_of

pytestmark = pytest.mark.slow
BROKEN = "mh-wn2"


@pytest.fixture(params=["sshd", "libvirtd"])
def broken_node(site, request):
    """mh-wn2 with its sshd (unreachable) or its libvirtd stopped for the test; `start` repairs it."""
    rc, out = run_playbook("revert_worker_nodes")
    assert rc == 0, out[-3000:]
    sh("bash", TESTBED, "down", BROKEN, request.param)
    yield request.param
    sh("bash", TESTBED, "start")


def test_the_others_convert_and_a_rerun_after_the_repair_converges(broken_node):
    rc, out = run_playbook("convert_worker_nodes")
    assert rc != 0, "a run with a broken node must not report success"
    if broken_node == "sshd":
        assert re.search(r"^%s\s*: ok=\d+\s+changed=\d+\s+unreachable=1" % re.escape(fqdn(BROKEN)), out, re.M), \
            out[-3000:]
        assert "UNREACHABLE!" in out and fqdn(BROKEN) in out  # reported with the reason (ssh's own message)
    else:  # failed in the first play, before any node was drained, naming the cause and the fix
        assert re.search(r"^%s\s*: ok=\d+\s+changed=0\s+unreachable=0\s+failed=1" % re.escape(fqdn(BROKEN)),
                         out, re.M), out[-3000:]
        assert "libvirt is installed on %s but does not answer" % fqdn(BROKEN) in out and "repair libvirtd" in out
    others = [host for host in WORKERS if host != BROKEN]
    for host in others:
        assert sorted(virsh(host, "list", "--name").split()) == sorted(SLOTS[host]), host
        assert node_state(host).startswith("drain"), host
    # nothing half-done on the broken node: still in service in the batch system, no lease, no VM
    assert node_state(BROKEN).rstrip("*") in ("idle", "mixed", "allocated")
    assert not set(SLOTS[BROKEN]) & set(leases())

    sh("bash", TESTBED, "start")  # the repair: its sshd or libvirtd back
    assert not virsh(BROKEN, "list", "--all", "--name").split()  # no VM was defined on it meanwhile
    rc, out = run_playbook("convert_worker_nodes")
    assert rc == 0, out[-4000:]
    assert sorted(virsh(BROKEN, "list", "--name").split()) == sorted(SLOTS[BROKEN])
    assert sorted(leases()) == sorted(ALL_SLOTS)
    for slot in ALL_SLOTS:
        assert node_state(slot, vo=vo_of(slot)) == "idle", slot
    # the hosts converted before only converged: no change there
    touched = [line for line in changed_tasks(out) if any("[%s" % fqdn(host) in line for host in others)]
    assert not touched, "the re-run changed the nodes converted before:\n  " + "\n  ".join(touched)
    assert recap(out)[3] == 0
