"""skygrid.fabric.run_lock through real ansible-playbook runs on the controller (localhost, no site): the
lock belongs to the ansible-playbook process, a second run waits and names it, a SIGKILL of the first
frees it, check mode and a second ask in the same run change nothing. Lock names are unique per test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils import locks, run_lock
from lockprobe import run_lock_free

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PLAYBOOK = """
- name: Hold the run lock
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Take the lock
      skygrid.fabric.run_lock:
        hosts: "{{ lock_hosts }}"
        timeout: "{{ lock_timeout | default(30) }}"
      run_once: true
      register: first
    - name: Show it
      ansible.builtin.debug:
        msg: "first: {{ first.msg }}"
    - name: Ask again in the same run
      skygrid.fabric.run_lock:
        hosts: "{{ lock_hosts }}"
      register: again
    - name: Show the second answer
      ansible.builtin.debug:
        msg: "again: {{ again.msg }}"
    - name: Keep the run going
      ansible.builtin.pause:
        seconds: "{{ hold_s | default(0) }}"
    - name: Give the lock back
      skygrid.fabric.run_lock:
        hosts: "{{ lock_hosts }}"
        state: released
      when: release | default(false) | bool
    - name: Stay after releasing
      ansible.builtin.pause:
        seconds: "{{ after_s | default(0) }}"
"""


def processes_naming(text):
    """The processes whose command line holds ``text`` (this test's unique lock names)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                if text.encode() in handle.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.fixture
def hosts():
    names = ["sgtest-rl-%s-%d" % (uuid.uuid4().hex[:8], index) for index in (2, 1)]
    yield names
    # A killed ansible-playbook leaves the worker of its current task (workers run in sessions of their
    # own) pausing until the task's end: end this test's ones.
    for pid in processes_naming(names[0]):
        os.kill(pid, signal.SIGKILL)
    for name in names:
        path = locks.lock_path(run_lock.PREFIX + name)
        if os.path.exists(path):
            os.unlink(path)


@pytest.fixture
def playbook(tmp_path):
    path = tmp_path / "hold_lock.yml"
    path.write_text(PLAYBOOK)
    return str(path)


def start(playbook, hosts, *extra):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, "collections"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    command = ["ansible-playbook", "-i", "localhost,", "-c", "local", "-e",
               "ansible_python_interpreter=" + sys.executable, "-e", '{"lock_hosts": %s}' % str(hosts).replace("'", '"'),
               playbook] + list(extra)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def wait_held(host, timeout=60):
    deadline = time.monotonic() + timeout
    while not (os.path.exists(locks.lock_path(run_lock.PREFIX + host)) and not run_lock_free(host)):
        assert time.monotonic() < deadline, "the first run never took the lock"
        time.sleep(0.1)


def test_a_second_run_waits_names_the_first_and_gets_the_lock_once_the_first_is_killed(playbook, hosts):
    first = start(playbook, hosts, "-e", "hold_s=30")
    try:
        wait_held(hosts[0])
        started = time.monotonic()
        second = start(playbook, hosts, "-e", "lock_timeout=2")
        out = second.communicate(timeout=120)[0]
        assert second.returncode != 0, out
        assert time.monotonic() - started >= 2
        low = sorted(hosts)[0]
        holder = "another run holds the fabric lock of %s: hold_lock.yml, pid %d on " % (low, first.pid)
        assert "run_lock: " + holder in out, out  # told while waiting
        assert holder in out and "waited 2 s" in out and "fabric_run_lock_timeout" in out, out
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # as a cancelled CI job: no chance to clean up
        first.wait()
    third = start(playbook, hosts, "-e", "lock_timeout=1")
    out = third.communicate(timeout=120)[0]
    assert third.returncode == 0, out
    assert "first: holding the run lock of %s" % ", ".join(sorted(hosts)) in out, out
    assert "again: holding the run lock of %s (this run held %s already)" % (
        ", ".join(sorted(hosts)), ", ".join(sorted(hosts))) in out, out
    assert "changed=0" in out, out
    deadline = time.monotonic() + 3  # the run ended: its holder lets go at its next look (0.2 s)
    while not all(run_lock_free(host) for host in hosts):
        assert time.monotonic() < deadline, "the lock outlived the run"
        time.sleep(0.05)


def test_check_mode_takes_nothing_and_released_frees_at_once(playbook, hosts):
    first = start(playbook, hosts, "-e", "release=true", "-e", "after_s=30")
    try:
        wait_held(hosts[0])
        checked = start(playbook, hosts, "--check", "-e", "lock_timeout=0")
        out = checked.communicate(timeout=120)[0]
        assert checked.returncode == 0 and "changed=0" in out, out
        assert "first: would wait for" in out and "hold_lock.yml, pid %d" % first.pid in out, out
        deadline = time.monotonic() + 60
        while not all(run_lock_free(host) for host in hosts):  # the first run gave the locks back and goes on
            assert time.monotonic() < deadline, "state=released did not free the locks"
            time.sleep(0.2)
        assert first.poll() is None
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
