"""skygrid.fabric.ip_lease through real module processes (tests/modrun.py), including many of them
at once against one database, as concurrent pipelines would run it.

No libvirtd needed: the live DHCP end-to-end test (leases as libvirt network reservations, a guest
receiving its leased address) belongs with libvirt_network and is not here."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils.ipam.pool import parse_pools
from modrun import run_module

POOLS = {
    "vmnet": {"cidr": "10.20.0.0/22", "gateway": "10.20.0.1", "reserved": ["10.20.0.2-10.20.0.9", "10.20.1.0/28"],
              "dns_domain": "vm.example.org"},
}
WORKERS = 20


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "ipam.sqlite")


def lease(db, check=False, diff=False, **args):
    return run_module("ip_lease", dict(args, db=db, pool=args.get("pool", "vmnet"), pools=args.get("pools", POOLS)),
                      check=check, diff=diff)


def db_leases(db):
    conn = sqlite3.connect(db)
    try:
        return {owner: (ip, mac) for owner, ip, mac in conn.execute("SELECT owner, ip, mac FROM leases WHERE pool = 'vmnet'")}
    finally:
        conn.close()


def lowest_addresses(count):
    """The ``count`` lowest addresses POOLS['vmnet'] hands out, in order."""
    pool = parse_pools(POOLS)["vmnet"]
    result, number = [], pool.first
    while len(result) < count:
        if number != pool.gateway and pool.excluded_end(number) is None:
            result.append(pool.text(number))
        number += 1
    return result


def run_concurrently(jobs):
    """Run each job (a list of module argument dicts, run in order) in its own thread, all starting at
    once; each call is a separate module process. Returns, per job, the list of results."""
    barrier = threading.Barrier(len(jobs))

    def worker(calls):
        barrier.wait()
        return [run_module("ip_lease", args) for args in calls]

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(worker, jobs))


def ok(result):
    assert result["rc"] == 0 and not result.failed, result.get("msg")
    return result


# ---------------------------------------------------------------------------------------- one process at a time


def test_check_mode_then_real_then_idempotent(db):
    checked = ok(lease(db, owner="wn042-atlas-1", check=True, diff=True))
    assert checked["changed"] and checked["lease"]["ip"] == "10.20.0.10"
    assert not os.path.exists(db)
    real = ok(lease(db, owner="wn042-atlas-1", diff=True))
    assert real["changed"] and real["lease"] == checked["lease"]
    assert real["lease"]["fqdn"] == "wn042-atlas-1.vm.example.org" and real["lease"]["prefix"] == 22
    assert real["diff"]["after"]["vmnet/wn042-atlas-1"] == {"ip": "10.20.0.10", "mac": real["lease"]["mac"],
                                                            "fqdn": "wn042-atlas-1.vm.example.org"}
    again = ok(lease(db, owner="wn042-atlas-1", diff=True))
    assert not again["changed"] and again["actions"] == [] and again["lease"] == dict(real["lease"], changed=False)
    assert again["diff"] == {"before": {}, "after": {}}
    assert db_leases(db) == {"wn042-atlas-1": ("10.20.0.10", real["lease"]["mac"])}


def test_leases_list_release_and_check_mode_release(db):
    made = ok(lease(db, leases=[{"owner": "wn%d" % i} for i in range(5)]))
    assert [item["ip"] for item in made["leases"]] == lowest_addresses(5)
    assert made["usage"]["vmnet"]["in_use"] == 5
    checked = ok(lease(db, owner="wn1", state="absent", check=True))
    assert checked["changed"] and len(db_leases(db)) == 5
    items = [{"owner": "wn1", "state": "absent"}, {"owner": "wn3", "state": "absent"}, {"owner": "new"}]
    released = ok(lease(db, leases=items, diff=True))
    assert [item["changed"] for item in released["leases"]] == [True, True, True]
    assert released["leases"][2]["ip"] == lowest_addresses(2)[1]  # wn1's address, the lowest free one
    assert set(released["diff"]["before"]) == {"vmnet/wn1", "vmnet/wn3"}
    again = ok(lease(db, leases=items))
    assert not again["changed"]


def test_errors_are_failures_naming_the_field(db):
    bad_owner = lease(db, owner="wn_1")
    assert bad_owner.failed and bad_owner["field"] == "owner" and "RFC 1123" in bad_owner["msg"]
    bad_cidr = lease(db, owner="wn1", pools={"vmnet": {"cidr": "10.20.0.7/22"}})
    assert bad_cidr.failed and bad_cidr["field"] == "pools.vmnet.cidr" and "10.20.0.0/22" in bad_cidr["msg"]
    bad_mac = lease(db, owner="wn1", pools={"vmnet": {"cidr": "10.20.0.0/22", "mac_prefix": "01:00:5e"}})
    assert bad_mac.failed and bad_mac["field"] == "pools.vmnet.mac_prefix" and "multicast" in bad_mac["msg"]
    empty = ok(lease(db, leases=[]))
    assert empty["leases"] == [] and not empty["changed"]
    both = lease(db, owner="wn1", leases=[{"owner": "wn2"}])
    assert both.failed and "mutually exclusive" in both["msg"]
    assert not os.path.exists(db)


def test_full_pool_fails_with_size_and_usage(db):
    tiny = {"tiny": {"cidr": "10.30.0.0/29", "gateway": "10.30.0.1", "reserved": ["10.30.0.6"]}}
    ok(lease(db, pool="tiny", pools=tiny, leases=[{"owner": "a"}, {"owner": "b"}, {"owner": "c"}]))
    full = lease(db, pool="tiny", pools=tiny, leases=[{"owner": "d"}, {"owner": "e"}])
    assert full.failed and full["rc"] == 1 and not full["changed"]
    assert (full["field"], full["pool"], full["size"], full["in_use"]) == ("pools.tiny", "tiny", 4, 3)
    assert "pool 'tiny' is full" in full["msg"]
    ok(lease(db, pool="tiny", pools=tiny, owner="d"))  # the rolled-back call left room for exactly one


def test_changed_definition_is_reported_with_a_warning(db):
    ok(lease(db, leases=[{"owner": "wn%d" % i} for i in range(3)]))
    moved = {"vmnet": dict(POOLS["vmnet"], range={"start": "10.20.0.11", "end": "10.20.3.254"})}
    result = ok(lease(db, pools=moved, owner="new", diff=True))
    assert [(item["owner"], item["reasons"]) for item in result["stale"]] == [
        ("wn0", ["outside the range 10.20.0.11-10.20.3.254"])]
    assert any("no longer fit its definition" in str(warning) for warning in result["warnings"])
    assert result["diff"]["after"]["pool vmnet"]["range"]["start"] == "10.20.0.11"
    refused = lease(db, pools=moved, owner="wn0")
    assert refused.failed and refused["field"] == "owner" and refused["stale"][0]["ip"] == "10.20.0.10"


def test_corrupt_database_fails_and_is_untouched(db):
    with open(db, "wb") as handle:
        handle.write(b"SQLite format 2\x00" + os.urandom(4000))
    digest = hashlib.sha256(open(db, "rb").read()).hexdigest()
    result = lease(db, owner="wn1")
    assert result.failed and result["field"] == "db" and "left exactly as it is" in result["msg"]
    assert hashlib.sha256(open(db, "rb").read()).hexdigest() == digest
    assert os.listdir(os.path.dirname(db)) == ["ipam.sqlite"]


def test_locked_database_times_out(db):
    ok(lease(db, owner="wn1"))
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        result = lease(db, owner="wn2", timeout=0.5)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.failed and result["field"] == "db" and "locked" in result["msg"]
    assert ok(lease(db, owner="wn2"))["lease"]["ip"] == "10.20.0.11"


def test_exports(db, tmp_path):
    path = str(tmp_path / "vmnet.conf")
    export = {"format": "dnsmasq", "path": path}
    checked = ok(lease(db, owner="wn1", export=export, check=True))
    assert checked["export"]["changed"] and not os.path.exists(path)
    made = ok(lease(db, owner="wn1", export=export))
    with open(path) as handle:
        assert handle.read().splitlines()[1:] == ["dhcp-host=%s,10.20.0.10,wn1" % made["lease"]["mac"]]
    assert not ok(lease(db, owner="wn1", export=export))["changed"]
    hosts = str(tmp_path / "hosts")
    ok(run_module("ip_lease", {"db": db, "pool": "vmnet", "export": {"format": "hosts", "path": hosts}}))
    with open(hosts) as handle:
        assert handle.read().splitlines()[1:] == ["10.20.0.10\twn1.vm.example.org wn1"]
    reservations = ok(run_module("ip_lease", {"db": db, "export": {"format": "libvirt", "pools": ["vmnet"]}}))
    assert reservations["reservations"] == [{"mac": made["lease"]["mac"], "ip": "10.20.0.10", "name": "wn1"}]


# ---------------------------------------------------------------------------------------- many processes at once


def _check_unique(db, expected_owners):
    stored = db_leases(db)
    assert set(stored) == set(expected_owners)
    ips = [ip for ip, _mac in stored.values()]
    macs = [mac for _ip, mac in stored.values()]
    assert len(set(ips)) == len(ips), "duplicate IP"
    assert len(set(macs)) == len(macs), "duplicate MAC"
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT COUNT(*) FROM leases WHERE pool = 'vmnet'").fetchone()[0] == len(expected_owners)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    return stored


@pytest.mark.slow
def test_twenty_processes_allocate_500_leases(db):
    jobs, owners = [], []
    for worker in range(WORKERS):
        names = ["c%02d-%02d" % (worker, i) for i in range(25)]
        owners += names
        base = {"db": db, "pool": "vmnet", "pools": POOLS}
        if worker % 4 == 0:  # a mix: some single-owner calls, then a list
            calls = [dict(base, owner=name) for name in names[:3]]
            calls.append(dict(base, leases=[{"owner": name} for name in names[3:]]))
        else:
            calls = [dict(base, leases=[{"owner": name} for name in names])]
        jobs.append(calls)
    results = [ok(result) for job in run_concurrently(jobs) for result in job]
    assert len(results) == 15 + 5 * 4
    returned = {}
    for result in results:
        for item in result.get("leases") or [result["lease"]]:
            assert item["changed"] and item["owner"] not in returned
            returned[item["owner"]] = (item["ip"], item["mac"])
    stored = _check_unique(db, owners)
    assert stored == returned  # every process was told what was stored, and nothing else
    # Lowest free address, even under concurrency: with no release, exactly the 500 lowest addresses.
    assert sorted(ip for ip, _mac in stored.values()) == sorted(lowest_addresses(500))
    assert all(mac.startswith("52:54:00:") for _ip, mac in stored.values())
    # Every owner again, at once: nothing changes.
    again = run_concurrently([[dict(calls[-1], leases=[{"owner": name} for name in owners[w * 25:(w + 1) * 25]])]
                              for w, calls in enumerate(jobs[:10])])
    assert not any(ok(result)["changed"] for job in again for result in job)


@pytest.mark.slow
def test_twenty_processes_allocate_and_release_interleaved(db):
    seeded = ["old-%03d" % i for i in range(200)]
    ok(lease(db, leases=[{"owner": name} for name in seeded]))
    seeded_ips = db_leases(db)
    jobs, new_owners = [], []
    for worker in range(WORKERS):
        names = ["n%02d-%02d" % (worker, i) for i in range(25)]
        releases = seeded[worker * 10:(worker + 1) * 10]
        new_owners += names
        shared = "shared-%02d" % (worker // 2)  # two processes ask for the same owner at the same time
        base = {"db": db, "pool": "vmnet", "pools": POOLS}
        items = []
        for i in range(10):  # allocations and releases interleaved in one list
            items += [{"owner": names[i]}, {"owner": releases[i], "state": "absent"}]
        calls = [dict(base, leases=items + [{"owner": shared}])]
        if worker % 2:
            calls += [dict(base, owner=name) for name in names[10:13]]
            calls.append(dict(base, leases=[{"owner": name} for name in names[13:]]))
        else:
            calls.append(dict(base, leases=[{"owner": name} for name in names[10:]]))
        jobs.append(calls)
    outcome = run_concurrently(jobs)
    results = [ok(result) for job in outcome for result in job]
    shared_owners = ["shared-%02d" % i for i in range(WORKERS // 2)]
    stored = _check_unique(db, new_owners + shared_owners)
    allocated, shared_changed = {}, {}
    for result in results:
        for item in result.get("leases") or [result["lease"]]:
            if item["state"] == "absent":
                assert item["changed"] and item["ip"] == seeded_ips[item["owner"]][0]
            elif item["owner"].startswith("shared-"):
                shared_changed.setdefault(item["owner"], []).append(item["changed"])
                assert (item["ip"], item["mac"]) == stored[item["owner"]]
            else:
                assert item["changed"]
                allocated[item["owner"]] = (item["ip"], item["mac"])
    assert allocated == {owner: stored[owner] for owner in new_owners}
    assert all(sorted(flags) == [False, True] for flags in shared_changed.values()), shared_changed
    # At most 200 + 500 + 10 leases ever existed at once: lowest-free allocation never went beyond
    # the 710 lowest addresses of the pool.
    assert set(ip for ip, _mac in stored.values()) <= set(lowest_addresses(710))
