"""Unit tests of module_utils/ipam/ (pool.py, store.py, transaction.py, exports.py): pools, allocation, MACs, the SQLite store and exports."""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import os
import stat
import signal
import sqlite3
import threading
import time

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils.ipam import transaction
from ansible_collections.skygrid.fabric.plugins.module_utils.files import write_atomic
from ansible_collections.skygrid.fabric.plugins.module_utils.ipam.pool import Pool, build_requests, check_owner, derive_mac, ipkey, parse_pools
from ansible_collections.skygrid.fabric.plugins.module_utils.ipam.store import APPLICATION_ID
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.reconcile import Reconciler

NET = {"cidr": "10.20.0.0/24", "gateway": "10.20.0.1", "dns_domain": "vm.example.org"}


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "ipam.sqlite")


def call(db, pools, owner=None, state="present", leases=None, pool="vmnet", check=False, export=None, timeout=5):
    reconciler = Reconciler(check_mode=check)
    requests = build_requests(pool, owner, state, leases)
    report = transaction.run(db, pools, requests, reconciler, export=export, pool=pool, timeout=timeout)
    return report, reconciler


def owners(prefix, count, start=0, **extra):
    return [dict({"owner": "%s%d" % (prefix, i)}, **extra) for i in range(start, start + count)]


def rows(db):
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT pool, owner, ip, mac FROM leases ORDER BY pool, owner").fetchall()
    finally:
        conn.close()


