"""The site over SSH on Torque (SKYGRID_MULTIHOST_TORQUE=1, -e @inventories/multihost_torque.yml): pbs_server
on mh-batch and a pbs_mom on each worker node, each with its own PBS_HOME; convert every worker node (each
taken offline in pbs_server over SSH, VMs with leases from the one IPAM host that join as Torque nodes with
their VO's property), a second run changes nothing, a job per VO submitted on mh-batch runs in a VM of that
VO on a worker node, and the revert leaves no VM, lease, hosts line or Torque node of a VM behind."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest
import yaml
from sitebox import ROOT, VOS, assert_unchanged, sh
from conftest import (ALL_SLOTS, BATCH, SLOTS, STATE, TESTBED, WORKERS, checked_leases, console_log, host_of, in_host,
                      leases, run_playbook, ssh, virsh, vo_of)
from test_1_testbed import ansible

pytestmark = pytest.mark.slow
TORQUE = os.environ.get("SKYGRID_TORQUE_PREFIX", "/opt/skygrid/torque-6.1.3")
VARS_FILE = os.path.join(ROOT, "inventories", "multihost_torque.yml")
with open(VARS_FILE) as _handle:
    _VARS = yaml.safe_load(_handle)
JOB_USER, JOB_UID = _VARS["multihost_torque_job_user"], _VARS["multihost_torque_job_uid"]


def torque_play(name, *args):
    return run_playbook(name, "-e", "@" + VARS_FILE, *args)


def tq(*args):
    """A Torque client command on the batch server."""
    return in_host(BATCH, "env", "PATH=%s/bin:/usr/sbin:/usr/bin:/sbin:/bin" % TORQUE, *args)


def pbs_node(name):
    return tq("pbsnodes", "-x", name).stdout


def pbs_state(name):
    match = re.search(r"<state>([^<]*)</state>", pbs_node(name))
    return match.group(1) if match else None


def torque_nodes():
    return set(re.findall(r"<Node><name>([^<]*)</name>", tq("pbsnodes", "-x").stdout))


def batch_hosts_file():
    return in_host(BATCH, "cat", "/etc/hosts", check=True).stdout


def submit(vo, script):
    """A job of the (normal) job user in the VO's queue, submitted on the batch server; its id."""
    proc = in_host(BATCH, "runuser", "-u", JOB_USER, "--", "env", "PATH=%s/bin:/usr/bin:/bin" % TORQUE, "sh", "-c",
                   'cd /tmp && printf "%s\\n" "$1" | qsub -q "$2" -N sgmh-"$2" -j oe -o /dev/null', "_", script, vo)
    assert proc.returncode == 0, proc.stdout
    return proc.stdout.strip()


def home(host):
    return os.path.join(STATE, "hosts", host[3:], "torque")


