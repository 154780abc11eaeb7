"""spec -> XML -> spec round trips, normalisation rules and the diff."""

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils.vm import spec as vm_spec
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

SHA = "ab" * 64


def full_params(**over):
    params = {
        "name": "wn1-atlas-1",
        "virt_type": "qemu",
        "vcpus": 2,
        "memory_mb": 2048,
        "disks": [{"pool": "images", "base_volume": "atlas.qcow2", "size_gb": 20},
                  {"pool": "scratch", "size_gb": 50},
                  {"pool": "images", "volume": "shared.raw", "format": "raw", "readonly": True}],
        "nics": [{"network": "vmnet", "ip": "10.0.0.5", "mac": "52:54:00:AA:BB:CC"},
                 {"bridge": "br0", "ip": "10.1.0.5"}],
        "cloud_init": {"user_data": {"runcmd": ["true"]}},
        "kernel": "/boot/vmlinuz", "initrd": "/boot/initrd.img", "cmdline": "console=ttyS0",
        "metadata": {"vo": "atlas", "trust_class": 2, "image_id": "img-1", "image_sha512": SHA.upper()},
    }
    params.update(over)
    return params


def test_round_trip_keeps_every_managed_field():
    spec = vm_spec.normalise(full_params())[0]
    back = vm_spec.from_xml(vm_spec.to_xml(spec, uuid="0b7c2f7e-8d7a-4b1e-9a41-2f1e5f3c9d10"))
    assert vm_spec.differences(dict(spec), back) == []
    assert back["disks"][0] == {"target": "vda", "pool": "images", "volume": "wn1-atlas-1-vda.qcow2",
                                "base_volume": "atlas.qcow2", "size_gb": 20, "format": "qcow2",
                                "readonly": False, "owned": True}
    assert back["disks"][2]["owned"] is False and back["disks"][2]["readonly"] is True
    assert back["seed"]["volume"] == "wn1-atlas-1-cidata.iso"
    assert back["metadata"] == {"vo": "atlas", "trust_class": "2", "image_id": "img-1", "image_sha512": SHA}


def test_xml_places_seed_after_disks_and_filters_ip():
    spec = vm_spec.normalise(full_params())[0]
    xml = vm_spec.to_xml(spec)
    assert "<target dev=\"vdd\" bus=\"virtio\" /><readonly />" in xml  # seed after three disks
    assert "<filterref filter=\"clean-traffic\"><parameter name=\"IP\" value=\"10.0.0.5\" />" in xml
    assert ' type="qemu"' in xml.split(">", 1)[0] and "<uuid>" not in xml


def test_mac_is_kept_from_existing_and_derived_stably():
    two = [{"network": "n", "ip": "10.0.0.7"}, {"network": "n", "ip": "10.0.0.8"}]
    spec = vm_spec.normalise(full_params(nics=two))[0]
    again = vm_spec.normalise(full_params(nics=two))[0]
    assert [n["mac"] for n in spec["nics"]] == [n["mac"] for n in again["nics"]]
    assert spec["nics"][0]["mac"] != spec["nics"][1]["mac"]
    assert spec["nics"][0]["mac"].startswith("52:54:00:")
    existing = {"nics": [{"mac": "52:54:00:01:02:03"}]}
    kept = vm_spec.normalise(full_params(nics=two[:1]), existing=existing)[0]
    assert kept["nics"][0]["mac"] == "52:54:00:01:02:03"


def test_unfiltered_nics_need_the_sites_explicit_consent():
    unfiltered = [{"network": "n"}, {"network": "n", "ip": "10.0.0.9", "filter": "none"}]
    with pytest.raises(FabricError) as err:
        vm_spec.normalise(full_params(nics=unfiltered))
    assert err.value.field == "nics[0].ip" and "allow_address_spoofing: true" in str(err.value)
    with pytest.raises(FabricError) as err:
        vm_spec.normalise(full_params(nics=unfiltered[1:]))
    assert err.value.field == "nics[0].filter" and "allow_address_spoofing: true" in str(err.value)
    spec = vm_spec.normalise(full_params(nics=unfiltered, allow_address_spoofing=True))[0]
    assert spec["nics"][0]["filter"] is None and spec["nics"][1]["filter"] is None


def test_user_mode_networking_round_trips():
    spec = vm_spec.normalise(full_params(nics=[{"user": True}]))[0]
    assert spec["nics"][0]["user"] and spec["nics"][0]["filter"] is None
    xml = vm_spec.to_xml(spec)
    assert "<interface type=\"user\">" in xml and "filterref" not in xml
    assert vm_spec.differences(spec, vm_spec.from_xml(xml)) == []


