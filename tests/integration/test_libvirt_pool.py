"""skygrid.fabric.libvirt_pool against the live libvirtd: create, update in place, absent with and without purge."""

from __future__ import annotations

import os
import stat

import pytest
from conftest import PREFIX, URI
from modrun import run_module

pytestmark = pytest.mark.libvirt
libvirt = pytest.importorskip("libvirt")

NAME = PREFIX + "-poolmod"


def ok(result):
    assert not result.failed, result.get("msg")
    return result


@pytest.fixture
def pool_dir(tmp_path):
    path = str(tmp_path / "pool")
    yield path
    run_module("libvirt_pool", {"uri": URI, "name": NAME, "state": "absent", "purge": True})


def test_create_update_and_remove(conn, pool_dir):
    args = {"uri": URI, "name": NAME, "path": pool_dir, "mode": "0711"}
    planned = ok(run_module("libvirt_pool", args, check=True))
    assert planned["actions"] == ["define storage pool " + NAME, "start storage pool " + NAME,
                                  "enable autostart of storage pool " + NAME]
    assert not os.path.exists(pool_dir)
    ok(run_module("libvirt_pool", args))
    assert stat.S_IMODE(os.stat(pool_dir).st_mode) == 0o711  # built with its permissions
    assert conn.storagePoolLookupByName(NAME).isActive()
    assert ok(run_module("libvirt_pool", args))["changed"] is False
    # Update in place: the mode changes, the UUID stays.
    uuid = conn.storagePoolLookupByName(NAME).UUIDString()
    changed = ok(run_module("libvirt_pool", dict(args, mode="0755"), diff=True))
    assert changed["changed"] and changed["diff"]["before"][NAME]["mode"] == "0711"
    assert changed["diff"]["after"][NAME]["mode"] == "0755"
    assert conn.storagePoolLookupByName(NAME).UUIDString() == uuid
    assert stat.S_IMODE(os.stat(pool_dir).st_mode) == 0o755
    # A volume in it: absent refuses without purge, and nothing is lost.
    conn.storagePoolLookupByName(NAME).createXML(
        "<volume><name>keep.qcow2</name><capacity>1048576</capacity><target><format type='qcow2'/></target></volume>", 0)
    refused = run_module("libvirt_pool", dict(args, state="absent"))
    assert refused.failed and refused["field"] == "purge" and "keep.qcow2" in refused["msg"]
    assert os.path.exists(os.path.join(pool_dir, "keep.qcow2")) and conn.storagePoolLookupByName(NAME).isActive()
    # A VM using a volume: refused even with purge.
    vm = {"uri": URI, "name": PREFIX + "-pooluser", "virt_type": "qemu", "memory_mb": 64,
          "disks": [{"pool": NAME, "base_volume": "keep.qcow2"}]}
    ok(run_module("vm", vm))
    in_use = run_module("libvirt_pool", dict(args, state="absent", purge=True))
    assert in_use.failed and PREFIX + "-pooluser" in in_use["msg"]
    ok(run_module("vm", dict(vm, state="absent")))
    os.makedirs(os.path.join(pool_dir, ".skygrid", "provenance"))  # bookkeeping as vo_image keeps it
    conn.storagePoolLookupByName(NAME).refresh(0)
    purged = ok(run_module("libvirt_pool", dict(args, state="absent", purge=True)))
    assert purged["changed"] and not os.path.exists(pool_dir)
    with pytest.raises(libvirt.libvirtError):
        conn.storagePoolLookupByName(NAME)


def test_inactive_and_errors(conn, pool_dir):
    args = {"uri": URI, "name": NAME, "path": pool_dir}
    ok(run_module("libvirt_pool", dict(args, state="inactive")))
    assert not conn.storagePoolLookupByName(NAME).isActive()
    started = ok(run_module("libvirt_pool", args))
    assert "start storage pool " + NAME in started["actions"]
    bad = run_module("libvirt_pool", dict(args, path="relative/dir"))
    assert bad.failed and bad["field"] == "path"
    bad_mode = run_module("libvirt_pool", dict(args, mode="rwx"))
    assert bad_mode.failed and bad_mode["field"] == "mode"


def test_logical_pool_xml_round_trip():
    from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt import pools
    spec = pools.normalise({"name": "vmscratch", "type": "logical", "source_devices": ["/dev/sdc", "/dev/sdb"]})
    assert spec["path"] == "/dev/vmscratch" and spec["source_devices"] == ["/dev/sdb", "/dev/sdc"]
    assert pools.from_xml(pools.to_xml("vmscratch", spec)) == spec
