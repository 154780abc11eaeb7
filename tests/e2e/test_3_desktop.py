"""Desktop <-> grid parity: a normal (non-root) user runs a VO's VM with playbooks/desktop_vm.yml on
qemu:///session with user-mode networking - the VO's signed list verified, its image staged into a pool
in the user's home, the same VM (image, provenance, contextualisation minus the batch join) booted - then
a second run changes nothing and removal leaves no VM.

The user (``sgops-desk``) and its per-user libvirtd are made for the test and removed afterwards. The
checkout's .venv lives under root's pyenv, which a normal user cannot run, so the user gets a small venv of
its own (Debian's python3, ansible-core and libvirt-python pinned as in requirements.txt), as a desktop
user would install them."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import time

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils.images.names import volume_name

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USER = "sgops-desk"
VENV = os.path.join(os.environ.get("SKYGRID_CACHE", "/var/cache/skygrid"), "desktop-venv")
VM = "atlas-desktop-1"


def pinned(*names):
    with open(os.path.join(ROOT, "requirements.txt")) as handle:
        lines = [line.split("#")[0].strip() for line in handle]
    return [line for line in lines if line.split("==")[0] in names]


def as_user(*args, home):
    env = {"HOME": home, "PATH": os.path.join(VENV, "bin") + ":/usr/bin:/bin", "LANG": "C.UTF-8",
           "ANSIBLE_CONFIG": os.path.join(ROOT, "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_COLLECTIONS_PATH": os.path.join(ROOT, "collections")}
    return subprocess.run(["runuser", "-u", USER, "--", "env", "-i"] + ["%s=%s" % item for item in env.items()]
                          + list(args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          check=False)


def _remove_user():
    try:
        uid = pwd.getpwnam(USER).pw_uid
    except KeyError:
        return
    # The per-user libvirtd and its QEMU processes this test started (by process id, owned by the test user).
    pids = subprocess.run(["ps", "-u", str(uid), "-o", "pid="], stdout=subprocess.PIPE, text=True, check=False).stdout
    for pid in pids.split():
        subprocess.run(["kill", "-9", pid], check=False)
    time.sleep(0.5)
    subprocess.run(["userdel", "-r", USER], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The user's lock directory (without XDG_RUNTIME_DIR, under /tmp) outlives it.
    shutil.rmtree("/tmp/skygrid-%d" % uid, ignore_errors=True)


@pytest.fixture(scope="module")
def desktop_user():
    if os.geteuid() != 0:
        pytest.fail("run as root: the test creates the non-root user it runs the playbook as")
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "site_in_a_box", "prepare.py")], check=True,
                   stdout=subprocess.DEVNULL)  # the VO side: signed lists on 127.0.0.1, the VO image
    if not os.path.exists(os.path.join(VENV, "bin", "ansible-playbook")):
        subprocess.run(["/usr/bin/python3", "-m", "venv", VENV], check=True)
        subprocess.run([os.path.join(VENV, "bin", "pip"), "install", "-q"] + pinned("ansible-core", "libvirt-python"),
                       check=True)
    _remove_user()
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", USER], check=True)
    yield pwd.getpwnam(USER).pw_dir
    _remove_user()


def playbook(home, *extra):
    return as_user("ansible-playbook", "-i", os.path.join(ROOT, "inventories", "local"),
                   os.path.join(ROOT, "playbooks", "desktop_vm.yml"), "-e", "desktop_vo=atlas", *extra, home=home)


def changed(output):
    return sum(int(n) for n in re.findall(r"changed=(\d+)", output))


def test_a_vo_vm_on_a_desktop_as_a_normal_user(desktop_user):
    home = desktop_user
    first = playbook(home)
    assert first.returncode == 0, first.stdout[-4000:]
    assert "virsh -c qemu:///session console %s" % VM in first.stdout

    console = os.path.join(home, ".cache", "skygrid", VM + "-console.log")
    deadline = time.monotonic() + 300
    text = ""
    while time.monotonic() < deadline and "SKYGRID-VO: ready" not in text:
        time.sleep(2)
        text = open(console, errors="replace").read() if os.path.exists(console) else ""
    assert "SKYGRID-VO: ready" in text, text[-3000:]
    assert "instance-id %s-skygrid-demo-atlas-worker" % VM in text  # the slot VMs' seed, made the same way
    assert "dhcp 10.0.2.15" in text  # QEMU user-mode networking
    assert "error(s)" in text and " 0 error(s)" in text

    xml = as_user("virsh", "-c", "qemu:///session", "dumpxml", VM, home=home).stdout
    assert "<interface type='user'>" in xml
    assert "<skygrid:vo>atlas</skygrid:vo>" in xml and "<skygrid:trust_class>2</skygrid:trust_class>" in xml
    assert os.path.exists(os.path.join(home, ".local", "share", "skygrid", "images",
                                       volume_name("atlas", "skygrid-demo-atlas-worker", "1")))
    assert "qemu:///system" not in first.stdout

    again = playbook(home)
    assert again.returncode == 0 and changed(again.stdout) == 0, again.stdout[-3000:]

    removed = playbook(home, "-e", "desktop_state=absent")
    assert removed.returncode == 0, removed.stdout[-3000:]
    listed = as_user("virsh", "-c", "qemu:///session", "list", "--all", "--name", home=home)
    assert VM not in listed.stdout.split()


def test_a_missing_vo_is_named(desktop_user):
    result = as_user("ansible-playbook", "-i", os.path.join(ROOT, "inventories", "local"),
                     os.path.join(ROOT, "playbooks", "desktop_vm.yml"), "-e", "desktop_vo=cms", home=desktop_user)
    assert result.returncode != 0 and "desktop_vo: give the VO" in result.stdout and "atlas, lhcb" in result.stdout
