"""Helpers for the tests that run against the live Torque test bed (scripts/torque-testbed.sh): TORQUE 6.1.3
built from source, pbs_server, pbs_sched and this host's pbs_mom, plus a second pbs_mom in a network namespace
(scripts/torque/netns-mom.sh) as node ``sgtrq-vm1`` - a VM node as pbs_server sees one: its own address and a
name that resolves. Jobs are submitted with qsub as the normal user ``sgtorque`` (a member of the test VO group
``sgtrq-atlas`` by a secondary group). Everything a test makes is named ``sgtrq-*`` and removed before and after."""

from __future__ import annotations

import os
import re
import socket

import pytest

from conftest import sh, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTBED = os.path.join(ROOT, "scripts", "torque-testbed.sh")
NETNS_MOM = os.path.join(ROOT, "scripts", "torque", "netns-mom.sh")
BIN = os.path.join(os.environ.get("SKYGRID_TORQUE_PREFIX", "/opt/skygrid/torque-6.1.3"), "bin")
HOST = socket.gethostname()
PREFIX = "sgtrq-"
VM = PREFIX + "vm1"
USER = "sgtorque"
OUTSIDER = "sgtorque2"
GROUP = PREFIX + "atlas"
GROUP2 = PREFIX + "prd"


def tq(command, *args, check=True, stdin=None):
    """A Torque client command of the test bed's install, as root."""
    return sh(os.path.join(BIN, command), *args, check=check, stdin=stdin)


def ok(result):
    assert result["rc"] == 0 and not result.failed, result.get("msg")
    return result


def node_field(name, tag):
    """One element of ``pbsnodes -x NAME`` (None when the node or element is missing)."""
    proc = tq("pbsnodes", "-x", name, check=False)
    match = re.search(r"<%s>([^<]*)</%s>" % (tag, tag), proc.stdout) if proc.returncode == 0 else None
    return match.group(1) if match else None


def node_names():
    out = tq("pbsnodes", "-x", check=False).stdout
    return re.findall(r"<Node><name>([^<]*)</name>", out)


def job_field(job, tag):
    out = tq("qstat", "-f", "-x", job, check=False).stdout
    match = re.search(r"<%s>([^<]*)</%s>" % (tag, tag), out)
    return match.group(1) if match else None


def submit(queue, seconds, *extra, user=USER):
    """A job of ``user`` (sleep ``seconds``) in ``queue``, output discarded; its id."""
    proc = sh("runuser", "-u", user, "--", os.path.join(BIN, "qsub"), "-q", queue, "-N", PREFIX + "job", "-j", "oe",
              "-o", "/dev/null", *extra, stdin="sleep %d\n" % seconds, check=False)
    if proc.returncode != 0:
        raise AssertionError("qsub failed (%d): %s" % (proc.returncode, proc.stderr))
    return proc.stdout.strip()


def wait_running(job, node=VM, timeout=60):
    wait_for(lambda: job_field(job, "job_state") == "R", timeout, "job %s to run" % job)
    assert job_field(job, "exec_host").split("/")[0] == node
    return job


def our_jobs():
    out = tq("qstat", "-f", "-x", check=False).stdout
    jobs = re.findall(r"<Job_Id>([^<]*)</Job_Id><Job_Name>%s" % re.escape(PREFIX), out)
    return [job for job in jobs if job_field(job, "job_state") not in ("C", None)]


def ensure_users():
    for group in (GROUP, GROUP2):
        if sh("getent", "group", group, check=False).returncode != 0:
            sh("groupadd", group)
    for user in (USER, OUTSIDER):
        if sh("id", user, check=False).returncode != 0:
            sh("useradd", "-m", "-U", "-s", "/bin/sh", user)
    sh("usermod", "-aG", GROUP, USER)


def cleanup():
    for job in our_jobs():
        tq("qdel", "-p", job, check=False)
    wait_for(lambda: not our_jobs(), 60, "our jobs to go", interval=0.5)
    for line in tq("qstat", "-Q", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(PREFIX):
            # completed jobs (kept keep_completed seconds) make a queue "busy" too
            for job in tq("qselect", "-q", name, check=False).stdout.split():
                tq("qdel", "-p", job, check=False)
            tq("qmgr", "-c", "delete queue %s" % name, check=False)
    for name in node_names():
        if name.startswith(PREFIX):
            tq("qmgr", "-c", "delete node %s" % name, check=False)


@pytest.fixture(scope="module")
def torque():
    if os.geteuid() != 0:
        pytest.skip("the Torque test bed needs root")
    sh("bash", TESTBED, "start")
    ensure_users()
    sh("bash", NETNS_MOM, "start")
    cleanup()
    yield
    cleanup()
    sh("bash", NETNS_MOM, "stop")
