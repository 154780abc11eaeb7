"""images/integrity.py on real files: when a staged volume is re-hashed, and what each verdict means."""

from __future__ import annotations

import hashlib
import os

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.images import integrity


def staged(tmp_path, data=b"qcow2 bytes" * 1000, **record):
    path = tmp_path / "atlas+img+1.qcow2"
    path.write_bytes(data)
    digest = hashlib.sha512(data).hexdigest()
    base = {"sha512": digest, "converted": False, "source_format": "qcow2", "volume_sha512": digest}
    base.update(integrity.fingerprint(str(path)))
    base.update(record)
    return str(path), base


def test_unchanged_size_and_mtime_are_trusted_without_hashing(tmp_path, monkeypatch):
    path, record = staged(tmp_path)
    monkeypatch.setattr(integrity, "file_sha512", lambda p: pytest.fail("hashed an unchanged file"))
    assert integrity.check(path, record) == (integrity.OK, "size and mtime as recorded", None)


def test_a_new_mtime_with_the_same_bytes_is_ok_and_gives_the_fingerprint_to_record(tmp_path):
    path, record = staged(tmp_path)
    os.utime(path, ns=(1, 10**18))
    status, _detail, fresh = integrity.check(path, record)
    assert status == integrity.OK
    assert fresh == {"volume_bytes": record["volume_bytes"], "volume_mtime_ns": 10**18,
                     "volume_sha512": record["volume_sha512"]}


def test_changed_bytes_with_the_old_mtime_put_back_are_caught_only_by_force(tmp_path):
    path, record = staged(tmp_path)
    with open(path, "r+b") as handle:
        handle.write(b"X")
    os.utime(path, ns=(record["volume_mtime_ns"], record["volume_mtime_ns"]))
    assert integrity.check(path, record)[0] == integrity.OK  # root setting mtime back defeats the cheap check
    status, detail, fresh = integrity.check(path, record, force=True)
    assert status == integrity.CHANGED and "when staged" in detail and fresh is None


def test_a_different_size_is_rehashed_and_refused(tmp_path):
    path, record = staged(tmp_path)
    with open(path, "ab") as handle:
        handle.write(b"more")
    assert integrity.check(path, record)[0] == integrity.CHANGED


def test_a_missing_file(tmp_path):
    path, record = staged(tmp_path)
    os.unlink(path)
    assert integrity.check(path, record)[0] == integrity.MISSING


def test_old_records_of_unconverted_images_use_the_endorsed_hash(tmp_path):
    path, record = staged(tmp_path)
    del record["volume_sha512"], record["volume_mtime_ns"]
    status, _detail, fresh = integrity.check(path, record)
    assert status == integrity.OK and fresh["volume_sha512"] == record["sha512"]


def test_old_records_of_converted_images_cannot_be_verified(tmp_path):
    path, record = staged(tmp_path, converted=True, source_format="raw", sha512="ab" * 64)
    del record["volume_sha512"]
    assert integrity.check(path, record, force=True)[0] == integrity.UNVERIFIABLE


def test_refusal_names_the_file_the_reason_and_the_fix():
    with pytest.raises(FabricError) as err:
        integrity.refuse_changed("/pool/v.qcow2", "its sha512 is 00...", "disks[0].base_volume")
    assert err.value.field == "disks[0].base_volume"
    assert "/pool/v.qcow2" in str(err.value) and "stage it again" in str(err.value)
