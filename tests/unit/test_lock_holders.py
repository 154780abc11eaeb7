"""lock_holders: who holds a lock on a file, read from /proc/locks (named in lock-timeout errors)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils import lock_holders

SAMPLE = """1: POSIX  ADVISORY  WRITE 5416 fe:00:2146849 120 120
2: POSIX  ADVISORY  READ 5416 fe:00:2146849 123 123
3: FLOCK  ADVISORY  WRITE 31792 08:11:5309581 0 EOF
3: -> FLOCK  ADVISORY  WRITE 31800 08:11:5309581 0 EOF
4: OFDLCK ADVISORY  READ -1 00:2f:77 0 EOF
garbage line
"""


def test_parse_reads_holders_and_skips_waiters():
    assert lock_holders.parse(SAMPLE) == [
        ("POSIX", "WRITE", 5416, 0xfe, 0, 2146849),
        ("POSIX", "READ", 5416, 0xfe, 0, 2146849),
        ("FLOCK", "WRITE", 31792, 0x08, 0x11, 5309581),
        ("OFDLCK", "READ", -1, 0, 0x2f, 77),
    ]


def _fake_locks(tmp_path, target, pid, mode="WRITE"):
    info = os.stat(target)
    path = tmp_path / "locks"
    path.write_text("1: FLOCK  ADVISORY  %s %d %02x:%02x:%d 0 EOF\n"
                    % (mode, pid, os.major(info.st_dev), os.minor(info.st_dev), info.st_ino))
    return str(path)


def test_holders_match_device_and_inode_and_leave_out_readers_and_this_process(tmp_path):
    target = tmp_path / "db.lock"
    target.write_text("")
    other = tmp_path / "other"
    other.write_text("")
    assert lock_holders.holders([str(target)], _fake_locks(tmp_path, target, 1)) == [
        (1, lock_holders._command(1), str(target))]
    assert lock_holders.holders([str(other)], _fake_locks(tmp_path, target, 1)) == []
    assert lock_holders.holders([str(target)], _fake_locks(tmp_path, target, 1, "READ")) == []
    assert lock_holders.holders([str(target)], _fake_locks(tmp_path, target, 1, "READ"), writers_only=False)
    assert lock_holders.holders([str(target)], _fake_locks(tmp_path, target, os.getpid())) == []
    assert lock_holders.holders([str(tmp_path / "missing")], _fake_locks(tmp_path, target, 1)) == []
    assert lock_holders.holders([str(target)], str(tmp_path / "no-proc-locks")) == []
    assert lock_holders.describe([str(target)], str(tmp_path / "no-proc-locks")) == ""


@pytest.mark.skipif(not os.path.exists(lock_holders.PROC_LOCKS), reason="needs /proc/locks")
def test_a_real_holder_is_named_with_its_command(tmp_path):
    target = str(tmp_path / "db.lock")
    open(target, "w").close()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\n"
                               "fd = open(sys.argv[1], 'w'); fcntl.flock(fd, fcntl.LOCK_EX)\n"
                               "print('held', flush=True); time.sleep(60)", target],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        text = lock_holders.describe([target])
        assert text.startswith("held by pid %d (" % holder.pid) and target in text and "-c import fcntl" in text, text
        assert "\n" not in text
    finally:
        holder.kill()
        holder.wait()
    with open(target) as handle:  # let go: nobody is named any more
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert lock_holders.describe([target]) == ""


@pytest.mark.skipif(not os.path.exists(lock_holders.PROC_LOCKS), reason="needs /proc/locks")
def test_a_lock_wait_that_times_out_names_the_holding_process(tmp_path):
    from ansible_collections.skygrid.fabric.plugins.module_utils import locks
    from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
    directory = str(tmp_path / "locks")
    with locks.held("vo-image-images", 1, "pool", "a first run", directory=directory) as path:
        pass  # made the private directory and the lock file
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys\nfd = open(sys.argv[1])\n"
                               "fcntl.flock(fd, fcntl.LOCK_SH)\nprint('held', flush=True)\nsys.stdin.read()", path],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FabricError) as err:
            with locks.held("vo-image-images", 0.2, "pool", "another vo_image run on pool images", directory=directory):
                pass
    finally:
        holder.stdin.close()
        holder.wait(10)
    assert "held by pid %d (" % holder.pid in str(err.value) and "fuser -v %s" % path in str(err.value)
