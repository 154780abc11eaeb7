"""Network spec normalisation and XML round trips."""

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt import network_spec
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError


def params(**over):
    base = {"name": "vmnet", "mode": "nat", "cidr": "10.20.0.0/24",
            "dhcp_range": {"start": "10.20.0.200", "end": "10.20.0.250"},
            "hosts": [{"mac": "52:54:00:00:00:02", "ip": "10.20.0.12", "name": "b"},
                      {"mac": "52:54:00:00:00:01", "ip": "10.20.0.11"}],
            "domain": "vm.example.org"}
    base.update(over)
    return base


@pytest.mark.parametrize("mode", ["nat", "route", "isolated"])
def test_round_trip(mode):
    spec = network_spec.normalise(params(mode=mode, bridge="sgvm0"))
    assert spec["address"] == "10.20.0.1" and spec["prefix"] == 24
    assert [h["mac"] for h in spec["hosts"]] == ["52:54:00:00:00:01", "52:54:00:00:00:02"]
    xml = network_spec.to_xml("vmnet", spec)
    assert ("<forward" in xml) == (mode != "isolated")
    assert network_spec.from_xml(xml) == spec


def test_bridge_mode_has_no_addressing():
    spec = network_spec.normalise({"name": "site", "mode": "bridge", "bridge": "br0"})
    xml = network_spec.to_xml("site", spec)
    assert "<forward mode=\"bridge\" />" in xml and "<ip" not in xml
    assert network_spec.from_xml(xml) == spec
    with pytest.raises(FabricError) as err:
        network_spec.normalise({"name": "site", "mode": "bridge", "bridge": "br0", "cidr": "10.0.0.0/24"})
    assert err.value.field == "cidr"


def test_netmask_form_is_read():
    xml = "<network><name>d</name><ip address='192.168.122.1' netmask='255.255.255.0'/></network>"
    assert network_spec.from_xml(xml)["prefix"] == 24


def test_gateway_and_range():
    spec = network_spec.normalise(params(gateway="10.20.0.254", dhcp_range=None))
    assert spec["address"] == "10.20.0.254" and spec["dhcp_range"] is None
    with pytest.raises(FabricError) as err:
        network_spec.normalise(params(dhcp_range={"start": "10.20.0.0", "end": "10.20.0.5"}))
    assert err.value.field == "dhcp_range.start"  # the network address
    with pytest.raises(FabricError) as err:
        network_spec.normalise(params(hosts=[{"mac": "52:54:00:00:00:01", "ip": "10.20.0.1"}]))
    assert err.value.field == "hosts[0].ip"  # the gateway
    with pytest.raises(FabricError) as err:
        network_spec.normalise(params(cidr="10.20.0.0/31"))
    assert err.value.field == "cidr"