def sha(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def raises(field, *fragments):
    """Context manager: a FabricError naming ``field`` whose message has every fragment."""
    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(FabricError)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            assert self.info.value.field == field, str(self.info.value)
            for fragment in fragments:
                assert fragment in str(self.info.value), str(self.info.value)
            return handled
    return _Check()


# ---------------------------------------------------------------------------------------- pools


def test_ipv4_pool_excludes_network_broadcast_and_gateway():
    pool = Pool("vmnet", {"cidr": "10.20.0.0/29", "gateway": "10.20.0.1"})
    assert pool.range_text() == "10.20.0.1-10.20.0.6"
    assert pool.size == 5  # .1-.6 less the gateway


def test_small_ipv4_subnets():
    assert Pool("p", {"cidr": "10.0.0.0/30"}).size == 2
    assert Pool("p", {"cidr": "10.0.0.0/31"}).size == 2  # RFC 3021 point-to-point: both usable
    assert Pool("p", {"cidr": "10.0.0.7/32"}).size == 1


@pytest.mark.parametrize("cidr,fragment", [
    ("10.20.0.0/33", "not a valid subnet"),
    ("banana", "no prefix length"),
    ("10.20.0.0", "no prefix length"),
    ("10.20.0.5/24", "host bits set; the subnet is '10.20.0.0/24'"),
    ("fd00::1/64", "host bits set; the subnet is 'fd00::/64'"),
    ("300.1.1.0/24", "not a valid subnet"),
    ("", "a pool needs 'cidr'"),
])
def test_bad_cidr_names_the_field(cidr, fragment):
    with raises("pools.vmnet.cidr", fragment):
        parse_pools({"vmnet": {"cidr": cidr}})


def test_missing_cidr_and_unknown_key():
    with raises("pools.vmnet.cidr", "needs 'cidr'"):
        parse_pools({"vmnet": {"gateway": "10.0.0.1"}})
    with raises("pools.vmnet", "unknown key(s) gatway"):
        parse_pools({"vmnet": {"cidr": "10.0.0.0/24", "gatway": "10.0.0.1"}})


@pytest.mark.parametrize("definition,field,fragment", [
    ({"gateway": "10.30.0.1"}, "pools.vmnet.gateway", "not in the pool's subnet"),
    ({"gateway": "10.20.0.0"}, "pools.vmnet.gateway", "network address"),
    ({"gateway": "10.20.0.255"}, "pools.vmnet.gateway", "broadcast address"),
    ({"gateway": "fd00::1"}, "pools.vmnet.gateway", "not in the pool's subnet"),
    ({"range": {"start": "10.20.0.0", "end": "10.20.0.9"}}, "pools.vmnet.range.start", "network address"),
    ({"range": {"start": "10.20.0.9", "end": "10.20.0.255"}}, "pools.vmnet.range.end", "broadcast address"),
    ({"range": {"start": "10.20.0.90", "end": "10.20.0.10"}}, "pools.vmnet.range", "after end"),
    ({"range": {"start": "10.20.0.9"}}, "pools.vmnet.range", "'start' and 'end'"),
    ({"reserved": ["10.20.1.5"]}, "pools.vmnet.reserved[0]", "not in the pool's subnet"),
    ({"reserved": ["10.20.0.5", "10.20.0.9-10.20.0.3"]}, "pools.vmnet.reserved[1]", "ends before it starts"),
    ({"reserved": ["10.20.0.0/16"]}, "pools.vmnet.reserved[0]", "not inside"),
    ({"dns_domain": "bad_domain.org"}, "pools.vmnet.dns_domain", "not a valid DNS domain"),
    ({"range": {"start": "10.20.0.5", "end": "10.20.0.5"}, "gateway": "10.20.0.5"}, "pools.vmnet",
     "no address to hand out"),
])
def test_bad_pool_definitions(definition, field, fragment):
    with raises(field, fragment):
        parse_pools({"vmnet": dict({"cidr": "10.20.0.0/24"}, **definition)})


@pytest.mark.parametrize("prefix,fragment", [
    ("53:54:00", "multicast"),
    ("50:54:00", "not locally administered"),
    ("00:16:3e", "not locally administered"),
    ("52:54:00:00:00:00", "1-5 hex octets"),
    ("52:zz", "1-5 hex octets"),
    ("", "1-5 hex octets"),
])
def test_mac_prefix_must_be_locally_administered_unicast(prefix, fragment):
    with raises("pools.vmnet.mac_prefix", fragment):
        parse_pools({"vmnet": {"cidr": "10.20.0.0/24", "mac_prefix": prefix}})


def test_mac_prefix_default_and_normalisation():
    assert Pool("p", {"cidr": "10.0.0.0/24"}).mac_prefix == "52:54:00"
    assert Pool("p", {"cidr": "10.0.0.0/24", "mac_prefix": "0A-BC"}).mac_prefix == "0a:bc"
    assert int("52", 16) & 0x02 and not int("52", 16) & 0x01  # the default really is local + unicast


def test_ipv6_pool_is_bounded():
    pool = Pool("v6", {"cidr": "fd00:20::/64", "gateway": "fd00:20::1"})
    assert pool.range_text() == "fd00:20::1-fd00:20::ffff"
    assert pool.size == 0xFFFF - 1
    wide = Pool("v6", {"cidr": "fd00:20::/64", "range": {"start": "fd00:20::1:0", "end": "fd00:20::ffff:ffff"}})
    assert wide.size == 0xFFFF0000
    with raises("pools.v6.range.start", "subnet-router anycast"):
        Pool("v6", {"cidr": "fd00:20::/64", "range": {"start": "fd00:20::", "end": "fd00:20::9"}})


# ---------------------------------------------------------------------------------------- owners


@pytest.mark.parametrize("owner", ["bad_name", "-wn1", "wn1-", "a" * 64, "wn.1", "wn 1", "wn\u00e9", "*"])
def test_owner_must_be_a_host_name(db, owner):
    with raises("owner", "not a valid host name", "RFC 1123"):
        call(db, {"vmnet": NET}, owner)
    assert not os.path.exists(db)


def test_owner_valid_forms_and_case(db):
    assert check_owner("a" * 63) == "a" * 63
    assert check_owner("0wn") == "0wn"
    report, _rec = call(db, {"vmnet": NET}, "WN042-Atlas-1")
    assert report["leases"][0]["owner"] == "wn042-atlas-1"
    again, reconciler = call(db, {"vmnet": NET}, "wn042-atlas-1")
    assert again["leases"][0]["ip"] == report["leases"][0]["ip"] and not reconciler.changed


def test_bad_owner_in_a_list_changes_nothing(db):
    items = owners("wn", 3) + [{"owner": "no_underscores"}]
    with raises("leases[3].owner", "not a valid host name"):
        call(db, {"vmnet": NET}, leases=items)
    assert not os.path.exists(db)


def test_owner_listed_twice(db):
    with raises("leases[2].owner", "already listed at leases[0]"):
        call(db, {"vmnet": NET}, leases=[{"owner": "a"}, {"owner": "b"}, {"owner": "A"}])


def test_missing_pool_and_undefined_pool(db):
    with raises("pool", "no pool"):
        call(db, {"vmnet": NET}, "wn1", pool=None)
    with raises("pools.other", "not defined"):
        call(db, {"vmnet": NET}, "wn1", pool="other")
    assert not os.path.exists(db)


# ---------------------------------------------------------------------------------------- allocation


def test_lowest_free_address_gateway_network_broadcast_never(db):
    pools = {"vmnet": {"cidr": "10.20.0.0/29", "gateway": "10.20.0.1"}}
    report, _rec = call(db, pools, leases=owners("wn", 5))
    assert [lease["ip"] for lease in report["leases"]] == ["10.20.0.%d" % i for i in range(2, 7)]
    with raises("pools.vmnet", "pool 'vmnet' is full", "5 addresses", "5 in use", "asked for 1 more") as info:
        call(db, pools, "wn9")
    assert info.value.details["size"] == 5 and info.value.details["in_use"] == 5
    assert len(rows(db)) == 5


def test_full_pool_in_a_list_rolls_everything_back(db):
    pools = {"vmnet": {"cidr": "10.20.0.0/29", "gateway": "10.20.0.1"}}
    call(db, pools, leases=owners("wn", 2))
    reconciler = Reconciler()
    with raises("pools.vmnet", "is full", "5 addresses", "2 in use", "asked for 4 more", "nothing was changed"):
        transaction.run(db, pools, build_requests("vmnet", leases=owners("wn", 6)), reconciler)
    assert not reconciler.changed and reconciler.actions == []
    assert len(rows(db)) == 2


def test_reserved_addresses_are_never_handed_out(db):
    pools = {"vmnet": {"cidr": "10.20.0.0/27", "gateway": "10.20.0.1",
                       "reserved": ["10.20.0.2", "10.20.0.4-10.20.0.7", "10.20.0.16/30", "10.20.0.30"]}}
    pool = parse_pools(pools)["vmnet"]
    assert pool.size == 30 - 1 - 1 - 4 - 4 - 1
    report, _rec = call(db, pools, leases=owners("wn", pool.size))
    handed = [lease["ip"] for lease in report["leases"]]
    assert handed == ["10.20.0.%d" % i for i in [3] + list(range(8, 16)) + list(range(20, 30))]
    with raises("pools.vmnet", "is full"):
        call(db, pools, "one-more")


def test_reserved_may_name_network_and_broadcast():
    pool = Pool("p", {"cidr": "10.20.0.0/24", "reserved": ["10.20.0.0-10.20.0.9", "10.20.0.255"]})
    assert pool.size == 254 - 9


def test_range_is_respected(db):
    pools = {"vmnet": dict(NET, range={"start": "10.20.0.100", "end": "10.20.0.102"})}
    report, _rec = call(db, pools, leases=owners("wn", 3))
    assert [lease["ip"] for lease in report["leases"]] == ["10.20.0.100", "10.20.0.101", "10.20.0.102"]


def test_lease_fields_and_fqdn(db):
    report, reconciler = call(db, {"vmnet": NET}, "wn1")
    lease = report["leases"][0]
    assert lease == {"pool": "vmnet", "owner": "wn1", "state": "present", "ip": "10.20.0.2",
                     "mac": derive_mac("52:54:00", "vmnet", "wn1"), "fqdn": "wn1.vm.example.org",
                     "prefix": 24, "gateway": "10.20.0.1", "changed": True}
    assert reconciler.actions[-1] == "allocate 10.20.0.2 %s to wn1 in pool vmnet" % lease["mac"]
    assert reconciler.diff()["after"]["vmnet/wn1"]["ip"] == "10.20.0.2"
    bare, _rec = call(db, {"plain": {"cidr": "10.30.0.0/24"}}, "wn1", pool="plain")
    assert bare["leases"][0]["fqdn"] == "wn1" and bare["leases"][0]["gateway"] is None


def test_same_owner_again_is_unchanged(db):
    first, _rec = call(db, {"vmnet": NET}, "wn1")
    again, reconciler = call(db, {"vmnet": NET}, "wn1")
    assert again["leases"][0] == dict(first["leases"][0], changed=False)
    assert not reconciler.changed and reconciler.actions == [] and reconciler.diff() == {"before": {}, "after": {}}


def test_release_and_reuse_of_the_lowest_address(db):
    call(db, {"vmnet": NET}, leases=owners("wn", 4))  # .2 .3 .4 .5
    report, reconciler = call(db, {"vmnet": NET}, "wn1", state="absent")
    assert report["leases"][0]["ip"] == "10.20.0.3" and reconciler.changed
    assert reconciler.diff()["before"]["vmnet/wn1"]["ip"] == "10.20.0.3"
    again, reconciler = call(db, {"vmnet": NET}, "wn1", state="absent")
    assert not reconciler.changed and again["leases"][0]["ip"] is None
    report, _rec = call(db, {"vmnet": NET}, leases=owners("new", 2))
    assert [lease["ip"] for lease in report["leases"]] == ["10.20.0.3", "10.20.0.6"]


def test_release_and_allocate_in_one_transaction(db):
    call(db, {"vmnet": NET}, leases=owners("wn", 3))  # .2 .3 .4
    items = [{"owner": "fresh"}, {"owner": "wn0", "state": "absent"}, {"owner": "later"}]
    report = call(db, {"vmnet": NET}, leases=items)[0]
    assert [lease["ip"] for lease in report["leases"]] == ["10.20.0.5", "10.20.0.2", "10.20.0.2"]
    expected = {"fresh": "10.20.0.5", "later": "10.20.0.2", "wn1": "10.20.0.3", "wn2": "10.20.0.4"}
    assert {row[1]: row[2] for row in rows(db)} == expected


def test_many_owners_in_one_transaction(db):
    pools = {"vmnet": {"cidr": "10.20.0.0/20", "gateway": "10.20.0.1"}}
    report = call(db, pools, leases=owners("wn", 2000))[0]
    ips = [int(ipaddress.ip_address(lease["ip"])) for lease in report["leases"]]
    assert ips == list(range(int(ipaddress.ip_address("10.20.0.2")), int(ipaddress.ip_address("10.20.0.2")) + 2000))
    assert len({lease["mac"] for lease in report["leases"]}) == 2000
    assert report["usage"] == {"vmnet": {"size": 4093, "in_use": 2000, "free": 2093}}
    assert len(rows(db)) == 2000


def test_several_pools_in_one_call(db):
    pools = {"vmnet": NET, "v6": {"cidr": "fd00:20::/64", "gateway": "fd00:20::1"}}
    report, _rec = call(db, pools, leases=[{"owner": "wn1"}, {"owner": "wn1", "pool": "v6"}])
    assert [lease["ip"] for lease in report["leases"]] == ["10.20.0.2", "fd00:20::2"]
    assert report["leases"][0]["mac"] != report["leases"][1]["mac"]
    assert set(report["usage"]) == {"vmnet", "v6"}


def test_ipv6_allocation_and_exhaustion(db):
    pools = {"v6": {"cidr": "fd00:20::/64", "gateway": "fd00:20::1", "reserved": ["fd00:20::3"],
                    "range": {"start": "fd00:20::1", "end": "fd00:20::5"}}}
    report, _rec = call(db, pools, leases=owners("wn", 3), pool="v6")
    assert [lease["ip"] for lease in report["leases"]] == ["fd00:20::2", "fd00:20::4", "fd00:20::5"]
    assert report["leases"][0]["prefix"] == 64 and report["leases"][0]["gateway"] == "fd00:20::1"
    with raises("pools.v6", "pool 'v6' is full", "3 addresses", "3 in use"):
        call(db, pools, "wn9", pool="v6")
    call(db, pools, "wn1", state="absent", pool="v6")
    report, _rec = call(db, pools, "wn9", pool="v6")
    assert report["leases"][0]["ip"] == "fd00:20::4"


def test_ipv6_default_range_upper_end():
    pools = {"v6": {"cidr": "fd00:20::/120"}}  # smaller than the default bound: the subnet's end
    pool = parse_pools(pools)["v6"]
    assert pool.range_text() == "fd00:20::1-fd00:20::ff"


def test_unused_pool_definition_is_not_stored(db):
    call(db, {"vmnet": NET}, "wn1")
    reconciler = call(db, {"vmnet": NET, "other": {"cidr": "10.99.0.0/24"}}, "gone", state="absent", pool="other")[1]
    assert not reconciler.changed
    conn = sqlite3.connect(db)
    assert [row[0] for row in conn.execute("SELECT name FROM pools")] == ["vmnet"]
    conn.close()


def test_stored_definition_is_used_when_none_is_given(db):
    call(db, {"vmnet": NET}, "wn1")
    report, reconciler = call(db, {}, "wn2")
    assert report["leases"][0]["ip"] == "10.20.0.3" and report["leases"][0]["fqdn"] == "wn2.vm.example.org"
    assert reconciler.actions == ["allocate 10.20.0.3 %s to wn2 in pool vmnet" % report["leases"][0]["mac"]]


def test_allocation_matches_a_brute_force_model(db):
    """Random calls mixing allocations and releases (with a full pool now and then) against the simplest
    possible model: each new lease takes the lowest allocatable address not in use."""
    import random
    pools = {"vmnet": {"cidr": "10.20.0.0/26", "gateway": "10.20.0.1", "reserved": ["10.20.0.5-10.20.0.8", "10.20.0.33"]}}
    pool = parse_pools(pools)["vmnet"]
    allocatable = [n for n in range(pool.first, pool.last + 1) if pool.excluded_end(n) is None]
    rng = random.Random(20260524)
    model, names = {}, ["vm%d" % i for i in range(70)]
    for _round in range(150):
        items, seen = [], set()
        for _item in range(rng.randint(1, 12)):
            owner = rng.choice(names)
            if owner not in seen:
                seen.add(owner)
                items.append({"owner": owner, "state": rng.choice(["present", "present", "absent"])})
        expected, full = dict(model), False
        for item in items:
            if item["state"] == "absent":
                expected.pop(item["owner"], None)
            elif item["owner"] not in expected:
                free = [n for n in allocatable if n not in set(expected.values())]
                if not free:
                    full = True
                    break
                expected[item["owner"]] = free[0]
        if full:
            with raises("pools.vmnet", "is full"):
                call(db, pools, leases=items)
        else:
            report = call(db, pools, leases=items)[0]
            for item, lease in zip(items, report["leases"]):
                if item["state"] == "present":
                    assert lease["ip"] == pool.text(expected[item["owner"]]), (item, lease)
            model = expected
        assert {row[1]: row[2] for row in rows(db)} == {owner: pool.text(n) for owner, n in model.items()}


def test_hint_is_only_a_shortcut(db):
    call(db, {"vmnet": NET}, leases=owners("wn", 5))  # .2-.6
    conn = sqlite3.connect(db)
    fingerprint, hint = conn.execute("SELECT fingerprint, next FROM hints WHERE pool = 'vmnet'").fetchone()
    assert int(hint, 16) == int(ipaddress.ip_address("10.20.0.7"))
    # A lease deleted behind the module's back: the hint does not know, so .3 is skipped, never doubled.
    conn.execute("DELETE FROM leases WHERE owner = 'wn1'")
    conn.commit()
    assert call(db, {"vmnet": NET}, "x1")[0]["leases"][0]["ip"] == "10.20.0.7"
    # A hint that claims more than is true is caught by the unique constraint at worst; one made for
    # another definition is ignored.
    conn.execute("UPDATE hints SET fingerprint = 'other', next = ?", (ipkey(int(ipaddress.ip_address("10.20.0.200"))),))
    conn.commit()
    conn.close()
    assert call(db, {"vmnet": NET}, "x2")[0]["leases"][0]["ip"] == "10.20.0.3"
    assert fingerprint == parse_pools({"vmnet": NET})["vmnet"].fingerprint()


# ---------------------------------------------------------------------------------------- MACs


def test_mac_is_deterministic(tmp_path):
    one, two = str(tmp_path / "one.sqlite"), str(tmp_path / "two.sqlite")
    first, _rec = call(one, {"vmnet": NET}, leases=owners("wn", 20))
    second, _rec = call(two, {"vmnet": NET}, leases=owners("wn", 20))
    assert first["leases"] == second["leases"]
    for lease in first["leases"]:
        assert lease["mac"] == derive_mac("52:54:00", "vmnet", lease["owner"])
    assert derive_mac("52:54:00", "other", "wn1") != derive_mac("52:54:00", "vmnet", "wn1")
    mac = derive_mac("02:aa:bb:cc", "vmnet", "wn1")
    assert mac.startswith("02:aa:bb:cc:") and len(mac.split(":")) == 6


def test_mac_collision_takes_the_next_candidate(db):
    call(db, {"vmnet": NET}, "seed")
    taken = derive_mac("52:54:00", "vmnet", "wn1")
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO leases (pool, owner, ip, ipkey, mac, created) "
                 "VALUES ('elsewhere', 'x', '10.9.9.9', '0000000000000000000000000a090909', ?, 0)", (taken,))
    conn.commit()
    conn.close()
    report, _rec = call(db, {"vmnet": NET}, "wn1")
    assert report["leases"][0]["mac"] == derive_mac("52:54:00", "vmnet", "wn1", 1) != taken


