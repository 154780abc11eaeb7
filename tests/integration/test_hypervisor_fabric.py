"""skygrid.fabric.hypervisor_fabric against the live libvirtd: a host's networks and pools in one run, and its facts."""

from __future__ import annotations

import pytest
from conftest import PREFIX, URI
from modrun import run_module

pytestmark = pytest.mark.libvirt
libvirt = pytest.importorskip("libvirt")

NAME = PREFIX + "-fabric"  # the network and the pool share it: their records must not
SUBNET = "192.168.231"


def ok(result):
    assert not result.failed, result.get("msg")
    return result


@pytest.fixture
def fabric_args(tmp_path):
    args = {"uri": URI,
            "networks": [{"name": NAME, "mode": "isolated", "bridge": "sgtest-fab0", "cidr": SUBNET + ".0/24"}],
            "pools": [{"name": NAME, "path": str(tmp_path / "pool"), "mode": "0711"}]}
    yield args
    run_module("libvirt_pool", {"uri": URI, "name": NAME, "state": "absent", "purge": True})
    run_module("libvirt_network", {"uri": URI, "name": NAME, "state": "absent"})


def test_one_run_plans_builds_and_then_changes_nothing(conn, fabric_args):
    planned = ok(run_module("hypervisor_fabric", fabric_args, check=True, diff=True))
    assert planned["changed"] and planned["actions"] == [
        "define network " + NAME, "start network " + NAME, "enable autostart of network " + NAME,
        "define storage pool " + NAME, "start storage pool " + NAME, "enable autostart of storage pool " + NAME]
    assert set(planned["diff"]["after"]) == {"network " + NAME, "pool " + NAME}
    with pytest.raises(libvirt.libvirtError):
        conn.networkLookupByName(NAME)

    built = ok(run_module("hypervisor_fabric", fabric_args))
    assert built["changed"] and conn.networkLookupByName(NAME).isActive()
    assert conn.storagePoolLookupByName(NAME).isActive()
    assert [n["name"] for n in built["networks"]] == [NAME] and built["pools"][0]["spec"]["mode"] == "0711"
    facts = built["hypervisor"]
    assert "clean-traffic" in facts["nwfilters"] and facts["cpus"] >= 1 and facts["virt_type"] in ("kvm", "qemu")
    assert {vm["name"] for vm in built["vms"]} == {dom.name() for dom in conn.listAllDomains()}

    again = ok(run_module("hypervisor_fabric", fabric_args, diff=True))
    assert again["changed"] is False and again["actions"] == []


def test_an_error_names_the_item_and_what_came_before_stays(conn, fabric_args):
    fabric_args["pools"].append({"name": NAME + "-bad", "path": "relative/dir"})
    failed = run_module("hypervisor_fabric", fabric_args)
    assert failed.failed and failed["field"].startswith("pools[1]"), failed.get("msg")
    assert "relative/dir" in failed["msg"]
    # the network and the first pool, converged before the bad item, were kept
    assert conn.networkLookupByName(NAME).isActive() and conn.storagePoolLookupByName(NAME).isActive()
    assert failed["changed"] is True
