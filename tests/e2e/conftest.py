"""The site in a box for end-to-end tests: this machine as a one-node Slurm site (inventories/local),
with the demo's signed VO images served from 127.0.0.1. Playbooks run as a site admin runs them."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INVENTORY = os.path.join(ROOT, "inventories", "local")
RECAP = re.compile(r"^\S+\s*: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def run_playbook(name, *args):
    """Run playbooks/<name>.yml against the local site; return (rc, output)."""
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, "collections"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run(["ansible-playbook", "-i", INVENTORY, os.path.join(ROOT, "playbooks", name + ".yml")] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, check=False, cwd=ROOT)
    return proc.returncode, proc.stdout


def recap(output):
    """(ok, changed, unreachable, failed) summed over the PLAY RECAP lines."""
    totals = [0, 0, 0, 0]
    for match in RECAP.finditer(output):
        for index in range(4):
            totals[index] += int(match.group(index + 1))
    return tuple(totals)


TASK_HEADER = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(.*)\] \*+\s*$")
CHANGED_LINE = re.compile(r"^changed: \[([^\]]+)\](?: => \(item=(.*)\))?")


def changed_tasks(output):
    """Every 'changed' result of a playbook run, as 'task [host] (item)' lines, in order."""
    task, found = "?", []
    for line in output.splitlines():
        header = TASK_HEADER.match(line)
        if header:
            task = header.group(1)
            continue
        changed = CHANGED_LINE.match(line)
        if changed:
            item = " (item=%s)" % changed.group(2)[:120] if changed.group(2) else ""
            found.append("%s [%s]%s" % (task, changed.group(1), item))
    return found


def assert_unchanged(rc, output, what):
    """An idempotency check that names the tasks that changed, not the tail of the output."""
    assert rc == 0, "%s failed:\n%s" % (what, output[-4000:])
    changed = changed_tasks(output)
    listed = "\n  ".join(changed or ["(the recap counts changes; no 'changed:' line named them)"])
    assert recap(output)[1] == 0 and not changed, "%s changed something:\n  %s" % (what, listed)


# Each demo VO's VMs form a cluster of their own (docs/SECURITY.md): its clients read the VO's slurm.conf.
VOS = ("atlas", "lhcb")


def vo_env(vo):
    """The environment of Slurm commands in ``vo``'s cluster (None: the site's cluster)."""
    return {"SLURM_CONF": "/etc/slurm/vo/%s/slurm.conf" % vo} if vo else None


def sh(*args, check=True, vo=None):
    """Run a command; with ``vo``, its Slurm commands talk to that VO's cluster."""
    env = dict(os.environ, **vo_env(vo)) if vo else None
    return subprocess.run(list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=check, env=env)


@pytest.fixture(scope="session")
def site():
    """Libvirt, Slurm and the VO side ready; the site not converted."""
    sh("bash", os.path.join(ROOT, "scripts", "testbed.sh"), "start")
    sh("bash", os.path.join(ROOT, "scripts", "slurm-testbed.sh"), "start")
    sh(sys.executable, os.path.join(ROOT, "scripts", "site_in_a_box", "prepare.py"))
    rc, out = run_playbook("revert_worker_nodes")  # whatever an earlier run left
    assert rc == 0, out[-3000:]
    yield INVENTORY
    run_playbook("revert_worker_nodes")


@pytest.fixture(scope="session")
def converted_site(site):
    rc, out = run_playbook("convert_worker_nodes")
    assert rc == 0, out[-4000:]
    yield site