def test_small_mac_space_is_filled_then_reported(db):
    pools = {"tiny": {"cidr": "10.40.0.0/22", "mac_prefix": "52:54:00:00:01"}}  # 256 MACs
    report, _rec = call(db, pools, leases=owners("wn", 256), pool="tiny")
    macs = [lease["mac"] for lease in report["leases"]]
    assert len(set(macs)) == 256 and all(mac.startswith("52:54:00:00:01:") for mac in macs)
    with raises("pools.tiny.mac_prefix", "every MAC under the prefix 52:54:00:00:01 is taken"):
        call(db, pools, "wn999", pool="tiny")


# ---------------------------------------------------------------------------------------- check mode


def test_check_mode_without_database_writes_nothing(db):
    report, reconciler = call(db, {"vmnet": NET}, leases=owners("wn", 3), check=True)
    assert [lease["ip"] for lease in report["leases"]] == ["10.20.0.2", "10.20.0.3", "10.20.0.4"]
    assert reconciler.changed and reconciler.actions[0].startswith("create the IPAM database")
    assert not os.path.exists(db) and not os.listdir(os.path.dirname(db))


def test_check_mode_with_database_reports_the_next_address(db):
    call(db, {"vmnet": NET}, leases=owners("wn", 2))
    before = rows(db)
    report, reconciler = call(db, {"vmnet": NET}, leases=owners("wn", 4), check=True)
    assert [lease["ip"] for lease in report["leases"]] == ["10.20.0.2", "10.20.0.3", "10.20.0.4", "10.20.0.5"]
    assert [lease["changed"] for lease in report["leases"]] == [False, False, True, True]
    assert len(reconciler.actions) == 2 and rows(db) == before
    real, _rec = call(db, {"vmnet": NET}, leases=owners("wn", 4))
    assert real["leases"] == report["leases"]


