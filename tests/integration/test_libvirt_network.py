"""skygrid.fabric.libvirt_network against the live libvirtd (isolated networks only)."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import BASE_VOLUME, POOL, PREFIX, URI, wait_for
from modrun import run_module

pytestmark = pytest.mark.libvirt
libvirt = pytest.importorskip("libvirt")

NET = PREFIX + "-netmod"
SUBNET = "192.168.229"


def net_args(**over):
    args = {"uri": URI, "name": NET, "mode": "isolated", "bridge": "sgtest-nm0", "cidr": SUBNET + ".0/24",
            "dhcp_range": {"start": SUBNET + ".100", "end": SUBNET + ".150"},
            "hosts": [{"mac": "52:54:00:5b:00:01", "ip": SUBNET + ".11", "name": "sgtest-nm-guest"}]}
    args.update(over)
    return args


def ok(result):
    assert not result.failed, result.get("msg")
    return result


def hostsfile():
    with open("/var/lib/libvirt/dnsmasq/%s.hostsfile" % NET) as handle:
        return handle.read()


@pytest.fixture
def netmod(conn):
    yield
    run_module("libvirt_network", {"uri": URI, "name": NET, "state": "absent"})


def test_lifecycle_check_mode_and_idempotency(conn, netmod):
    planned = ok(run_module("libvirt_network", net_args(), check=True, diff=True))
    assert planned["changed"] and planned["actions"] == [
        "define network " + NET, "start network " + NET, "enable autostart of network " + NET]
    assert planned["diff"]["after"][NET]["address"] == SUBNET + ".1"
    with pytest.raises(libvirt.libvirtError):
        conn.networkLookupByName(NET)
    created = ok(run_module("libvirt_network", net_args()))
    assert created["network"]["active"] and conn.networkLookupByName(NET).isActive()
    assert "<forward" not in conn.networkLookupByName(NET).XMLDesc(0)  # isolated: nothing leaves the host
    assert ok(run_module("libvirt_network", net_args()))["changed"] is False
    stopped = ok(run_module("libvirt_network", net_args(state="inactive")))
    assert stopped["actions"] == ["stop network " + NET, "disable autostart of network " + NET]
    assert ok(run_module("libvirt_network", net_args(state="inactive")))["changed"] is False
    removed = ok(run_module("libvirt_network", net_args(state="absent")))
    assert removed["changed"]
    assert ok(run_module("libvirt_network", net_args(state="absent")))["changed"] is False


def test_dhcp_hosts_change_live_while_the_guest_keeps_its_lease(conn, pool, base_volume, guest, netmod):
    ok(run_module("libvirt_network", net_args()))
    bridge_before = conn.networkLookupByName(NET).bridgeName()
    name = PREFIX + "-nmguest"
    log = "/var/log/libvirt/qemu/%s-console.log" % name
    vm = {"uri": URI, "name": name, "state": "running", "virt_type": "qemu", "memory_mb": 256,
          "kernel": guest["kernel"], "initrd": guest["initrd"], "cmdline": "console=ttyS0 quiet", "console_log": log,
          "disks": [{"pool": POOL, "base_volume": BASE_VOLUME}],
          "nics": [{"network": NET, "mac": "52:54:00:5b:00:01", "ip": SUBNET + ".11"}]}
    if os.path.exists(log):
        os.unlink(log)  # console logs are appended to: start from an empty one
    ok(run_module("vm", vm))
    try:
        wait_for(lambda: "SKYGRID-IP: " in open(log, errors="replace").read(), 90, what="the guest's lease")
        assert "SKYGRID-IP: %s.11" % SUBNET in open(log, errors="replace").read()

        def leased():
            return SUBNET + ".11" in [lease["ipaddr"] for lease in conn.networkLookupByName(NET).DHCPLeases()]

        wait_for(leased, 30, what="the lease in libvirt's lease list")  # dnsmasq's lease helper runs just after the ACK
        hosts = net_args()["hosts"] + [{"mac": "52:54:00:5b:00:02", "ip": SUBNET + ".12", "name": "sgtest-nm-other"}]
        added = ok(run_module("libvirt_network", net_args(hosts=hosts), diff=True))
        assert added["actions"] == ["add DHCP host 52:54:00:5b:00:02 -> %s.12 in network %s" % (SUBNET, NET)]
        assert added["network"]["restarted"] is False
        assert "52:54:00:5b:00:02,%s.12,sgtest-nm-other" % SUBNET in hostsfile()  # the running dnsmasq has it
        saved = conn.networkLookupByName(NET).XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)
        assert "52:54:00:5b:00:02" in saved  # and so does the saved definition
        # Renumber the other host, then drop it: still live, never a restart.
        moved = [hosts[0], dict(hosts[1], ip=SUBNET + ".13")]
        assert ok(run_module("libvirt_network", net_args(hosts=moved)))["network"]["restarted"] is False
        assert "%s.13" % SUBNET in hostsfile()
        ok(run_module("libvirt_network", net_args()))
        assert "52:54:00:5b:00:02" not in hostsfile()
        # The guest's network never went away: same bridge, guest running, its lease still listed.
        net = conn.networkLookupByName(NET)
        assert net.bridgeName() == bridge_before and conn.lookupByName(name).isActive()
        assert leased()
        # A subnet change needs a restart: refused while the VM is attached...
        moved_subnet = {"cidr": "192.168.228.0/24", "hosts": [],
                        "dhcp_range": {"start": "192.168.228.100", "end": "192.168.228.150"}}
        refused = run_module("libvirt_network", net_args(**moved_subnet))
        assert refused.failed and refused["field"] == "allow_restart" and "VM " + name in refused["msg"]
        assert conn.networkLookupByName(NET).isActive()
    finally:
        ok(run_module("vm", dict(vm, state="absent")))
    # ...and done once it is not.
    moved_net = ok(run_module("libvirt_network", net_args(cidr="192.168.228.0/24", hosts=[],
                                                          dhcp_range={"start": "192.168.228.100",
                                                                      "end": "192.168.228.150"})))
    assert moved_net["network"]["restarted"] is True
    assert "192.168.228.1" in conn.networkLookupByName(NET).XMLDesc(0)


@pytest.mark.parametrize("over, field", [
    ({"cidr": "10.0.0.1/24"}, "cidr"),
    ({"cidr": "not-a-net"}, "cidr"),
    ({"cidr": None}, "cidr"),
    ({"dhcp_range": {"start": SUBNET + ".200", "end": SUBNET + ".100"}}, "dhcp_range"),
    ({"dhcp_range": {"start": "10.9.9.1", "end": SUBNET + ".100"}}, "dhcp_range.start"),
    ({"hosts": [{"mac": "52:54:00:5b:00:01", "ip": "10.1.1.1"}]}, "hosts[0].ip"),
    ({"hosts": [{"mac": "nope", "ip": SUBNET + ".5"}]}, "hosts[0].mac"),
    ({"hosts": [{"mac": "52:54:00:5b:00:01", "ip": SUBNET + ".5"}, {"mac": "52:54:00:5b:00:02", "ip": SUBNET + ".5"}]},
     "hosts[1].ip"),
    ({"mode": "bridge", "bridge": None}, "bridge"),
    ({"bridge": "a-very-long-bridge-name"}, "bridge"),
])
def test_errors_name_the_field(conn, over, field):
    result = run_module("libvirt_network", net_args(**over))
    assert result.failed and result["field"] == field, result.get("msg")
    with pytest.raises(libvirt.libvirtError):
        conn.networkLookupByName(NET)


def test_a_bridge_left_on_the_host_is_named_with_the_fix(conn, netmod):
    """A bridge of the network's name that outlived its network (libvirt reinstalled or crashed): libvirt says
    only 'Network is already in use by interface'; the module names the bridge and how to remove it."""
    stray = "sgtest-stray0"
    subprocess.run(["ip", "link", "add", stray, "type", "bridge"], check=True)
    try:
        result = run_module("libvirt_network", net_args(bridge=stray))
        assert result.failed and result["field"] == "bridge", result
        assert "bridge %s already exists on this host" % stray in result["msg"]
        assert "ip link delete %s" % stray in result["msg"]
    finally:
        subprocess.run(["ip", "link", "delete", stray], check=False)
    assert ok(run_module("libvirt_network", net_args(bridge=stray)))["network"]["active"]  # converges once it is gone
