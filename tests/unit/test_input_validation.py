"""Bad input found by the image-trust review (issue 15): each is refused by the function that turns the
module's options into a spec - before anything is changed - with an error naming the option and the fix."""

from __future__ import annotations

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils.batch import base as batch_base
from ansible_collections.skygrid.fabric.plugins.module_utils.batch import manage
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.ipam import exports
from ansible_collections.skygrid.fabric.plugins.module_utils.ipam import pool as ipam_pool
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt import network_spec, pools
from ansible_collections.skygrid.fabric.plugins.module_utils.vm import spec as vm_spec

MAC = "52:54:00:12:34:56"


def network(**params):
    return network_spec.normalise(dict({"name": "sgval-net", "cidr": "10.20.0.0/24"}, **params))


def vm(**params):
    base = {"name": "wn1-atlas-1", "virt_type": "qemu", "disks": [{"pool": "images", "size_gb": 1}]}
    return vm_spec.normalise(dict(base, **params))


CASES = {
    "batch name ending in a newline (into qmgr)": (
        lambda: batch_base.check_name("wn1\n", "name"), "name", "not a valid name"),
    "batch property ending in a newline": (
        lambda: batch_base.check_properties(["vm\n"]), "properties", "not a valid property"),
    "batch_node address carrying Slurm keys": (
        lambda: manage.node_spec({"name": "wn1", "address": "10.20.0.17 Feature=lhcb,vm"}), "address",
        "an IP address or a host name"),
    "batch_node address with a newline": (
        lambda: manage.node_spec({"name": "wn1", "address": "wn1.example.org\nState=DOWN"}), "address",
        "an IP address or a host name"),
    "ipam owner ending in a newline (into dhcp-host)": (
        lambda: ipam_pool.check_owner("wn1\n"), "owner", ""),
    "ipam pool name ending in a newline": (
        lambda: ipam_pool.check_pool_name("vmnet\n"), "pool", ""),
    "ipam dns_domain ending in a newline": (
        lambda: ipam_pool.check_domain("vm.example.org\n", "pools.vmnet.dns_domain"), "pools.vmnet.dns_domain",
        "not a valid DNS domain"),
    "network domain with a newline": (
        lambda: network(domain="vm.example.org\n<dns/>"), "domain", "not a valid DNS domain"),
    "network domain with a comma": (
        lambda: network(domain="vm.example.org,evil"), "domain", "not a valid DNS domain"),
    "DHCP host name with a comma": (
        lambda: network(hosts=[{"mac": MAC, "ip": "10.20.0.5", "name": "wn1,set:evil"}]), "hosts[0].name",
        "not a valid host name"),
    "DHCP host name with a newline": (
        lambda: network(hosts=[{"mac": MAC, "ip": "10.20.0.5", "name": "wn1\ndhcp-option=3"}]), "hosts[0].name",
        "not a valid host name"),
    "bridge name with a ';'": (
        lambda: network(mode="bridge", bridge="br0;x", cidr=None), "bridge", "not a valid bridge name"),
    "bridge name with a '/'": (
        lambda: network(bridge="../br0"), "bridge", "not a valid bridge name"),
    "disk volume escaping the pool": (
        lambda: vm(disks=[{"pool": "images", "volume": "../../etc/shadow"}]), "disks[0].volume",
        "a volume name in the pool"),
    "disk base volume escaping the pool": (
        lambda: vm(disks=[{"pool": "images", "base_volume": "/etc/shadow"}]), "disks[0].base_volume",
        "a volume name in the pool"),
    "pool path with '..'": (
        lambda: pools.normalise({"name": "sgval-pool", "type": "dir", "path": "/var/lib/../../etc"}), "path",
        "without '..'"),
    "pool path that is a system directory": (
        lambda: pools.normalise({"name": "sgval-pool", "type": "dir", "path": "/etc/"}), "path", "system directory"),
    "ip_lease export over /etc/hosts": (
        lambda: exports.parse_export({"format": "hosts", "path": "/etc/hosts"}, ["vmnet"]), "export.path",
        "not written by ip_lease"),
    "metadata key 'seed' (bookkeeping)": (
        lambda: vm(metadata={"seed": "x"}), "metadata.seed", "reserved"),
    "metadata key 'disk' (bookkeeping)": (
        lambda: vm(metadata={"disk": "x"}), "metadata.disk", "reserved"),
    "metadata value with control characters": (
        lambda: vm(metadata={"note": "line\x01two"}), "metadata.note", "control characters"),
    "metadata value with a newline": (
        lambda: vm(metadata={"note": "a\nb"}), "metadata.note", "control characters"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_naming_the_option(case):
    call, field, phrase = CASES[case]
    with pytest.raises(FabricError) as err:
        call()
    assert err.value.field == field, str(err.value)
    assert phrase in str(err.value)


@pytest.mark.parametrize("call", [
    lambda: batch_base.check_name("wn1.example.org", "name"),
    lambda: manage.node_spec({"name": "wn1", "address": "10.20.0.17"}),
    lambda: manage.node_spec({"name": "wn1", "address": "wn1-vm.example.org"}),
    lambda: manage.node_spec({"name": "wn1", "address": "fd00::17"}),
    lambda: ipam_pool.check_owner("wn1-atlas-1"),
    lambda: network(domain="vm.example.org", hosts=[{"mac": MAC, "ip": "10.20.0.5", "name": "wn1-atlas-1"}]),
    lambda: network(mode="bridge", bridge="br-vm.10", cidr=None),
    lambda: vm(disks=[{"pool": "images", "base_volume": "atlas+img-a+1.qcow2"}], metadata={"note": "tab\tok"}),
    lambda: pools.normalise({"name": "sgval-pool", "type": "dir", "path": "/var/lib/skygrid/images/"}),
])
def test_good_input_still_passes(call):
    call()


def test_an_export_file_written_by_ip_lease_may_be_rewritten(tmp_path):
    path = tmp_path / "hosts.conf"
    assert exports.parse_export({"format": "hosts", "path": str(path)}, ["vmnet"])["path"] == str(path)  # new
    path.write_text(exports.render("hosts", [], ["vmnet"]))
    assert exports.parse_export({"format": "hosts", "path": str(path)}, ["vmnet"])["path"] == str(path)
    path.write_text("127.0.0.1 localhost\n")
    with pytest.raises(FabricError, match="not written by ip_lease"):
        exports.parse_export({"format": "hosts", "path": str(path)}, ["vmnet"])