@pytest.fixture(scope="module")
def torque_site(testbed):
    """Torque up on the test bed, the site not converted (on either batch system), the job user and a queue
    per VO on mh-batch."""
    if not os.access(os.path.join(TORQUE, "sbin", "pbs_mom"), os.X_OK):
        sh("bash", os.path.join(ROOT, "scripts", "torque", "build.sh"))
    start = subprocess.run(["bash", TESTBED, "start"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           check=False, env=dict(os.environ, SKYGRID_MULTIHOST_TORQUE="1"))
    assert start.returncode == 0, start.stdout[-3000:]
    # One batch system's VMs at a time: whatever an earlier run converted, on Torque or on Slurm, is reverted
    # with that batch system's variables (a revert removes the batch nodes of the VMs it finds).
    if set(ALL_SLOTS) & torque_nodes():
        rc, out = torque_play("revert_worker_nodes")
        assert rc == 0, out[-3000:]
    rc, out = run_playbook("revert_worker_nodes")
    assert rc == 0, out[-3000:]
    rc, out = torque_play("revert_worker_nodes")
    assert rc == 0, out[-3000:]
    created = subprocess.run(["id", "-u", JOB_USER], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             check=False).returncode != 0
    if created:  # the hosts share this machine's /etc/passwd
        sh("useradd", "-m", "-u", str(JOB_UID), "-U", "-s", "/bin/sh", JOB_USER)
    for vo in VOS:  # the queues the site's CE submits to, made over SSH with the collection's module
        proc = ansible("batch_servers", "skygrid.fabric.batch_queue", "backend=torque name=%s property=%s" % (vo, vo))
        assert proc.returncode == 0, proc.stdout
    yield
    torque_play("revert_worker_nodes")
    for vo in VOS:
        ansible("batch_servers", "skygrid.fabric.batch_queue", "backend=torque name=%s state=absent" % vo)
    if created:
        sh("userdel", "-r", JOB_USER, check=False)


@pytest.fixture(scope="module")
def converted(torque_site):
    rc, out = torque_play("convert_worker_nodes")
    assert rc == 0, out[-4000:]


def test_torque_runs_on_the_batch_server_and_a_mom_on_each_worker_node(torque_site):
    # an SSH session on the batch server finds Torque's commands, as the playbooks' delegated tasks need
    assert ssh(BATCH, "command -v pbsnodes", check=True).stdout.strip() == os.path.join(TORQUE, "bin", "pbsnodes")
    assert os.path.exists(os.path.join(home(BATCH), "server_priv", "serverdb"))
    assert not os.path.exists(os.path.join(home(BATCH), "mom_priv", "mom.lock"))  # the server is no compute node
    moms = set()
    for host in WORKERS:
        assert pbs_state(host) == "free", pbs_node(host)  # its pbs_mom reported, the node is in service
        # its own PBS_HOME (mom_priv) at /var/spool/torque, and no server state
        assert in_host(host, "cat", "/var/spool/torque/.skygrid-multihost", check=True).stdout.split()[2] == \
            host + ".skygrid.test"
        assert not os.path.exists(os.path.join(home(host), "server_priv"))
        with open(os.path.join(home(host), "mom_priv", "mom.lock")) as handle:
            pid = re.search(r"\d+", handle.read()).group(0)  # the pid, NUL-padded
        assert os.readlink("/proc/%s/exe" % pid) == os.path.join(TORQUE, "sbin", "pbs_mom")
        with open(os.path.join(STATE, "hosts", host[3:], "run", "holder.pid")) as handle:
            holder = handle.read().strip()
        assert os.readlink("/proc/%s/ns/net" % pid) == os.readlink("/proc/%s/ns/net" % holder), host
        moms.add(pid)
    assert len(moms) == len(WORKERS)
    # trqauthd's socket (/tmp/trqauthd-unix, compiled in) is mh-batch's own, not the machine's
    inside = in_host(BATCH, "stat", "-c", "%d:%i", "/tmp/trqauthd-unix", check=True).stdout.strip()
    if os.path.exists("/tmp/trqauthd-unix"):
        outside = os.stat("/tmp/trqauthd-unix")
        assert inside != "%d:%d" % (outside.st_dev, outside.st_ino)


def test_convert_offlines_every_worker_node_and_joins_its_vms(converted):
    for host in WORKERS:
        assert sorted(virsh(host, "list", "--name").split()) == sorted(SLOTS[host]), host
        node = pbs_node(host)
        assert pbs_state(host).startswith("offline") and "skygrid.fabric" in node, node  # out of scheduling
    for slot in ALL_SLOTS:  # each VM a Torque node, free, with its VO's property
        node = pbs_node(slot)
        assert pbs_state(slot) == "free", node
        assert "<properties>%s,vm</properties>" % vo_of(slot) in node, node


def test_leases_come_from_the_one_ipam_host_and_name_the_vms_on_the_server(converted):
    for slot, lease in checked_leases().items():
        # pbs_server knows a MOM by its address: the slot's name resolves there to its lease
        assert in_host(BATCH, "getent", "hosts", slot, check=True).stdout.split()[0] == lease["ip"]


def test_a_second_run_changes_nothing(converted):
    rc, out = torque_play("convert_worker_nodes")
    assert_unchanged(rc, out, "the second convert run on Torque")


def test_a_job_per_vo_runs_in_a_vm_of_that_vo_on_a_worker_node(converted):
    jobs = {vo: submit(vo, "echo SKYGRID-JOB $PBS_JOBID ran on $(hostname) for %s > /dev/ttyS0" % vo) for vo in VOS}
    for vo, job in jobs.items():
        assert re.match(r"^\d+\.mh-batch", job), job
    found = {}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(found) < len(jobs):
        for vo, job in jobs.items():
            for slot in ALL_SLOTS:
                if os.path.exists(console_log(slot)):
                    with open(console_log(slot), errors="replace") as handle:
                        if "SKYGRID-JOB %s ran on " % job in handle.read():
                            found[vo] = slot
        time.sleep(2)
    assert sorted(found) == sorted(VOS), "jobs %s ran (console lines) only for %s" % (jobs, found)
    for vo, slot in found.items():
        with open(console_log(slot), errors="replace") as handle:
            assert "SKYGRID-JOB %s ran on %s for %s" % (jobs[vo], slot, vo) in handle.read()
        assert vo_of(slot) == vo and host_of(slot) in WORKERS and host_of(slot) != BATCH
        record = tq("qstat", "-f", "-x", jobs[vo]).stdout  # while the server keeps the completed job
        assert "<exec_host>%s/" % slot in record or "Unknown Job" in record, record


def test_revert_leaves_nothing_on_any_host(converted):
    rc, out = torque_play("revert_worker_nodes")
    assert rc == 0, out[-3000:]
    for host in WORKERS:
        assert not virsh(host, "list", "--all", "--name").split(), host
        assert not in_host(host, "sh", "-c", "ls /var/lib/skygrid/images | grep '^%s-' || true" % host).stdout.strip()
        assert pbs_state(host) == "free", pbs_node(host)  # back in service
        assert "<host " not in virsh(host, "net-dumpxml", "skygrid-mh")  # no DHCP reservation left
    assert not leases()
    assert not set(ALL_SLOTS) & torque_nodes()
    hosts_file = batch_hosts_file()
    assert "skygrid.fabric VM slots" not in hosts_file and not [slot for slot in ALL_SLOTS if slot in hosts_file]
    rc, out = torque_play("revert_worker_nodes")
    assert_unchanged(rc, out, "the second revert on Torque")
