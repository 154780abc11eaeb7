"""The site in a box as tests drive it: playbooks run as a site admin runs them (the checkout's
ansible.cfg and collection, inventories/local), their recap and changed tasks read back, and Slurm
commands in the site's or a VO's cluster. Used by tests/e2e, tests/ee and tests/faults."""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INVENTORY = os.path.join(ROOT, "inventories", "local")
RECAP = re.compile(r"^\S+\s*: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def playbook_env():
    """The environment a site admin's checkout runs playbooks with: its ansible.cfg and collection."""
    return dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, "collections"),
                PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))


def playbook_command(name, *args, inventory=INVENTORY):
    return ["ansible-playbook", "-i", inventory, os.path.join(ROOT, "playbooks", name + ".yml")] + list(args)


def run_playbook(name, *args):
    """Run playbooks/<name>.yml against the local site; return (rc, output)."""
    proc = subprocess.run(playbook_command(name, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=playbook_env(), check=False, cwd=ROOT)
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


def start_site_in_a_box():
    """Libvirt, Slurm and the demo's VO side (CA, endorsers, signed lists served on 127.0.0.1), as
    make demo has them; each start is idempotent, so this also restarts what anyone stopped."""
    sh("bash", os.path.join(ROOT, "scripts", "testbed.sh"), "start")
    sh("bash", os.path.join(ROOT, "scripts", "slurm-testbed.sh"), "start")
    sh(sys.executable, os.path.join(ROOT, "scripts", "site_in_a_box", "prepare.py"))
