"""Live migration with skygrid.fabric.vm between two hypervisors on this machine: the host's libvirtd
and a second one in the `sgmig` network namespace (scripts/migration-testbed.sh). The tiny guest moves
there and back, copying its overlay each way, and keeps running: its tick counter goes on."""

from __future__ import annotations

import os
import re
import subprocess
import xml.etree.ElementTree as ET

import pytest
from conftest import ROOT, URI, wait_for
from modrun import run_module

pytestmark = pytest.mark.libvirt
libvirt = pytest.importorskip("libvirt")

POOL = "sgmig-pool"
BASE = "sgtest-mig-base.qcow2"
NAME = "sgtest-mover"
B_LOGS = "/var/lib/skygrid-migration/var-log-libvirt/qemu"
A_LOG = "/var/log/libvirt/qemu/%s-console.log" % NAME
B_LOG = os.path.join(B_LOGS, "%s-console.log" % NAME)
TICK = re.compile(r"SKYGRID-TICK (\d+)")


@pytest.fixture(scope="module")
def second_host(conn):
    script = os.path.join(ROOT, "scripts", "migration-testbed.sh")
    subprocess.run(["bash", script, "start"], check=True, stdout=subprocess.DEVNULL)
    uri = subprocess.run(["bash", script, "uri"], check=True, stdout=subprocess.PIPE, text=True).stdout.strip()
    other = libvirt.open(uri)
    for hv in (conn, other):
        pool = hv.storagePoolLookupByName(POOL)
        pool.refresh(0)
        if BASE not in pool.listVolumes():
            pool.createXML("<volume><name>%s</name><capacity unit='MiB'>64</capacity>"
                           "<target><format type='qcow2'/></target></volume>" % BASE, 0)
    yield uri, other
    for hv, uri_of in ((other, uri), (conn, URI)):
        run_module("vm", {"uri": uri_of, "name": NAME, "state": "absent"})
    other.close()


def ticks(path):
    try:
        with open(path, errors="replace") as handle:
            return [int(n) for n in TICK.findall(handle.read())]
    except OSError:
        return []


def ok(result):
    assert not result.failed, result.get("msg")
    return result


def volumes(hv):
    pool = hv.storagePoolLookupByName(POOL)
    pool.refresh(0)
    return set(pool.listVolumes())


def seed_mode(hv):
    vol = hv.storagePoolLookupByName(POOL).storageVolLookupByName(NAME + "-cidata.iso")
    return ET.fromstring(vol.XMLDesc(0)).findtext("target/permissions/mode")


def test_migrate_there_and_back_keeps_the_guest_running(conn, guest, second_host):
    b_uri, b_conn = second_host
    for path in (A_LOG, B_LOG):
        if os.path.exists(path):
            os.unlink(path)
    spec = {"uri": URI, "name": NAME, "state": "running", "virt_type": "qemu", "memory_mb": 192,
            "kernel": guest["kernel"], "initrd": guest["initrd"], "cmdline": "console=ttyS0 quiet",
            "disks": [{"pool": POOL, "base_volume": BASE}],
            "cloud_init": {"user_data": "#cloud-config\n#skygrid-marker: mover\n"}}
    ok(run_module("vm", spec))
    wait_for(lambda: len(ticks(A_LOG)) >= 3, 90, what="the guest's ticks on host A")

    there = ok(run_module("vm", {"uri": URI, "name": NAME, "migrate_to": b_uri}))["migration"]
    assert there["migrated"] and there["copied_disks"] == ["vda"] and there["seconds"] > 0
    assert b_conn.lookupByName(NAME).isActive()
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName(NAME)
    assert not {NAME + "-vda.qcow2", NAME + "-cidata.iso"} & volumes(conn)  # the source's copies are gone
    assert {NAME + "-vda.qcow2", NAME + "-cidata.iso"} <= volumes(b_conn)
    assert seed_mode(b_conn) == "0600"  # the copied seed is as private as the original
    last_on_a = max(ticks(A_LOG))
    wait_for(lambda: ticks(B_LOG) and max(ticks(B_LOG)) > last_on_a + 1, 30, what="ticks on host B")
    assert min(ticks(B_LOG)) <= last_on_a + 2  # the counter went on: no reboot
    assert "SKYGRID-GUEST: booted" not in open(B_LOG, errors="replace").read()

    again = ok(run_module("vm", {"uri": URI, "name": NAME, "migrate_to": b_uri}))
    assert again["changed"] is False and again["migration"]["already_there"] is True

    back = ok(run_module("vm", {"uri": b_uri, "name": NAME, "migrate_to": URI,
                                "migrate_uri": "tcp://10.254.77.1"}))["migration"]
    assert back["migrated"] and back["copied_disks"] == ["vda"]
    last_on_b = max(ticks(B_LOG))
    wait_for(lambda: max(ticks(A_LOG)) > last_on_b + 1, 30, what="ticks back on host A")
    assert not {NAME + "-vda.qcow2", NAME + "-cidata.iso"} & volumes(b_conn)
    assert seed_mode(conn) == "0600"
    # Home again, the definition is the one the module wrote: nothing to change, no restart pending.
    settled = ok(run_module("vm", spec))
    assert settled["changed"] is False and settled["restart_required"] is False
    info = ok(run_module("vm_info", {"uri": URI, "name": NAME}))["vms"][0]
    assert info["state"] == "running" and info["disks"][0]["volume"] == NAME + "-vda.qcow2"


def test_migration_errors(conn, second_host):
    b_uri, _b_conn = second_host
    unreachable = run_module("vm", {"uri": URI, "name": NAME, "migrate_to": "qemu+tcp://127.0.0.1:1/system"})
    assert unreachable.failed and unreachable["field"] == "uri" and "cannot connect" in unreachable["msg"]
    missing = run_module("vm", {"uri": URI, "name": "sgtest-nowhere", "migrate_to": b_uri})
    assert missing.failed and missing["field"] == "name"
    ok(run_module("vm", {"uri": URI, "name": NAME, "state": "absent"}))
    ok(run_module("vm", {"uri": URI, "name": NAME, "virt_type": "qemu", "memory_mb": 64}))
    stopped = run_module("vm", {"uri": URI, "name": NAME, "migrate_to": b_uri})
    assert stopped.failed and stopped["field"] == "migrate_to" and "not running" in stopped["msg"]
    ok(run_module("vm", {"uri": URI, "name": NAME, "state": "absent"}))
