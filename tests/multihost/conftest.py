"""The multi-host test bed (scripts/multihost-testbed.sh, docs/MULTIHOST.md): a batch server, an IPAM host and
worker nodes in namespaces of this machine, reached over SSH with the generated inventory
inventories/multihost. The playbooks run against it unchanged, as a site admin runs them."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time

import pytest
from sitebox import ROOT, playbook_command, playbook_env, sh, vo_env

TESTBED = os.path.join(ROOT, "scripts", "multihost-testbed.sh")
INVENTORY = os.path.join(ROOT, "inventories", "multihost")
STATE = os.environ.get("SKYGRID_MULTIHOST_STATE", "/var/lib/skygrid-multihost")
KEY = os.path.join(STATE, "id_ed25519")
KNOWN_HOSTS = os.path.join(STATE, "known_hosts")
VO_DIR = os.path.join(STATE, "vo")
IMAGE_SERVER = ("10.254.80.1", "8643")
DOMAIN = "skygrid.test"
BATCH, IPAM = "mh-batch", "mh-ipam"
WORKERS = ["mh-wn%d" % n for n in range(1, int(os.environ.get("SKYGRID_MULTIHOST_WORKERS", "3")) + 1)]
# group_vars: one VM a worker node (atlas), two on rack_b (mh-wn3: atlas and lhcb)
SLOTS = {"mh-wn1": ["mh-wn1-atlas-1"], "mh-wn2": ["mh-wn2-atlas-1"], "mh-wn3": ["mh-wn3-atlas-1", "mh-wn3-lhcb-1"]}
ALL_SLOTS = [slot for host in WORKERS for slot in SLOTS[host]]


def fqdn(host):
    return "%s.%s" % (host, DOMAIN)


def host_of(slot):
    return slot.rsplit("-", 2)[0]


def console_log(slot):
    """The VM's serial console, in its worker node's private /var/log/libvirt."""
    return os.path.join(STATE, "hosts", host_of(slot)[3:], "var-log-libvirt", "qemu", slot + "-console.log")


def run_playbook(name, *args):
    """Run playbooks/<name>.yml against the multi-host site; return (rc, output)."""
    proc = subprocess.run(playbook_command(name, *args, inventory=INVENTORY), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=playbook_env(), check=False, cwd=ROOT)
    return proc.returncode, proc.stdout


def in_host(host, *args, check=False):
    """A command inside a test bed host (its mounts, network and name), not over SSH."""
    return sh("bash", TESTBED, "exec", host, *args, check=check)


def ssh(host, command, check=False):
    """A command on a host over SSH, as Ansible reaches it."""
    return sh("ssh", "-i", KEY, "-o", "UserKnownHostsFile=" + KNOWN_HOSTS, "-o", "StrictHostKeyChecking=yes",
              "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "root@" + fqdn(host), command, check=check)


def virsh(host, *args):
    return in_host(host, "virsh", "-q", "-c", "qemu:///system", *args).stdout


def slurm(*args, vo=None):
    """A Slurm client command on the batch server, in the site's cluster or in a VO's (docs/SECURITY.md)."""
    env = ["env"] + ["%s=%s" % item for item in (vo_env(vo) or {}).items()]
    return in_host(BATCH, *(env + list(args))).stdout


def slurm_nodes(vo=None):
    return set(slurm("sinfo", "-h", "-N", "-o", "%N", vo=vo).split())


def node_state(name, vo=None):
    return slurm("sinfo", "-h", "-N", "-n", name, "-o", "%T", vo=vo).strip()


def vo_of(slot):
    return slot.rsplit("-", 2)[1]


def leases():
    """{owner: {ip, mac, pool}} from the IPAM host's database."""
    out = in_host(IPAM, "python3", "-c", (
        "import sqlite3,json,os; p='/var/lib/skygrid/ipam.sqlite'; c=os.path.exists(p) and sqlite3.connect(p);"
        "print(json.dumps({r[0]: {'ip': r[1], 'mac': r[2], 'pool': r[3]} for r in "
        "(c.execute('select owner, ip, mac, pool from leases') if c else [])}))"), check=True).stdout
    return json.loads(out)


def checked_leases():
    """The IPAM host's leases, checked: one a slot, no IP or MAC twice across hosts, each in its worker node's
    subnet and taken by its VM (DHCP reservation); no worker node keeps a lease database of its own."""
    leased = leases()
    assert sorted(leased) == sorted(ALL_SLOTS)
    ips = [lease["ip"] for lease in leased.values()]
    macs = [lease["mac"] for lease in leased.values()]
    assert len(set(ips)) == len(ips) and len(set(macs)) == len(macs), leased
    for slot, lease in leased.items():
        host = host_of(slot)
        subnet = "10.254.9%s.0/24" % host[-1]
        assert ipaddress.ip_address(lease["ip"]) in ipaddress.ip_network(subnet), (slot, lease)
        assert lease["ip"] in virsh(host, "domifaddr", slot, "--source", "lease")  # took exactly its lease
    for host in WORKERS:
        assert in_host(host, "test", "-e", "/var/lib/skygrid/ipam.sqlite").returncode == 1
    return leased


def wait_for(what, check, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out after %ss waiting for %s" % (timeout, what)
        time.sleep(1)


@pytest.fixture(scope="session")
def testbed():
    """The hosts up (sshd, libvirtd, munge, Slurm), the VO side serving its signed lists to them."""
    sh("bash", os.path.join(ROOT, "scripts", "testbed.sh"), "start")  # the VO image build needs no more
    start = subprocess.run(["bash", TESTBED, "start"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           check=False)
    assert start.returncode == 0, start.stdout[-3000:]
    sh(sys.executable, os.path.join(ROOT, "scripts", "site_in_a_box", "prepare.py"), "--dir", VO_DIR,
       "--address", IMAGE_SERVER[0], "--port", IMAGE_SERVER[1])
    yield INVENTORY
    if os.environ.get("SKYGRID_MULTIHOST_KEEP") != "1":
        sh(sys.executable, os.path.join(ROOT, "scripts", "site_in_a_box", "prepare.py"), "--dir", VO_DIR, "--stop")
        sh("bash", TESTBED, "stop")


@pytest.fixture(scope="session")
def site(testbed):
    """The site not converted (whatever an earlier run left is reverted)."""
    rc, out = run_playbook("revert_worker_nodes")
    assert rc == 0, out[-3000:]
    yield testbed
    run_playbook("revert_worker_nodes")


@pytest.fixture(scope="session")
def converted_site(site):
    rc, out = run_playbook("convert_worker_nodes")
    assert rc == 0, out[-4000:]
    yield site