def test_check_mode_release(db):
    call(db, {"vmnet": NET}, "wn1")
    report, reconciler = call(db, {"vmnet": NET}, "wn1", state="absent", check=True)
    assert reconciler.changed and report["leases"][0]["ip"] == "10.20.0.2"
    assert len(rows(db)) == 1


# ---------------------------------------------------------------------------------------- definition changes


def test_changed_definition_reports_leases_outside_it(db):
    call(db, {"vmnet": NET}, leases=owners("wn", 5))  # .2-.6
    narrowed = dict(NET, range={"start": "10.20.0.5", "end": "10.20.0.254"}, reserved=["10.20.0.6"])
    report, reconciler = call(db, {"vmnet": narrowed}, "new1")
    assert report["leases"][0]["ip"] == "10.20.0.7"
    stale = {lease["owner"]: lease["reasons"] for lease in report["stale"]}
    assert stale == {"wn0": ["outside the range 10.20.0.5-10.20.0.254"],
                     "wn1": ["outside the range 10.20.0.5-10.20.0.254"],
                     "wn2": ["outside the range 10.20.0.5-10.20.0.254"],
                     "wn4": ["a reserved address"]}
    assert reconciler.actions[0].startswith("update the definition of pool vmnet: range")
    assert reconciler.diff()["before"]["pool vmnet"]["range"]["start"] == "10.20.0.1"
    with raises("owner", "lease of 'wn1'", "no longer fits", "Release it (state: absent)") as info:
        call(db, {"vmnet": narrowed}, "wn1")
    assert info.value.details["stale"][0]["ip"] == "10.20.0.3"
    assert call(db, {"vmnet": narrowed}, "wn3")[0]["leases"][0]["ip"] == "10.20.0.5"  # still fits
    release, _rec = call(db, {"vmnet": narrowed}, "wn1", state="absent")
    assert release["leases"][0]["ip"] == "10.20.0.3"
    assert "wn1" not in {lease["owner"] for lease in release["stale"]}
    again, _rec = call(db, {"vmnet": narrowed}, "wn1")
    assert again["leases"][0]["ip"] == "10.20.0.8"


