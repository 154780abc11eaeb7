"""Host facts that slot plans and idempotent facts depend on: stable memory, and the /dev/kvm check."""

from __future__ import annotations

import grp
import os

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt import host


def test_kernel_memory_is_memtotal_in_mib(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24684092 kB\nMemFree:        22869000 kB\n")
    assert host.kernel_memory_mb(str(meminfo)) == 24105


def test_kernel_memory_unreadable_is_none(tmp_path):
    assert host.kernel_memory_mb(str(tmp_path / "missing")) is None
    garbled = tmp_path / "garbled"
    garbled.write_text("MemTotal: lots\n")
    assert host.kernel_memory_mb(str(garbled)) is None


class _Conn:
    """Answers getInfo like libvirt on a host whose NUMA figure is far below MemTotal."""

    def getInfo(self):
        return ["x86_64", 4698, 2, 2400, 1, 1, 2, 1]


def test_local_memory_ignores_libvirts_numa_figure():
    assert host.memory_mb(_Conn(), "qemu:///system") == host.kernel_memory_mb()
    assert host.host_limits(_Conn(), "qemu:///system") == (2, host.kernel_memory_mb())


def test_remote_memory_is_libvirts():
    assert host.memory_mb(_Conn(), "qemu+ssh://wn042/system") == 4698


@pytest.fixture
def kvm_gid():
    try:
        return grp.getgrnam("kvm").gr_gid
    except KeyError:
        pytest.skip("no kvm group on this machine")


def test_kvm_device_as_udev_makes_it_is_quiet(tmp_path, kvm_gid):
    device = tmp_path / "kvm"
    device.write_text("")
    os.chown(device, 0, kvm_gid)
    os.chmod(device, 0o660)
    assert host.kvm_device_warning(str(device)) is None


def test_kvm_device_root_only_warns_with_the_fix(tmp_path, kvm_gid):
    device = tmp_path / "kvm"
    device.write_text("")
    os.chown(device, 0, 0)
    os.chmod(device, 0o600)
    warning = host.kvm_device_warning(str(device))
    assert "0600" in warning and "chgrp kvm %s; chmod 0660 %s" % (device, device) in warning


def test_no_kvm_device_no_warning(tmp_path):
    assert host.kvm_device_warning(str(tmp_path / "absent")) is None


def test_an_error_about_a_list_item_names_the_item_and_keeps_its_field():
    from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
    inner = FabricError("needs a restart; set allow_restart: true", field="allow_restart", blockers=["vm1"])
    outer = inner.within("networks[1]")
    assert outer.field == "networks[1].allow_restart" and outer.details == {"blockers": ["vm1"]}
    assert str(outer) == "networks[1].allow_restart: needs a restart; set allow_restart: true"
    assert FabricError("cannot define it").within("pools[0]").field == "pools[0]"


def test_merged_records_keep_objects_of_two_kinds_with_one_name_apart():
    from ansible_collections.skygrid.fabric.plugins.module_utils.reconcile import Reconciler
    parent = Reconciler()
    for prefix in ("network ", "pool "):
        child = parent.child()
        child.record_diff("vo", None, {"kind": prefix.strip()})
        parent.merge(child, prefix)
    assert parent.diff()["after"] == {"network vo": {"kind": "network"}, "pool vo": {"kind": "pool"}}
