"""A full pool filesystem during staging (issue 17): the space checks and errors of pool_store, the
conversion's size (qemu-img measure) and its ENOSPC, and the record refresh a full filesystem must not
turn into a failure. The real filesystem filling up is tests/integration/test_fault_pool_full.py."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils.images import formats, pool_store, staging
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.reconcile import Reconciler

MIB = 1 << 20


class FakePool:
    def __init__(self, path):
        self.path = path

    def XMLDesc(self, flags):
        return "<pool type='dir'><name>images</name><target><path>%s</path></target></pool>" % self.path

    def name(self):
        return "images"


@pytest.fixture
def store(tmp_path, monkeypatch):
    result = pool_store.PoolStore(FakePool(str(tmp_path)))
    monkeypatch.setattr(result, "available", lambda: 3 * MIB)
    return result


def test_a_download_that_fits_passes_and_one_that_does_not_names_pool_bytes_and_fix(store, tmp_path):
    store.check_space(3 * MIB, "image a")
    with pytest.raises(FabricError) as err:
        store.check_space(5 * MIB, "image b version 2 (5242880 bytes declared)")
    text = str(err.value)
    assert err.value.field == "pool" and err.value.details == {"needed": 5 * MIB, "available": 3 * MIB}
    for phrase in ("image b version 2", "needs 5242880 bytes (5.0 MiB)", "pool 'images' (%s)" % tmp_path,
                   "has 3145728 bytes (3.0 MiB) available", "Nothing was downloaded, written or changed",
                   "Free at least 2097152 bytes", "prune", "grow that filesystem"):
        assert phrase in text, text


def test_the_error_after_the_filesystem_filled_up_says_what_was_cleaned(store):
    err = store.no_space(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "downloading image b", 5 * MIB)
    text = str(err)
    assert err.field == "pool" and err.details == {"available": 3 * MIB}
    for phrase in ("pool 'images'", "filled up while downloading image b (No space left on device)",
                   "needing 5242880 bytes (5.0 MiB)", "3145728 bytes (3.0 MiB) are available now",
                   "partial files were removed", "images already in the pool are untouched"):
        assert phrase in text, text


@pytest.mark.parametrize("size,text", [(0, "0 bytes"), (1023, "1023 bytes"), (1536, "1.5 KiB"), (5 * MIB, "5.0 MiB"),
                                       (3 << 30, "3.0 GiB")])
def test_human_sizes(size, text):
    assert pool_store._human(size) == text


def test_only_enospc_and_edquot_are_no_space():
    assert pool_store.is_no_space(OSError(errno.ENOSPC, "x")) and pool_store.is_no_space(OSError(errno.EDQUOT, "x"))
    assert not pool_store.is_no_space(OSError(errno.EIO, "x")) and not pool_store.is_no_space(ValueError("x"))


def test_available_is_what_statvfs_leaves_to_users(tmp_path):
    info = os.statvfs(str(tmp_path))
    real = pool_store.PoolStore(FakePool(str(tmp_path))).available()
    assert abs(real - info.f_bavail * info.f_frsize) < 64 * MIB


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")
def test_the_conversion_is_sized_from_the_data_not_the_holes(tmp_path):
    raw = str(tmp_path / "disk.raw")
    with open(raw, "wb") as handle:
        handle.write(os.urandom(2 * MIB))
        handle.truncate(64 * MIB)  # a hole: costs nothing in the qcow2
    needed = formats.qcow2_bytes(raw, "http://x/disk.raw")
    assert 2 * MIB <= needed < 3 * MIB


class _Proc:
    def __init__(self, stderr):
        self.returncode, self.stdout, self.stderr = 1, b"", stderr


@pytest.mark.parametrize("stderr,raised", [
    (b"qemu-img: error while writing at byte 0: No space left on device", OSError),
    (b"qemu-img: Could not open 'x': Permission denied", FabricError),
])
def test_a_conversion_that_ran_out_of_space_is_reported_as_such(tmp_path, monkeypatch, stderr, raised):
    monkeypatch.setattr(formats, "qemu_img", lambda: "qemu-img")
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: _Proc(stderr))
    dst = str(tmp_path / "out.qcow2")
    open(dst, "w").close()
    with pytest.raises(raised) as err:
        formats.convert_to_qcow2(str(tmp_path / "in.raw"), dst, "http://x/disk.raw")
    if raised is OSError:
        assert err.value.errno == errno.ENOSPC
    assert not os.path.exists(dst)


def test_a_full_filesystem_does_not_fail_the_refresh_of_a_verified_record(store, monkeypatch):
    stager = staging.ImageStager.__new__(staging.ImageStager)
    stager.store, stager.reconciler = store, Reconciler(check_mode=False)

    def full(record):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(store, "write_record", full)
    record = {"volume": "atlas+a+1.qcow2"}
    stager._refresh_record(record, {"mtime": 1})
    assert record["mtime"] == 1 and "the next run hashes it again" in store.warnings[0]

    def broken(record):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(store, "write_record", broken)
    with pytest.raises(OSError):
        stager._refresh_record(record, {"mtime": 2})
