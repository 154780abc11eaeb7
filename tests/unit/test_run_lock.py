"""The run lock with real processes: a real holder process, real flocks, owners killed with SIGKILL."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import threading
import time

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils import locks, run_lock
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from lockprobe import run_lock_free


@pytest.fixture
def lock_dir(tmp_path):
    return str(tmp_path / "locks")


@pytest.fixture
def spawn():
    """Owner processes (stand-ins for ansible-playbook), killed at the end."""
    procs = []

    def start(*argv):
        proc = subprocess.Popen(list(argv) or ["sleep", "120"])
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def lockable(lock_dir, host):
    return run_lock_free(host, lock_dir)


def wait_until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def alive(pid):
    return run_lock.process_start(pid) is not None


def test_the_holder_keeps_the_lock_while_its_owner_lives_and_a_sigkill_of_the_owner_frees_it(lock_dir, spawn):
    owner = spawn()
    got = run_lock.RunLock(["node01", "node02"], run_lock.Owner(owner.pid, "convert_worker_nodes.yml"),
                           lock_dir).acquire(0)
    assert got["taken"] == ["node01", "node02"] and got["already"] == []
    holder = got["holder_pid"]
    assert alive(holder) and holder not in (os.getpid(), owner.pid)
    time.sleep(0.5)  # several of the holder's polls
    assert not lockable(lock_dir, "node01") and not lockable(lock_dir, "node02")

    owner.send_signal(signal.SIGKILL)  # not collected: a zombie, as a killed ansible-playbook may be for a moment
    assert wait_until(lambda: lockable(lock_dir, "node01") and lockable(lock_dir, "node02"), 3)
    assert wait_until(lambda: not alive(holder), 3)


def test_a_second_run_waits_then_fails_naming_the_holder(lock_dir, spawn):
    first, second = spawn(), spawn()
    run_lock.RunLock(["node01"], run_lock.Owner(first.pid, "convert_worker_nodes.yml", "ctl1"), lock_dir).acquire(0)
    seen = []
    started = time.monotonic()
    with pytest.raises(FabricError) as failure:
        run_lock.RunLock(["node01"], run_lock.Owner(second.pid, "rebalance.yml"), lock_dir).acquire(
            1, on_wait=lambda host, record: seen.append((host, record["playbook"], record["pid"])))
    waited = time.monotonic() - started
    text = str(failure.value)
    assert failure.value.field == "timeout"
    assert ("another run holds the fabric lock of node01: convert_worker_nodes.yml, pid %d on ctl1, since "
            % first.pid) in text
    assert "waited 1 s" in text and "fabric_run_lock_timeout" in text
    assert 1 <= waited < 4
    assert seen == [("node01", "convert_worker_nodes.yml", first.pid)]  # told once, while waiting


def test_timeout_zero_fails_at_once(lock_dir, spawn):
    first, second = spawn(), spawn()
    run_lock.RunLock(["node01"], run_lock.Owner(first.pid, "revert_worker_nodes.yml"), lock_dir).acquire(0)
    started = time.monotonic()
    with pytest.raises(FabricError, match="revert_worker_nodes.yml, pid %d" % first.pid):
        run_lock.RunLock(["node01"], run_lock.Owner(second.pid, "rebalance.yml"), lock_dir).acquire(0)
    assert time.monotonic() - started < 1


def test_a_waiting_run_gets_the_lock_when_the_holding_run_is_killed(lock_dir, spawn):
    first, second = spawn(), spawn()
    run_lock.RunLock(["node01"], run_lock.Owner(first.pid, "convert_worker_nodes.yml"), lock_dir).acquire(0)
    threading.Timer(1.0, first.kill).start()
    got = run_lock.RunLock(["node01"], run_lock.Owner(second.pid, "convert_worker_nodes.yml"), lock_dir).acquire(30)
    assert got["taken"] == ["node01"]
    assert 0.9 <= got["waited_s"] < 5
    assert got["waited_for"]["node01"]["pid"] == first.pid


def test_a_reused_pid_does_not_keep_the_lock(lock_dir, spawn):
    """The owner's PID now belongs to another process (same number, other start time): the holder lets go."""
    other = spawn()
    owner = run_lock.Owner(other.pid, "convert_worker_nodes.yml")
    owner.start += 1  # the process we were started for had this PID but started at another time
    got = run_lock.RunLock(["node01"], owner, lock_dir).acquire(0)
    assert wait_until(lambda: lockable(lock_dir, "node01"), 3)
    assert wait_until(lambda: not alive(got["holder_pid"]), 3)
    assert other.poll() is None  # the innocent process with the reused PID is untouched