def test_differences_names_changed_keys_only():
    spec = vm_spec.normalise(full_params())[0]
    actual = vm_spec.from_xml(vm_spec.to_xml(spec))
    wanted = vm_spec.normalise(full_params(vcpus=4, metadata={"vo": "lhcb"}))[0]
    assert sorted(vm_spec.differences(wanted, actual)) == ["metadata", "vcpus"]


def test_machine_alias_and_default_cpu_mode_are_not_changes():
    spec = vm_spec.normalise(full_params())[0]
    actual = vm_spec.from_xml(vm_spec.to_xml(spec))
    actual["machine"] = "pc-i440fx-7.2"
    actual["cpu_mode"] = "custom"
    assert vm_spec.differences(spec, actual) == []
    assert spec["machine"] == "pc-i440fx-7.2"  # the diff then shows no phantom change
    wanted = vm_spec.normalise(full_params(machine="q35"))[0]
    assert vm_spec.differences(wanted, actual) == ["machine"]


def test_seed_digest_follows_content():
    one = vm_spec.normalise(full_params())[0]
    two = vm_spec.normalise(full_params(cloud_init={"user_data": {"runcmd": ["false"]}}))[0]
    assert one["seed"]["sha256"] != two["seed"]["sha256"]
    seed = vm_spec.normalise(full_params(cloud_init={"user_data": "#cloud-config\n{}\n"}))[1]
    assert '"instance-id": "wn1-atlas-1"' in seed["meta_data"]


def test_memory_units_are_read_back():
    xml = "<domain type='kvm'><name>x</name><memory unit='GiB'>2</memory><vcpu>1</vcpu></domain>"
    assert vm_spec.from_xml(xml)["memory_mb"] == 2048


def test_disk_targets():
    assert [vm_spec.disk_target(i) for i in (0, 1, 25, 26, 27)] == ["vda", "vdb", "vdz", "vdaa", "vdab"]


@pytest.mark.parametrize("over, field", [
    ({"name": "-bad"}, "name"),
    ({"name": "a" * 64}, "name"),
    ({"name": "has space"}, "name"),
    ({"name": "wn1\n"}, "name"),
    ({"vcpus": 0}, "vcpus"),
    ({"memory_mb": 8}, "memory_mb"),
    ({"virt_type": "xen"}, "virt_type"),
    ({"disks": [{"pool": "p"}]}, "disks[0]"),
    ({"disks": [{"pool": "p", "volume": "v", "base_volume": "b"}]}, "disks[0]"),
    ({"disks": [{"pool": "p", "size_gb": 1, "format": "raw"}]}, "disks[0].format"),
    ({"disks": [{"size_gb": 1}]}, "disks[0].pool"),
    ({"nics": [{"network": "n", "bridge": "b"}]}, "nics[0]"),
    ({"nics": [{"network": "n", "user": True}]}, "nics[0]"),
    ({"nics": [{}]}, "nics[0]"),
    ({"nics": [{"user": True, "ip": "10.0.2.15"}]}, "nics[0].ip"),
    ({"nics": [{"network": "n", "ip": "10.0.0.2", "mac": "zz:54:00:00:00:01"}]}, "nics[0].mac"),
    ({"nics": [{"network": "n", "ip": "10.0.0.2", "mac": "53:54:00:00:00:01"}]}, "nics[0].mac"),
    ({"nics": [{"network": "n"}]}, "nics[0].ip"),
    ({"nics": [{"network": "n", "ip": "10.0.0.2", "filter": ""}]}, "nics[0].filter"),
    ({"nics": [{"network": "n", "ip": "10.0.0.300"}]}, "nics[0].ip"),
    ({"nics": [{"network": "n", "filter": "clean-traffic"}]}, "nics[0].ip"),
    ({"metadata": {"trust_class": 4}}, "metadata.trust_class"),
    ({"metadata": {"image_sha512": "abc"}}, "metadata.image_sha512"),
    ({"metadata": {"Bad-Key": 1}}, "metadata.Bad-Key"),
    ({"kernel": None}, "kernel"),
    ({"disks": [], "cloud_init": {"user_data": "x"}}, "seed_pool"),
])
def test_errors_name_the_field(over, field):
    with pytest.raises(FabricError) as err:
        vm_spec.normalise(full_params(**over))
    assert err.value.field == field
    assert str(err.value).startswith(field + ": ")
