"""The test bed itself: every host answers Ansible over SSH with its own name, keys and libvirtd, and its
network reaches nothing but the other hosts."""

from __future__ import annotations

import json
import subprocess

from sitebox import VOS, playbook_env
from conftest import BATCH, INVENTORY, IPAM, KEY, KNOWN_HOSTS, WORKERS, fqdn, in_host, slurm, ssh


def ansible(pattern, module, args=""):
    proc = subprocess.run(["ansible", pattern, "-i", INVENTORY, "-m", module, "-a", args, "-t", "/dev/null"]
                          + ["-o"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=playbook_env(),
                          check=False)
    return proc


def results(output):
    """{host: result} from ansible's one-line output."""
    found = {}
    for line in output.splitlines():
        if " | SUCCESS => " in line:
            host, result = line.split(" | SUCCESS => ", 1)
            found[host] = json.loads(result)
    return found


def test_every_host_answers_ansible_over_ssh(testbed):
    proc = ansible("all", "ansible.builtin.ping")
    assert proc.returncode == 0, proc.stdout
    assert set(results(proc.stdout)) == {fqdn(h) for h in [BATCH, IPAM] + WORKERS}


def test_each_worker_node_has_its_own_libvirtd(testbed):
    proc = ansible("worker_nodes", "skygrid.fabric.hypervisor_info", "uri=qemu:///system")
    assert proc.returncode == 0, proc.stdout
    found = results(proc.stdout)
    assert sorted(found) == sorted(fqdn(h) for h in WORKERS)
    for host, result in found.items():
        assert result["hypervisor"]["hostname"] == host  # the session reached that host's libvirtd
        assert result["hypervisor"]["virt_type"] == "qemu"
    # and one host's libvirtd is reachable from another over SSH (qemu+libssh, the test bed's known hosts)
    uri = "qemu+libssh://root@%s/system?keyfile=%s&known_hosts=%s&sshauth=privkey" % (fqdn(WORKERS[-1]), KEY, KNOWN_HOSTS)
    assert in_host(WORKERS[0], "virsh", "-c", uri, "hostname", check=True).stdout.strip() == fqdn(WORKERS[-1])


def test_ssh_is_key_only_with_the_test_beds_host_keys(testbed):
    assert ssh(WORKERS[0], "hostname").stdout.strip() == WORKERS[0]
    # without the key: refused (no password or keyboard-interactive fallback)
    proc = subprocess.run(["ssh", "-o", "UserKnownHostsFile=" + KNOWN_HOSTS, "-o", "StrictHostKeyChecking=yes",
                           "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityFile=/dev/null",
                           "root@" + fqdn(IPAM), "true"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False)
    assert proc.returncode != 0 and "Permission denied" in proc.stdout
    # sshd listens on the host's own address only
    listening = in_host(IPAM, "ss", "-Hltn", "sport", "=", ":22", check=True).stdout.split()
    assert "10.254.80.10:22" in listening and "0.0.0.0:22" not in listening


def test_hosts_reach_each_other_and_nothing_beyond(testbed):
    for host in [BATCH, IPAM] + WORKERS:
        routes = in_host(host, "ip", "-4", "route", "show", check=True).stdout
        assert "default" not in routes, "%s has a default route:\n%s" % (host, routes)
    assert in_host(WORKERS[0], "getent", "hosts", fqdn(BATCH), check=True).stdout.split()[0] == "10.254.80.5"
    # each host keeps its own IPAM/image state: /var/lib/skygrid differs between hosts
    marker = "/var/lib/skygrid/.multihost-test-%s" % IPAM
    in_host(IPAM, "touch", marker, check=True)
    try:
        assert in_host(WORKERS[0], "test", "-e", marker).returncode == 1
    finally:
        in_host(IPAM, "rm", "-f", marker)


def test_slurm_knows_the_worker_nodes_and_runs_a_cluster_per_vo(testbed):
    nodes = in_host(BATCH, "sinfo", "-h", "-N", "-o", "%N %o", check=True).stdout.split("\n")
    addresses = dict(line.split() for line in nodes if line.strip())
    for host in WORKERS:
        assert addresses[host] in (host, fqdn(host), "10.254.80.1" + host[-1])
    for vo in VOS:  # each VO's VMs join a cluster of their own, with its own munge key (docs/SECURITY.md)
        assert "UP" in slurm("scontrol", "ping", vo=vo)