def test_moved_subnet_and_new_gateway_and_mac_prefix(db):
    call(db, {"vmnet": NET}, leases=owners("wn", 2))  # .2 .3
    moved = {"cidr": "10.21.0.0/24", "gateway": "10.21.0.1"}
    report, _rec = call(db, {"vmnet": moved}, "new1")
    assert report["leases"][0]["ip"] == "10.21.0.2"
    assert all("outside the subnet 10.21.0.0/24" in lease["reasons"] for lease in report["stale"])
    assert len(report["stale"]) == 2 and report["usage"]["vmnet"] == {"size": 253, "in_use": 3, "free": 252}
    regated = dict(moved, gateway="10.21.0.2", mac_prefix="02:00:00")
    report, _rec = call(db, {"vmnet": regated}, "new2")
    new1 = [lease for lease in report["stale"] if lease["owner"] == "new1"][0]
    assert new1["reasons"][0] == "the gateway" and "is not under the prefix 02:00:00" in new1["reasons"][1]


def test_usage_and_stale_in_check_mode_include_the_planned_changes(db):
    pools = {"vmnet": dict(NET, reserved=["10.20.0.10-10.20.0.19"])}
    call(db, pools, leases=owners("wn", 4))  # .2-.5
    narrowed = {"vmnet": dict(pools["vmnet"], range={"start": "10.20.0.3", "end": "10.20.0.254"})}
    report = call(db, narrowed, leases=[{"owner": "wn0", "state": "absent"}, {"owner": "a"}, {"owner": "b"}],
                  check=True)[0]
    assert report["stale"] == []  # wn0 (.2, now outside the range) would be released
    size = 252 - 10
    assert report["usage"] == {"vmnet": {"size": size, "in_use": 5, "free": size - 5}}
    real = call(db, narrowed, leases=[{"owner": "wn0", "state": "absent"}, {"owner": "a"}, {"owner": "b"}])[0]
    assert real["usage"] == report["usage"] and real["leases"] == report["leases"]
    assert [lease["ip"] for lease in real["leases"][1:]] == ["10.20.0.6", "10.20.0.7"]
    untouched = call(db, narrowed, "wn1", check=True)[0]
    assert untouched["usage"] == real["usage"]


def test_usage_counts_leases_in_reserved_and_other_versions_as_not_fitting(db):
    call(db, {"vmnet": NET}, leases=owners("wn", 6))  # .2-.7
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO leases (pool, owner, ip, ipkey, mac, created) VALUES "
                 "('vmnet', 'six', '::a14:9', ?, '52:54:00:00:00:99', 0)", (ipkey(0x0A140009),))
    conn.commit()
    conn.close()
    pools = {"vmnet": dict(NET, reserved=["10.20.0.3", "10.20.0.5-10.20.0.6"])}
    report = call(db, pools, "new")[0]
    assert report["leases"][0]["ip"] == "10.20.0.8"
    assert {lease["owner"]: lease["reasons"] for lease in report["stale"]} == {
        "wn1": ["a reserved address"], "wn3": ["a reserved address"], "wn4": ["a reserved address"],
        "six": ["outside the subnet 10.20.0.0/24"]}
    assert report["usage"]["vmnet"] == {"size": 250, "in_use": 8, "free": 250 - 4}