def test_the_same_run_asking_again_succeeds_at_once(lock_dir, spawn):
    owner_proc = spawn()
    owner = run_lock.Owner(owner_proc.pid, "site_in_a_box.yml")
    first = run_lock.RunLock(["node01"], owner, lock_dir).acquire(0)
    # another worker of the same run (same ansible-playbook) with a wider host list
    again = run_lock.RunLock(["node02", "node01"], run_lock.Owner(owner_proc.pid, "site_in_a_box.yml"),
                             lock_dir).acquire(0)
    assert again["already"] == ["node01"] and again["taken"] == ["node02"]
    assert again["holder_pid"] != first["holder_pid"]
    found = run_lock.RunLock(["node01", "node02"], owner, lock_dir).survey()
    assert found == {"node01": "this run", "node02": "this run"}


def test_locks_are_taken_in_one_order_so_runs_never_wait_in_a_circle(lock_dir, spawn):
    """A run wanting node02 and node01 while another holds node01 waits for node01 first, holding nothing:
    a run that holds node02 and wants node01 cannot exist."""
    first, second = spawn(), spawn()
    run_lock.RunLock(["node01"], run_lock.Owner(first.pid, "convert_worker_nodes.yml"), lock_dir).acquire(0)
    waiting = threading.Thread(target=lambda: run_lock.RunLock(
        ["node02", "node01"], run_lock.Owner(second.pid, "rebalance.yml"), lock_dir).acquire(3))
    waiting.start()
    time.sleep(1)
    assert waiting.is_alive()
    locks.open_lock(run_lock.PREFIX + "node02", "hosts", lock_dir)
    assert lockable(lock_dir, "node02")
    first.kill()
    waiting.join(5)
    assert not waiting.is_alive()
    assert not lockable(lock_dir, "node01") and not lockable(lock_dir, "node02")


def test_release_ends_this_runs_holder_and_leaves_other_runs_alone(lock_dir, spawn):
    mine, theirs = spawn(), spawn()
    me = run_lock.Owner(mine.pid, "convert_worker_nodes.yml")
    got = run_lock.RunLock(["node01"], me, lock_dir).acquire(0)
    run_lock.RunLock(["node02"], run_lock.Owner(theirs.pid, "rebalance.yml"), lock_dir).acquire(0)
    assert run_lock.RunLock(["node01", "node02"], me, lock_dir).release() == ["node01"]
    assert not alive(got["holder_pid"])
    assert lockable(lock_dir, "node01") and not lockable(lock_dir, "node02")


def test_survey_names_the_holder_without_taking_anything(lock_dir, spawn):
    first, second = spawn(), spawn()
    run_lock.RunLock(["node01"], run_lock.Owner(first.pid, "convert_worker_nodes.yml"), lock_dir).acquire(0)
    found = run_lock.RunLock(["node01", "node02"], run_lock.Owner(second.pid, "rebalance.yml"), lock_dir).survey()
    assert found["node02"] is None and found["node01"]["pid"] == first.pid
    assert lockable(lock_dir, "node02")


def test_process_start_reads_a_command_name_with_spaces_and_parentheses(tmp_path, spawn):
    odd = tmp_path / "a b) (c"
    odd.symlink_to("/bin/sleep")
    proc = spawn(str(odd), "120")
    assert wait_until(lambda: run_lock.process_start(proc.pid) is not None)
    with open("/proc/self/stat") as handle:
        assert run_lock.process_start(os.getpid()) == int(handle.read().rsplit(")", 1)[1].split()[19])
    assert run_lock.process_start(proc.pid) >= run_lock.process_start(os.getpid())


def test_describe_and_bad_input():
    record = {"playbook": "rebalance.yml", "pid": 7, "controller": "ctl1", "since": 0}
    assert run_lock.describe(record) == "rebalance.yml, pid 7 on ctl1, since 1970-01-01 00:00:00 UTC"
    assert "just starting" in run_lock.describe(None)
    with pytest.raises(FabricError, match="hosts: give the inventory host names"):
        run_lock.RunLock([], run_lock.Owner(os.getpid(), "x.yml"))
    with pytest.raises(FabricError, match="does not exist"):
        run_lock.Owner(2 ** 22 + 1, "x.yml")


def test_a_thousand_hosts_fit_past_the_usual_open_file_limit(lock_dir, spawn):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        owner = spawn()
        hosts = ["wn%04d" % index for index in range(1100)]
        got = run_lock.RunLock(hosts, run_lock.Owner(owner.pid, "convert_worker_nodes.yml"), lock_dir).acquire(0)
        assert len(got["taken"]) == 1100
        assert not lockable(lock_dir, "wn0000") and not lockable(lock_dir, "wn1099")
        owner.kill()
        assert wait_until(lambda: lockable(lock_dir, "wn1099"), 3)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
