"""The VM inventory's pure part: hypervisor options, ansible_host, groups, host variables, duplicates."""

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.operations import inventory


def vm(name, state="running", addresses=(), pinned=None, managed=True, **metadata):
    return {"name": name, "uuid": "uuid-" + name, "state": state, "vcpus": 2, "memory_mb": 2048,
            "macs": ["52:54:00:00:00:01"], "addresses": list(addresses),
            "nics": [{"mac": "52:54:00:00:00:01", "ip": pinned}], "metadata": metadata, "managed": managed}


def reading(name, vms, error=None):
    return {"name": name, "uri": "qemu+ssh://root@%s/system" % name, "vms": vms, "error": error}


def test_hypervisor_names_default_to_the_uri_host():
    assert inventory.normalise_hypervisors(["qemu:///system", "qemu+ssh://root@wn042.example.org/system",
                                            {"uri": "qemu+tcp://10.0.0.5/system", "name": "wn5"}]) == [
        {"uri": "qemu:///system", "name": "localhost"},
        {"uri": "qemu+ssh://root@wn042.example.org/system", "name": "wn042.example.org"},
        {"uri": "qemu+tcp://10.0.0.5/system", "name": "wn5"}]


@pytest.mark.parametrize("value, field", [
    ([], "hypervisors"),
    (["qemu:///system", "qemu+ssh://localhost/system"], "hypervisors[1].name"),
    ([{"name": "x"}], "hypervisors[0]"),
    ([{"uri": "qemu:///system", "user": "root"}], "hypervisors[0]"),
    (["wn042"], "hypervisors[0].uri"),
    ([42], "hypervisors[0]"),
])
def test_bad_hypervisors_are_refused_naming_the_field(value, field):
    with pytest.raises(FabricError) as err:
        inventory.normalise_hypervisors(value)
    assert err.value.field == field


def test_ansible_host_prefers_the_lease_then_the_pinned_address():
    assert inventory.ansible_host(vm("a", addresses=["10.0.0.7"], pinned="10.0.0.9")) == "10.0.0.7"
    assert inventory.ansible_host(vm("a", state="shutoff", pinned="10.0.0.9")) == "10.0.0.9"
    assert inventory.ansible_host(vm("a")) is None


def test_hosts_groups_and_provenance_vars():
    result = inventory.build([reading("wn1", [
        vm("wn1-atlas-1", addresses=["10.0.0.7"], vo="atlas", trust_class="2", image_id="cernvm-4.8",
           image_sha512="ab" * 64, batch_state="online"),
        vm("wn1-lhcb-1", state="shutoff", pinned="10.0.0.8", vo="lhcb", trust_class="3", image_id="lhcb.img"),
        vm("someone-elses", managed=False)])])
    assert sorted(result["hosts"]) == ["wn1-atlas-1", "wn1-lhcb-1"]
    atlas = result["hosts"]["wn1-atlas-1"]
    assert atlas["ansible_host"] == "10.0.0.7"
    assert atlas["skygrid_vo"] == "atlas" and atlas["skygrid_image_sha512"] == "ab" * 64
    assert atlas["skygrid_hypervisor"] == "wn1" and atlas["skygrid_hypervisor_uri"] == "qemu+ssh://root@wn1/system"
    assert result["hosts"]["wn1-lhcb-1"]["ansible_host"] == "10.0.0.8"
    groups = result["groups"]
    assert groups["vo_atlas"] == ["wn1-atlas-1"] and groups["vo_lhcb"] == ["wn1-lhcb-1"]
    assert groups["trust_class_2"] == ["wn1-atlas-1"] and groups["trust_class_3"] == ["wn1-lhcb-1"]
    assert groups["image_cernvm_4_8"] == ["wn1-atlas-1"] and groups["image_lhcb_img"] == ["wn1-lhcb-1"]
    assert groups["batch_online"] == ["wn1-atlas-1"]  # recorded for one VM only
    assert groups["hypervisor_wn1"] == ["wn1-atlas-1", "wn1-lhcb-1"]
    assert groups["state_shutoff"] == ["wn1-lhcb-1"]
    assert result["warnings"] == [] and result["unreachable"] == []


def test_unmanaged_vms_on_request_and_prefixes():
    result = inventory.build([reading("wn1", [vm("other", managed=False)])], managed_only=False,
                             vars_prefix="vm_", group_prefix="sg_")
    assert result["hosts"]["other"]["vm_state"] == "running"
    assert result["groups"] == {"sg_hypervisor_wn1": ["other"], "sg_state_running": ["other"]}


def test_an_unreachable_hypervisor_is_reported_and_the_others_kept():
    result = inventory.build([reading("wn1", [], error="cannot connect"), reading("wn2", [vm("wn2-atlas-1", vo="atlas")])])
    assert list(result["hosts"]) == ["wn2-atlas-1"]
    assert result["unreachable"] == ["wn1"]
    assert result["warnings"] == ["hypervisor wn1 (qemu+ssh://root@wn1/system) was skipped: cannot connect"]


@pytest.mark.parametrize("order", [0, 1])
def test_a_vm_on_two_hypervisors_is_listed_once_the_running_copy(order):
    readings = [reading("wn1", [vm("mig-1", state="shutoff", vo="atlas")]),
                reading("wn2", [vm("mig-1", state="running", vo="atlas")])]
    if order:
        readings.reverse()
    result = inventory.build(readings)
    assert result["hosts"]["mig-1"]["skygrid_hypervisor"] == "wn2"
    assert result["groups"]["hypervisor_wn2"] == ["mig-1"] and "hypervisor_wn1" not in result["groups"]
    assert len(result["warnings"]) == 1 and "on wn2 (running)" in result["warnings"][0]


@pytest.mark.parametrize("raw, safe", [("atlas", "atlas"), ("cern-vm 4.8", "cern_vm_4_8"), ("3d", "_3d")])
def test_group_names_are_safe(raw, safe):
    assert inventory.safe_group(raw) == safe