# ---------------------------------------------------------------------------------------- the store


def test_database_is_wal_with_unique_constraints(db):
    call(db, {"vmnet": NET}, "wn1")
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        ip, mac = conn.execute("SELECT ip, mac FROM leases").fetchone()
        for values in [("vmnet", "other", ip, "52:54:00:00:00:01"),    # same IP
                       ("vmnet", "other", "10.20.0.99", mac),          # same MAC
                       ("vmnet", "wn1", "10.20.0.99", "52:54:00:00:00:01")]:  # same owner
            with pytest.raises(sqlite3.IntegrityError):
                conn.execute("INSERT INTO leases (pool, owner, ip, ipkey, mac, created) VALUES (?, ?, ?, ?, ?, 0)",
                             values[:3] + (ipkey(int(ipaddress.ip_address(values[2]))),) + values[3:])
    finally:
        conn.close()


def test_busy_database_times_out_with_a_clear_error(db):
    call(db, {"vmnet": NET}, "wn1")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with raises("db", "stayed locked by another run", "raise 'timeout'"):
            call(db, {"vmnet": NET}, "wn2", timeout=0.2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert call(db, {"vmnet": NET}, "wn2")[0]["leases"][0]["ip"] == "10.20.0.3"


def _hold_queue(db):
    fd = os.open(db + ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_writer_queue_times_out_in_the_main_thread(db):
    call(db, {"vmnet": NET}, "wn1")
    handler = signal.getsignal(signal.SIGALRM)
    fd = _hold_queue(db)
    try:
        began = time.monotonic()
        with raises("db", "stayed locked by another run"):
            call(db, {"vmnet": NET}, "wn2", timeout=0.3)
        assert time.monotonic() - began >= 0.3
    finally:
        os.close(fd)
    assert signal.getsignal(signal.SIGALRM) is handler and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_writer_queue_waits_for_its_turn(db):
    call(db, {"vmnet": NET}, "wn1")
    fd = _hold_queue(db)
    threading.Timer(0.3, os.close, (fd,)).start()
    began = time.monotonic()
    assert call(db, {"vmnet": NET}, "wn2")[0]["leases"][0]["ip"] == "10.20.0.3"  # main thread: flock + alarm
    assert time.monotonic() - began >= 0.25
    fd = _hold_queue(db)
    outcome = {}

    def worker():  # not the main thread: polls
        try:
            outcome["report"] = call(db, {"vmnet": NET}, "wn3", timeout=5)[0]
        except FabricError as exc:  # pragma: no cover - reported below
            outcome["error"] = exc
    thread = threading.Thread(target=worker)
    thread.start()
    time.sleep(0.2)
    assert thread.is_alive()
    os.close(fd)
    thread.join(5)
    assert outcome["report"]["leases"][0]["ip"] == "10.20.0.4"
    fd = _hold_queue(db)
    try:
        thread = threading.Thread(target=lambda: outcome.update(late=pytest.raises(FabricError, call, db,
                                                                                   {"vmnet": NET}, "wn4", timeout=0.2)))
        thread.start()
        thread.join(5)
    finally:
        os.close(fd)
    assert "stayed locked" in str(outcome["late"].value)


def test_the_writers_queue_lock_is_0600(db):
    """At 0644 any user could open the lock file and flock it, and hang every IPAM run."""
    call(db, {"vmnet": NET}, "wn1")
    assert stat.S_IMODE(os.stat(db + ".lock").st_mode) == 0o600
    os.chmod(db + ".lock", 0o644)  # made by an earlier release
    call(db, {"vmnet": NET}, "wn2")
    assert stat.S_IMODE(os.stat(db + ".lock").st_mode) == 0o600


def test_missing_queue_file_falls_back_to_sqlite_locking(db):
    call(db, {"vmnet": NET}, "wn1")
    os.unlink(db + ".lock")
    assert call(db, {"vmnet": NET}, "wn2")[0]["leases"][0]["ip"] == "10.20.0.3"


def _garbage(path):
    with open(path, "wb") as handle:
        handle.write(os.urandom(8192))


def _truncated(path):
    call(path, {"vmnet": NET}, leases=owners("wn", 50))
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[:60])


def _damaged_pages(path):
    call(path, {"vmnet": {"cidr": "10.20.0.0/22"}}, leases=owners("wn", 300))
    size = os.path.getsize(path)
    assert size >= 4 * 4096
    with open(path, "r+b") as handle:  # keep the header page, scribble over the b-tree pages
        handle.seek(4096)
        handle.write(b"\xff" * (size - 4096))


def _foreign(path):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('keep me')")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("damage,fragment", [
    (_garbage, "not an SQLite 3 file"),
    (_truncated, "not an SQLite 3 file"),
    (_damaged_pages, "not a usable IPAM database"),
    (_foreign, "SQLite database of something else (tables: customers)"),
])
@pytest.mark.parametrize("state,check", [("present", False), ("absent", False), ("present", True)])
def test_corrupt_database_is_reported_and_left_untouched(db, damage, fragment, state, check):
    damage(db)
    digest, size, listing = sha(db), os.path.getsize(db), sorted(os.listdir(os.path.dirname(db)))
    assert set(listing) <= {"ipam.sqlite", "ipam.sqlite.lock"}
    with raises("db", db, fragment, "left exactly as it is", "Restore it from a backup"):
        call(db, {"vmnet": NET}, "wn-new", state=state, check=check)
    assert sha(db) == digest and os.path.getsize(db) == size
    assert sorted(os.listdir(os.path.dirname(db))) == listing


