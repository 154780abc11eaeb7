"""skygrid.fabric.vms against the live qemu:///system: a defined (not started) VM carrying provenance
metadata, libvirt's test driver as a second hypervisor with a leased address, and an unreachable one.

Objects are named ``sgops-inv-*`` (not the shared ``sgtest`` prefix) and removed afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils.vm import spec as vm_spec
from libvirt_objects import remove

libvirt = pytest.importorskip("libvirt")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
URI = "qemu:///system"
VM_NAME = "sgops-inv-atlas-1"
PINNED_IP = "192.168.239.20"
SHA512 = "5e" * 64
# 127.0.0.1 port 1: refused at once, and nothing leaves this machine.
UNREACHABLE = "qemu+ssh://root@127.0.0.1:1/system?no_tty=1"


@pytest.fixture
def defined_vm():
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    conn = libvirt.open(URI)
    remove(conn, domains=[VM_NAME])
    spec, _seed = vm_spec.normalise({
        "name": VM_NAME, "virt_type": "qemu", "vcpus": 1, "memory_mb": 64,
        "nics": [{"network": "sgops-inv-net", "ip": PINNED_IP}],
        "metadata": {"vo": "atlas", "trust_class": 2, "image_id": "skygrid-demo-atlas-worker",
                     "image_sha512": SHA512, "batch_state": "drained"}})
    dom = conn.defineXML(vm_spec.to_xml(spec))
    yield dom
    remove(conn, domains=[VM_NAME])
    conn.close()


LEASE_NET = "sgops-inv-net"
LEASE_VM = "sgops-inv-leased-1"
GUEST = os.path.join(os.environ.get("SKYGRID_CACHE", "/var/cache/skygrid"), "guest")


@pytest.fixture
def leased_vm(request):
    """The tiny test guest (tests/guest) on an isolated network of its own, booted until it holds a lease."""
    subprocess.run(["bash", os.path.join(ROOT, "tests", "guest", "build.sh")], check=True, stdout=subprocess.DEVNULL)
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    conn = libvirt.open(URI)

    remove(conn, domains=[LEASE_VM], networks=[LEASE_NET])
    request.addfinalizer(lambda: (remove(conn, domains=[LEASE_VM], networks=[LEASE_NET]), conn.close()))
    net = conn.networkDefineXML(
        "<network><name>%s</name><bridge name='sgopsinv0' stp='on' delay='0'/><ip address='192.168.239.1' "
        "netmask='255.255.255.0'><dhcp><range start='192.168.239.100' end='192.168.239.120'/></dhcp></ip>"
        "</network>" % LEASE_NET)
    net.create()
    spec, _seed = vm_spec.normalise({
        "name": LEASE_VM, "virt_type": "qemu", "memory_mb": 256, "kernel": os.path.join(GUEST, "vmlinuz"),
        "initrd": os.path.join(GUEST, "initrd.img"), "cmdline": "console=ttyS0 quiet", "console_log": "",
        "nics": [{"network": LEASE_NET}], "metadata": {"vo": "lhcb", "trust_class": 2, "image_id": "sgops-guest"}})
    dom = conn.defineXML(vm_spec.to_xml(spec))
    dom.create()
    deadline = time.monotonic() + 120
    addresses = []
    while time.monotonic() < deadline and not addresses:
        time.sleep(1)
        leases = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0)
        addresses = [a["addr"] for iface in leases.values() for a in iface.get("addrs") or []]
    assert addresses, "the test guest took no DHCP lease within 120 s"
    return addresses[0]


def run_inventory(tmp_path, config, *args):
    path = tmp_path / "skygrid_vms.yml"
    path.write_text(json.dumps(dict({"plugin": "skygrid.fabric.vms"}, **config)))  # JSON is YAML
    return subprocess.run([os.path.join(ROOT, ".venv", "bin", "ansible-inventory"), "-i", str(path), "--list", *args],
                          cwd=ROOT, capture_output=True, text=True, check=False,
                          env=dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
                                   PYTHONPATH=os.path.join(ROOT, "collections"), ANSIBLE_NOCOLOR="1",
                                   ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED="1"))


def inventory(tmp_path, *args, **options):
    config = dict({"hypervisors": [URI, UNREACHABLE, {"uri": "test:///default", "name": "testdrv"}]}, **options)
    proc = run_inventory(tmp_path, config, *args)
    assert proc.returncode == 0, proc.stderr
    # ansible-inventory marks strings from plugins as unsafe ({"__ansible_unsafe": value})
    return json.loads(proc.stdout, object_hook=lambda obj: obj.get("__ansible_unsafe", obj)), proc.stderr


def test_vms_as_hosts_with_provenance_groups_and_an_unreachable_hypervisor(tmp_path, defined_vm):
    listing, stderr = inventory(tmp_path)
    hostvars = listing["_meta"]["hostvars"]
    assert VM_NAME in hostvars
    assert "test" not in hostvars  # the test driver's VM carries no skygrid metadata
    host = hostvars[VM_NAME]
    assert host["ansible_host"] == PINNED_IP  # not started: no lease, the NIC's pinned address
    assert host["skygrid_vo"] == "atlas" and host["skygrid_trust_class"] == "2"
    assert host["skygrid_image_sha512"] == SHA512 and host["skygrid_uuid"] == defined_vm.UUIDString()
    assert host["skygrid_state"] == "shutoff" and host["skygrid_hypervisor"] == "localhost"
    for group in ("vo_atlas", "trust_class_2", "image_skygrid_demo_atlas_worker", "hypervisor_localhost",
                  "batch_drained", "state_shutoff"):
        assert VM_NAME in listing[group]["hosts"], group
    assert host["skygrid_unreachable_hypervisors"] == ["127.0.0.1"]
    assert "hypervisor 127.0.0.1 (%s) was skipped" % UNREACHABLE in " ".join(stderr.split())


def test_ansible_host_is_the_dhcp_lease_of_a_running_vm(tmp_path, leased_vm):
    listing, _stderr = inventory(tmp_path, hypervisors=[URI])
    host = listing["_meta"]["hostvars"][LEASE_VM]
    assert host["ansible_host"] == leased_vm and host["skygrid_addresses"] == [leased_vm]
    assert leased_vm.startswith("192.168.239.1")  # from the network's DHCP range, not pinned
    assert LEASE_VM in listing["state_running"]["hosts"] and LEASE_VM in listing["vo_lhcb"]["hosts"]


def test_leased_address_from_a_second_hypervisor(tmp_path, defined_vm):
    listing, _stderr = inventory(tmp_path, managed_only=False)
    test_vm = listing["_meta"]["hostvars"]["test"]
    assert test_vm["ansible_host"] == test_vm["skygrid_addresses"][0]  # the test driver's DHCP lease
    assert test_vm["skygrid_hypervisor"] == "testdrv"
    assert VM_NAME in listing["hypervisor_localhost"]["hosts"]


def test_strict_hypervisors_fails_naming_the_unreachable_one(tmp_path):
    proc = run_inventory(tmp_path, {"hypervisors": [URI, UNREACHABLE], "strict_hypervisors": True})
    assert proc.returncode != 0
    assert "hypervisor 127.0.0.1 (%s) was skipped" % UNREACHABLE in " ".join(proc.stderr.split())


def test_the_inventory_cache_serves_a_second_run(tmp_path, defined_vm):
    cache = {"cache": True, "cache_plugin": "ansible.builtin.jsonfile", "cache_connection": str(tmp_path / "cache"),
             "cache_timeout": 600, "hypervisors": [URI]}
    first, _warnings = inventory(tmp_path, **cache)
    assert VM_NAME in first["_meta"]["hostvars"]
    defined_vm.undefine()
    cached, _warnings = inventory(tmp_path, **cache)
    assert VM_NAME in cached["_meta"]["hostvars"]  # from the cache, not libvirt
    fresh, _warnings = inventory(tmp_path, "--flush-cache", **cache)
    assert VM_NAME not in fresh["_meta"]["hostvars"]
