"""Lock files in private directories, opened without following symlinks, 0600, held with a timeout: the
staging lock of a pool (vo_image), the volume-use lock (overlay creation against prune), and the IPAM
writers' queue."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils import locks
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.images import pool_store

ROOT = os.geteuid() == 0


def test_the_staging_lock_is_in_a_directory_only_its_owner_can_write(tmp_path):
    """It was /run/lock (1777): anyone could plant a symlink there or hold the lock."""
    path = pool_store.lock_path("images")
    assert os.path.dirname(path) == locks.default_dir()
    with locks.held("sgtest-probe", 1, "pool", "a test") as probe:  # makes the directory if this host has none yet
        info = os.stat(os.path.dirname(path))
    os.unlink(probe)
    assert info.st_uid == os.geteuid() and not info.st_mode & 0o022, (path, oct(info.st_mode))


@pytest.mark.parametrize("runtime", [None, "/run/user/1003"])
def test_a_normal_users_locks_are_in_a_directory_of_its_own(monkeypatch, runtime):
    """Two users' pools of the same name never share a lock (qemu:///session), and none is in /run/lock."""
    monkeypatch.setattr(locks.os, "geteuid", lambda: 1003)
    if runtime:
        monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
        monkeypatch.setattr(locks.os.path, "isdir", lambda path: True)
    else:
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    mine = locks.lock_path("vo-image-skygrid-desktop")
    assert mine.startswith(runtime or "/tmp/skygrid-1003/") and "/run/lock" not in mine
    monkeypatch.setattr(locks.os, "geteuid", lambda: 1004)
    if runtime:
        monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1004")  # each user's session has its own
    assert locks.lock_path("vo-image-skygrid-desktop") != mine


def test_lock_dir_and_file_are_private(tmp_path):
    directory = str(tmp_path / "run" / "locks")
    with locks.held("vo-image-images", 5, "pool", "another run", directory=directory) as path:
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.path.basename(locks.lock_path("../../etc/x y", directory)) == ".._.._etc_x_y.lock"


def test_a_lock_file_made_0644_before_becomes_0600(tmp_path):
    directory = str(tmp_path / "locks")
    os.mkdir(directory, 0o700)
    path = locks.lock_path("x", directory)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
    with locks.held("x", 5, "pool", "another run", directory=directory):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_symlink_planted_at_the_lock_file_is_refused(tmp_path):
    directory = str(tmp_path / "locks")
    os.mkdir(directory, 0o700)
    target = tmp_path / "etc-shadow-like"
    os.symlink(str(target), locks.lock_path("x", directory))
    with pytest.raises(FabricError) as err:
        with locks.held("x", 5, "pool", "another run", directory=directory):
            pass
    assert err.value.field == "pool" and "it is a symlink" in str(err.value)
    assert not target.exists()  # nothing was created at the symlink's target


@pytest.mark.parametrize("make", ["world-writable", "symlink"])
def test_an_unsafe_lock_directory_is_refused(tmp_path, make):
    directory = str(tmp_path / "locks")
    if make == "symlink":
        os.mkdir(str(tmp_path / "elsewhere"), 0o700)
        os.symlink(str(tmp_path / "elsewhere"), directory)
    else:
        os.mkdir(directory)
        os.chmod(directory, 0o777)
    with pytest.raises(FabricError) as err:
        with locks.held("x", 5, "pool", "another run", directory=directory):
            pass
    assert err.value.field == "pool" and "refusing the lock directory" in str(err.value)


def test_a_held_lock_times_out_with_an_error_naming_the_holder(tmp_path):
    directory = str(tmp_path / "locks")
    with locks.held("x", 5, "pool", "another run", directory=directory) as path:
        fd = os.open(path, os.O_RDWR)  # another open file: its flock conflicts, as another process's would
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            pytest.fail("an exclusive lock let a shared one in")
        except OSError:
            pass
        finally:
            os.close(fd)
        with pytest.raises(FabricError) as err:
            with locks.held("x", 0.3, "pool", "another vo_image run on pool images", directory=directory):
                pass
    assert err.value.field == "pool" and "another vo_image run on pool images" in str(err.value)
    assert "fuser -v" in str(err.value)


def test_shared_holders_coexist(tmp_path):
    directory = str(tmp_path / "locks")
    with locks.held("x", 1, "pool", "a", shared=True, directory=directory):
        with locks.held("x", 1, "pool", "b", shared=True, directory=directory):
            with pytest.raises(FabricError):
                with locks.held("x", 0.1, "pool", "an overlay being created", directory=directory):
                    pass


@pytest.mark.skipif(not ROOT, reason="needs root to run a process as nobody")
def test_nobody_cannot_open_the_lock(tmp_path):
    directory = str(tmp_path / "locks")
    os.chmod(str(tmp_path), 0o755)
    with locks.held("x", 1, "pool", "a", directory=directory) as path:
        probe = "import os\ntry:\n    os.open(%r, os.O_RDONLY)\n    print('opened')\nexcept OSError as e:\n    print(e.errno)" % path
        out = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c",
                              probe], stdout=subprocess.PIPE, check=True).stdout.decode().strip()
    assert out != "opened"