def test_newer_schema_is_refused(db):
    call(db, {"vmnet": NET}, "wn1")
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    with raises("db", "newer skygrid.fabric"):
        call(db, {"vmnet": NET}, "wn2")


def test_empty_file_becomes_a_database(db):
    open(db, "w").close()
    report, _rec = call(db, {"vmnet": NET}, "wn1")
    assert report["leases"][0]["ip"] == "10.20.0.2" and len(rows(db)) == 1


@pytest.mark.parametrize("lose", ["unlink", "truncate"])
@pytest.mark.parametrize("check", [False, True])
def test_a_lost_database_is_never_replaced_by_an_empty_one(db, lose, check):
    """A database deleted or truncated to nothing (a bad restore, a full disk, a slip): its lock file is still
    there, and an empty database in its place would hand wn1's address to wn-new."""
    call(db, {"vmnet": NET}, "wn1")
    if lose == "unlink":
        os.unlink(db)
    else:
        os.truncate(db, 0)
    listing = sorted(os.listdir(os.path.dirname(db)))
    with raises("db", db, "missing" if lose == "unlink" else "empty", db + ".lock", "Restore the database from a backup",
                "sqlite3 %s '.backup" % db, "Nothing was changed"):
        call(db, {"vmnet": NET}, "wn-new", check=check)
    assert sorted(os.listdir(os.path.dirname(db))) == listing
    os.unlink(db + ".lock")  # the operator's deliberate fresh start
    assert call(db, {"vmnet": NET}, "wn-new")[0]["leases"][0]["ip"] == "10.20.0.2"
    assert os.path.exists(db + ".lock")


def test_a_left_over_wal_also_marks_a_lost_database(db):
    call(db, {"vmnet": NET}, "wn1")
    os.unlink(db + ".lock")
    os.unlink(db)
    with open(db + "-wal", "wb") as handle:
        handle.write(b"\0" * 32)
    with raises("db", db + "-wal", "missing"):
        call(db, {"vmnet": NET}, "wn2")


def test_the_lock_file_marks_the_database_only_once_it_is_complete(db, monkeypatch):
    """A first run killed while it creates the database leaves no lock file, so the next one may start afresh."""
    from ansible_collections.skygrid.fabric.plugins.module_utils.ipam import store

    def killed(self):
        raise KeyboardInterrupt("killed")
    real = store.LeaseStore.create
    monkeypatch.setattr(store.WriterQueue, "create", killed)
    with pytest.raises(KeyboardInterrupt):
        call(db, {"vmnet": NET}, "wn1")
    monkeypatch.undo()
    assert store.LeaseStore.create is real and not os.path.exists(db + ".lock")
    assert call(db, {"vmnet": NET}, "wn1")[0]["leases"][0]["ip"] == "10.20.0.2"


def test_a_database_without_its_lock_file_gets_it_back(db):
    call(db, {"vmnet": NET}, "wn1")
    os.unlink(db + ".lock")
    call(db, {"vmnet": NET}, "wn1", check=True)
    assert os.path.exists(db + ".lock")


def test_a_directory_in_place_of_the_database_is_reported(db):
    os.mkdir(db)
    with raises("db", db, "is a directory", "left exactly as it is", "Restore it from a backup"):
        call(db, {"vmnet": NET}, "wn1")
    assert os.listdir(db) == []


def test_busy_database_names_the_lock_files_and_the_fix(db):
    call(db, {"vmnet": NET}, "wn1")
    fd = _hold_queue(db)  # held by this process: /proc/locks names no other holder
    try:
        with raises("db", db + ".lock", "Nothing was changed", "fuser -v", "raise 'timeout'",
                    "no holder found in /proc/locks"):
            call(db, {"vmnet": NET}, "wn2", timeout=0.2)
    finally:
        os.close(fd)
    assert [row[1] for row in rows(db)] == ["wn1"]


def test_database_directory_is_created(tmp_path):
    path = str(tmp_path / "var" / "lib" / "skygrid" / "ipam.sqlite")
    call(path, {"vmnet": NET}, "wn1")
    assert os.path.isfile(path)


# ---------------------------------------------------------------------------------------- exports


def _export_setup(db):
    pools = {"vmnet": NET, "v6": {"cidr": "fd00:20::/64", "gateway": "fd00:20::1"}}
    call(db, pools, leases=owners("wn", 3) + [{"owner": "wn0", "pool": "v6"}])
    return pools


def test_dnsmasq_export(db, tmp_path):
    pools = _export_setup(db)
    path = str(tmp_path / "hosts.conf")
    report, reconciler = call(db, pools, export={"format": "dnsmasq", "path": path, "pools": ["vmnet", "v6"]},
                              pool=None)

    def mac(pool, owner):
        return derive_mac("52:54:00", pool, owner)
    with open(path) as handle:
        lines = handle.read().splitlines()
    assert lines[0].startswith("# Generated by skygrid.fabric.ip_lease from pool(s) vmnet, v6")
    assert lines[1:] == ["dhcp-host=%s,10.20.0.2,wn0" % mac("vmnet", "wn0"),
                         "dhcp-host=%s,10.20.0.3,wn1" % mac("vmnet", "wn1"),
                         "dhcp-host=%s,10.20.0.4,wn2" % mac("vmnet", "wn2"),
                         "dhcp-host=%s,[fd00:20::2],wn0" % mac("v6", "wn0")]
    assert report["export"] == {"format": "dnsmasq", "path": path, "pools": ["vmnet", "v6"], "count": 4,
                                "changed": True}
    assert reconciler.actions == ["write dnsmasq file %s (4 entries)" % path]
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    assert sorted(os.listdir(str(tmp_path))) == ["hosts.conf", "ipam.sqlite", "ipam.sqlite.lock"]  # no temp file


