"""Live test bed fixtures: a storage pool, a base image, an isolated network and the tiny guest; and the
Slurm test bed (scripts/slurm-testbed.sh) with the helpers the Slurm tests share.

Everything the tests create is named with the ``sgtest`` prefix and removed before and after the
session. The network is isolated (no <forward>): nothing a test does leaves this machine.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import time

import pytest

libvirt = pytest.importorskip("libvirt")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
URI = "qemu:///system"
PREFIX = "sgtest"
POOL = PREFIX + "-pool"
POOL_DIR = "/var/lib/skygrid-test/pool"
NETWORK = PREFIX + "-net"
NET_PREFIX = "192.168.237"
BASE_VOLUME = "sgtest-base.qcow2"
GUEST_CACHE = os.path.join(os.environ.get("SKYGRID_CACHE", "/var/cache/skygrid"), "guest")

# The MAC/IP the guest boot test reserves in the network's DHCP.
GUEST_MAC = "52:54:00:5a:00:01"
GUEST_IP = NET_PREFIX + ".11"


def _cleanup(conn):
    for dom in conn.listAllDomains():
        if dom.name().startswith(PREFIX):
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    for net in conn.listAllNetworks():
        if net.name().startswith(PREFIX):
            if net.isActive():
                net.destroy()
            net.undefine()
    for pool in conn.listAllStoragePools():
        if pool.name().startswith(PREFIX):
            if pool.isActive():
                for vol in pool.listAllVolumes():
                    vol.delete(0)
                pool.destroy()
            pool.undefine()


@pytest.fixture(scope="session")
def conn():
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    try:
        connection = libvirt.open(URI)
    except libvirt.libvirtError as exc:
        pytest.fail("libvirtd is not reachable at %s (%s): run scripts/testbed.sh start" % (URI, exc))
    _cleanup(connection)
    yield connection
    _cleanup(connection)
    connection.close()


@pytest.fixture(scope="session")
def pool(conn):
    os.makedirs(POOL_DIR, exist_ok=True)
    xml = ("<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>" % (POOL, POOL_DIR))
    storage_pool = conn.storagePoolDefineXML(xml, 0)
    storage_pool.create(0)
    storage_pool.refresh(0)
    return storage_pool


@pytest.fixture(scope="session")
def base_volume(pool):
    """A 64 MiB qcow2 'staged image' (the tiny guest boots from its kernel; the disk is a real overlay base)."""
    xml = ("<volume><name>%s</name><capacity unit='MiB'>64</capacity>"
           "<target><format type='qcow2'/></target></volume>" % BASE_VOLUME)
    return pool.createXML(xml, 0)


@pytest.fixture(scope="session")
def network(conn):
    xml = """<network><name>%(name)s</name><bridge name='sgtest-br0' stp='on' delay='0'/>
      <ip address='%(p)s.1' netmask='255.255.255.0'><dhcp><range start='%(p)s.100' end='%(p)s.200'/>
      <host mac='%(mac)s' name='sgtest-guest' ip='%(ip)s'/></dhcp></ip></network>""" % {
        "name": NETWORK, "p": NET_PREFIX, "mac": GUEST_MAC, "ip": GUEST_IP}
    net = conn.networkDefineXML(xml)
    net.create()
    return net


@pytest.fixture(scope="session")
def guest():
    """The tiny test guest's kernel and initramfs (built and cached by tests/guest/build.sh)."""
    subprocess.run(["bash", os.path.join(ROOT, "tests", "guest", "build.sh")], check=True,
                   stdout=subprocess.DEVNULL)
    kernel, initrd = os.path.join(GUEST_CACHE, "vmlinuz"), os.path.join(GUEST_CACHE, "initrd.img")
    assert os.path.exists(kernel) and os.path.exists(initrd)
    return {"kernel": kernel, "initrd": initrd}


def wait_for(predicate, timeout, what="condition", interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))


# ------------------------------------------------------------------------------------------ Slurm test bed

SLURM_TESTBED = os.path.join(ROOT, "scripts", "slurm-testbed.sh")


def sh(*argv, check=True, stdin=None):
    proc = subprocess.run(list(argv), input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          check=False)
    if check and proc.returncode != 0:
        raise AssertionError("%s failed (%d): %s%s" % (" ".join(argv), proc.returncode, proc.stdout, proc.stderr))
    return proc


def slurm_node(name):
    """``scontrol show node`` of ``name`` on one line, or None when Slurm does not know it."""
    proc = sh("scontrol", "-o", "-F", "show", "node", name, check=False)
    return proc.stdout if proc.returncode == 0 else None


def stop_test_slurmds(prefix):
    """Stop the extra slurmds a test started as dynamic nodes named ``<prefix>*`` (pid files /run/slurmd-%n.pid)."""
    for pidfile in glob.glob("/run/slurmd-%s*.pid" % prefix):
        try:
            with open(pidfile) as handle:
                pid = int(handle.read().strip())
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda pid=pid: not os.path.exists("/proc/%d" % pid), 20, "slurmd %d to stop" % pid)
        except (ValueError, ProcessLookupError, FileNotFoundError):
            pass
        if os.path.exists(pidfile):
            os.unlink(pidfile)


@pytest.fixture(scope="session")
def slurm_testbed():
    """munged, slurmctld and this host's slurmd running on loopback (started if needed; idempotent)."""
    if os.geteuid() != 0:
        pytest.skip("the Slurm test bed needs root")
    sh("bash", SLURM_TESTBED, "start")