def test_hosts_and_zone_exports(db, tmp_path):
    pools = _export_setup(db)
    hosts, zone = str(tmp_path / "hosts"), str(tmp_path / "zone")
    call(db, pools, export={"format": "hosts", "path": hosts, "pools": ["vmnet"]}, pool=None)
    call(db, pools, export={"format": "zone", "path": zone, "pools": ["vmnet", "v6"]}, pool=None)
    with open(hosts) as handle:
        assert handle.read().splitlines()[1:] == ["10.20.0.2\twn0.vm.example.org wn0", "10.20.0.3\twn1.vm.example.org wn1",
                                                  "10.20.0.4\twn2.vm.example.org wn2"]
    with open(zone) as handle:
        assert handle.read().splitlines()[1:] == ["wn0.vm.example.org.\tIN\tA\t10.20.0.2",
                                                  "wn1.vm.example.org.\tIN\tA\t10.20.0.3",
                                                  "wn2.vm.example.org.\tIN\tA\t10.20.0.4",
                                                  "wn0\tIN\tAAAA\tfd00:20::2"]


def test_export_is_idempotent_keeps_mode_and_follows_releases(db, tmp_path):
    pools = _export_setup(db)
    path = str(tmp_path / "hosts")
    spec = {"format": "hosts", "path": path}
    call(db, pools, export=spec)
    os.chmod(path, 0o640)
    report, reconciler = call(db, pools, export=spec)
    assert not report["export"]["changed"] and not reconciler.changed
    report, reconciler = call(db, pools, "wn1", state="absent", export=spec)
    assert report["export"]["changed"] and report["export"]["count"] == 2
    with open(path) as handle:
        assert "wn1" not in handle.read()
    assert oct(os.stat(path).st_mode & 0o777) == "0o640"
    assert "-wn1.vm.example.org wn1" not in reconciler.diff()["after"]["file %s" % path]


def test_export_in_check_mode_writes_nothing(db, tmp_path):
    pools = _export_setup(db)
    path = str(tmp_path / "hosts")
    report, reconciler = call(db, pools, "wn7", export={"format": "hosts", "path": path}, check=True)
    assert report["export"]["changed"] and report["export"]["count"] == 4  # with the lease it would add
    assert not os.path.exists(path)
    assert "wn7.vm.example.org" in reconciler.diff()["after"]["file %s" % path]


def test_libvirt_reservations(db):
    pools = _export_setup(db)
    report, reconciler = call(db, pools, export={"format": "libvirt"})
    assert report["reservations"] == [{"mac": derive_mac("52:54:00", "vmnet", "wn%d" % i),
                                       "ip": "10.20.0.%d" % (i + 2), "name": "wn%d" % i} for i in range(3)]
    assert not reconciler.changed


def test_export_leaves_out_leases_outside_the_subnet(db):
    _export_setup(db)
    call(db, {"vmnet": {"cidr": "10.21.0.0/24"}}, "moved")
    report, _rec = call(db, {}, export={"format": "libvirt"})
    assert [entry["name"] for entry in report["reservations"]] == ["moved"]


@pytest.mark.parametrize("export,field,fragment", [
    ({"format": "dnsmasq"}, "export.path", "give its path"),
    ({"format": "hosts", "path": "/nonexistent-dir/hosts"}, "export.path", "does not exist"),
    ({"format": "libvirt", "path": "/tmp/x"}, "export.path", "leave out 'path'"),
    ({"format": "bind"}, "export.format", "one of dnsmasq, hosts, zone, libvirt"),
    ({"format": "libvirt", "pools": ["nosuch"]}, "export.pools", "pool 'nosuch' is unknown"),
])
def test_bad_exports(db, export, field, fragment):
    _export_setup(db)
    with raises(field, fragment):
        call(db, {}, export=export)


def test_write_atomic_replaces_whole_file(tmp_path):
    path = str(tmp_path / "f")
    write_atomic(path, "old\n")
    write_atomic(path, "new\n")
    with open(path) as handle:
        assert handle.read() == "new\n"
    assert os.listdir(str(tmp_path)) == ["f"]


def test_a_database_created_between_two_reads_is_never_taken_for_another(tmp_path):
    """Twenty runs racing to create the database (tests/integration/test_ip_lease.py): one reads the id while
    the database is still empty, another commits the tables and the id, then the first reads the tables. Read
    in one transaction, the first sees an empty database and waits its turn; it never calls it 'something
    else' (found once in 500 leases by 20 processes)."""
    from ansible_collections.skygrid.fabric.plugins.module_utils.ipam import store

    path = str(tmp_path / "ipam.sqlite")
    empty = sqlite3.connect(path, isolation_level=None)
    assert empty.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"  # readers and a writer at once

    class CreatedAfterTheIdIsRead:
        """A connection where another run creates the database right after the id was read."""

        def __init__(self, conn):
            self.conn = conn

        @property
        def in_transaction(self):
            return self.conn.in_transaction

        def execute(self, sql, *args):
            cursor = self.conn.execute(sql, *args)
            if sql == "PRAGMA application_id":
                result = cursor.fetchone()
                store.LeaseStore(path).create().close()  # the other run, committing while we read
                return iter_rows([result])
            return cursor

    class iter_rows(list):
        def fetchone(self):
            return self[0]

    reader = store.LeaseStore(path)
    conn = CreatedAfterTheIdIsRead(sqlite3.connect(path, isolation_level=None))
    assert reader._check_ours(conn) is False  # empty, as it was when the read began
    assert reader._check_ours(conn) is True  # created, seen whole by the next read
