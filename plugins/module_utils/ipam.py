# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""IP address management: named address pools, leases of IP + MAC + hostname per owner (a VM),
kept in one SQLite database on the IPAM host, and exports of the leases for dnsmasq, /etc/hosts,
DNS zones and libvirt networks.

Plain Python (no Ansible import): the ``ip_lease`` module is a thin wrapper around :func:`run`.

Safety under concurrent runs rests on SQLite itself: the database is in WAL mode, every call is
one ``BEGIN IMMEDIATE`` transaction (one writer at a time, waiting up to a busy timeout), and the
schema has UNIQUE(pool, ip), UNIQUE(pool, mac) and UNIQUE(pool, owner), so even a bug here could
not store a duplicate. Within a transaction the used addresses of a pool are read once; the lowest
free address is then found with a cursor that only moves forward (backwards on a release), so a
call that allocates N leases in a pool of L leases costs O(L + N), not O(N * L).

Check mode: each write is described to the caller's reconciler (``act(description, func, ...)``),
which runs it only outside check mode. The plan is made in memory first, so check mode reports
exactly the addresses a real run would hand out, and a failing call changes nothing.
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
import json
import os
import re
import socket
import sqlite3
import tempfile
import time

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

DEFAULT_DB = "/var/lib/skygrid/ipam.sqlite"
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAC_PREFIX = "52:54:00"
# Without a ``range``, an IPv6 pool hands out <network>::1 to <network>::ffff: a bounded range,
# so that size, usage and "full" mean something (a /64 has 2**64 addresses).
IPV6_DEFAULT_RANGE_SIZE = 0xFFFF

APPLICATION_ID = 0x53474950  # "SGIP": marks a skygrid IPAM database
SCHEMA_VERSION = 1
SQLITE_MAGIC = b"SQLite format 3\x00"

STATES = ("present", "absent")
EXPORT_FORMATS = ("dnsmasq", "hosts", "zone", "libvirt")
POOL_KEYS = ("cidr", "range", "gateway", "reserved", "dns_domain", "mac_prefix")

POOL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# RFC 1123 host name label: letters, digits and hyphens, 1-63 long, no hyphen at either end.
LABEL_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
MAC_OCTET_RE = re.compile(r"^[0-9A-Fa-f]{2}$")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS pools (
        name TEXT PRIMARY KEY,
        definition TEXT NOT NULL,
        updated REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS leases (
        pool TEXT NOT NULL,
        owner TEXT NOT NULL,
        ip TEXT NOT NULL,
        mac TEXT NOT NULL,
        created REAL NOT NULL,
        UNIQUE (pool, ip),
        UNIQUE (pool, mac),
        UNIQUE (pool, owner)
    )""",
    "CREATE INDEX IF NOT EXISTS leases_mac ON leases (mac)",
)


# --------------------------------------------------------------------------------------------------
# Validation of names and pool definitions


def check_owner(owner, field="owner"):
    """An owner is a VM name that becomes its host name: one RFC 1123 label. Returns it in lower
    case (host names compare case-insensitively, so ``WN1`` and ``wn1`` are the same owner)."""
    if not isinstance(owner, str) or not owner:
        raise FabricError("an owner (the VM name) is required", field=field)
    if not LABEL_RE.match(owner):
        raise FabricError("'%s' is not a valid host name: use 1-63 letters, digits and hyphens, not starting "
                          "or ending with a hyphen (RFC 1123), for example 'wn042-atlas-1'" % owner, field=field)
    return owner.lower()


def check_pool_name(name, field="pool"):
    if not isinstance(name, str) or not POOL_NAME_RE.match(name):
        raise FabricError("'%s' is not a valid pool name: use 1-63 letters, digits, '_', '.' or '-', starting "
                          "with a letter or digit" % (name,), field=field)
    return name


def check_domain(domain, field):
    if domain is None or domain == "":
        return None
    if not isinstance(domain, str):
        raise FabricError("must be a DNS domain such as 'vm.example.org'", field=field)
    domain = domain.rstrip(".").lower()
    labels = domain.split(".")
    if len(domain) > 240 or not all(LABEL_RE.match(label) for label in labels):
        raise FabricError("'%s' is not a valid DNS domain: dot-separated labels of 1-63 letters, digits and "
                          "hyphens, for example 'vm.example.org'" % domain, field=field)
    return domain


def check_mac_prefix(prefix, field):
    """1 to 5 octets, locally administered (bit 0x02 of the first octet set) and unicast (bit 0x01 clear)."""
    if prefix is None:
        prefix = DEFAULT_MAC_PREFIX
    if not isinstance(prefix, str):
        raise FabricError("must be a string of 1-5 hex octets such as '52:54:00'", field=field)
    octets = prefix.replace("-", ":").split(":")
    if not 1 <= len(octets) <= 5 or not all(MAC_OCTET_RE.match(o) for o in octets):
        raise FabricError("'%s' is not a MAC prefix: give 1-5 hex octets separated by ':', for example "
                          "'52:54:00'" % prefix, field=field)
    first = int(octets[0], 16)
    if first & 0x01:
        raise FabricError("'%s' is a multicast prefix (bit 0x01 of the first octet is set); use a unicast "
                          "prefix such as '52:54:00'" % prefix, field=field)
    if not first & 0x02:
        raise FabricError("'%s' is not locally administered (bit 0x02 of the first octet is clear), so it "
                          "could clash with real hardware; use a prefix such as '52:54:00' or '02:...'"
                          % prefix, field=field)
    return ":".join(o.lower() for o in octets)


class Pool:
    """A validated pool definition: the addresses it may hand out are ``first``..``last`` (ints),
    less the gateway and the reserved addresses."""

    def __init__(self, name, definition, field=None):
        field = field or "pools.%s" % name
        self.name = check_pool_name(name, field="pools")
        if not isinstance(definition, dict):
            raise FabricError("a pool definition is a dict with at least 'cidr'", field=field)
        unknown = sorted(set(definition) - set(POOL_KEYS))
        if unknown:
            raise FabricError("unknown key(s) %s; a pool takes %s" % (", ".join(unknown), ", ".join(POOL_KEYS)),
                              field=field)
        self.network = self._network(definition.get("cidr"), field + ".cidr")
        self.version = self.network.version
        self._address_class = ipaddress.IPv4Address if self.version == 4 else ipaddress.IPv6Address
        self.family = socket.AF_INET if self.version == 4 else socket.AF_INET6
        net_first = int(self.network.network_address)
        net_last = int(self.network.broadcast_address)
        self.net_first, self.net_last = net_first, net_last
        # Addresses no host may have: IPv4 network and broadcast (except /31, /32), IPv6 subnet-router anycast.
        self._special = set()
        if self.version == 4 and self.network.prefixlen < 31:
            self._special = {net_first, net_last}
        elif self.version == 6 and self.network.prefixlen < 127:
            self._special = {net_first}
        self.first, self.last = self._range(definition.get("range"), field + ".range")
        self.gateway = None
        if definition.get("gateway") not in (None, ""):
            self.gateway = self._address(definition["gateway"], field + ".gateway", what="gateway")
        self.reserved = self._reserved(definition.get("reserved"), field + ".reserved")
        self.dns_domain = check_domain(definition.get("dns_domain"), field + ".dns_domain")
        self.mac_prefix = check_mac_prefix(definition.get("mac_prefix"), field + ".mac_prefix")
        # Addresses inside first..last that are never handed out, as merged sorted intervals.
        excluded = list(self.reserved)
        if self.gateway is not None:
            excluded.append((self.gateway, self.gateway))
        self._excluded = _merge(excluded, self.first, self.last)
        self._excluded_starts = [start for start, _ in self._excluded]
        self.size = (self.last - self.first + 1) - sum(end - start + 1 for start, end in self._excluded)
        if self.size <= 0:
            raise FabricError("pool '%s' has no address to hand out: its range %s is all gateway and reserved "
                              "addresses; widen the range or reserve less" % (name, self.range_text()),
                              field=field)

    # -- parsing helpers
    def _network(self, cidr, field):
        if not isinstance(cidr, str) or not cidr:
            raise FabricError("a pool needs 'cidr', the subnet in CIDR notation, for example '10.20.0.0/24' or "
                              "'fd00:20::/64'", field=field)
        if "/" not in cidr:
            raise FabricError("'%s' has no prefix length; write it as a subnet such as '10.20.0.0/24'" % cidr,
                              field=field)
        try:
            return ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            try:
                suggestion = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise FabricError("'%s' is not a valid subnet (%s); write it in CIDR notation such as "
                                  "'10.20.0.0/24'" % (cidr, exc), field=field)
            raise FabricError("'%s' has host bits set; the subnet is '%s'" % (cidr, suggestion), field=field)

    def _address(self, value, field, what="address"):
        try:
            address = ipaddress.ip_address(str(value).strip())
        except ValueError:
            raise FabricError("'%s' is not an IP address" % (value,), field=field)
        if address.version != self.version or address not in self.network:
            raise FabricError("%s %s is not in the pool's subnet %s" % (what, address, self.network), field=field)
        number = int(address)
        if number in self._special:
            raise FabricError("%s %s is the %s address of %s and cannot be a host's"
                              % (what, address, self._special_name(number), self.network), field=field)
        return number

    def _special_name(self, number):
        if number == self.net_first:
            return "network" if self.version == 4 else "subnet-router anycast"
        return "broadcast"

    def _range(self, value, field):
        if value in (None, {}):
            first = min(self.net_first + 1, self.net_last) if self._special else self.net_first
            last = self.net_last - 1 if self.version == 4 and self._special else self.net_last
            if self.version == 6:
                last = min(last, self.net_first + IPV6_DEFAULT_RANGE_SIZE)
            return first, last
        if not isinstance(value, dict) or set(value) - {"start", "end"} or not value.get("start") or not value.get("end"):
            raise FabricError("a range is a dict with 'start' and 'end' addresses inside the pool's subnet, for "
                              "example {start: 10.20.0.10, end: 10.20.0.250}", field=field)
        start = self._address(value["start"], field + ".start", what="range start")
        end = self._address(value["end"], field + ".end", what="range end")
        if start > end:
            raise FabricError("start %s is after end %s; swap them" % (self.text(start), self.text(end)), field=field)
        return start, end

    def _reserved(self, value, field):
        if value in (None, ""):
            return []
        if not isinstance(value, list):
            raise FabricError("a list of addresses, 'first-last' ranges or subnets", field=field)
        intervals = []
        for index, item in enumerate(value):
            item_field = "%s[%d]" % (field, index)
            text = str(item).strip()
            if "-" in text:
                low, high = (part.strip() for part in text.split("-", 1))
                start = self._address(low, item_field, what="reserved address")
                end = self._address(high, item_field, what="reserved address")
                if start > end:
                    raise FabricError("range '%s' ends before it starts" % text, field=item_field)
            elif "/" in text:
                try:
                    subnet = ipaddress.ip_network(text, strict=False)
                except ValueError:
                    raise FabricError("'%s' is not an address, range or subnet" % text, field=item_field)
                if subnet.version != self.version or not subnet.subnet_of(self.network):
                    raise FabricError("subnet %s is not inside the pool's subnet %s" % (subnet, self.network),
                                      field=item_field)
                start, end = int(subnet.network_address), int(subnet.broadcast_address)
            else:
                start = end = self._address(text, item_field, what="reserved address")
            intervals.append((start, end))
        return intervals

    # -- queries
    def text(self, number):
        return str(self._address_class(number))

    def number(self, text):
        """The integer of a stored address string, or None when it is not of this pool's IP version."""
        try:
            return int.from_bytes(socket.inet_pton(self.family, text), "big")
        except (OSError, ValueError):
            return None

    def range_text(self):
        return "%s-%s" % (self.text(self.first), self.text(self.last))

    def excluded_end(self, number):
        """If ``number`` is the gateway or reserved, the last address of that excluded interval."""
        index = bisect.bisect_right(self._excluded_starts, number) - 1
        if index >= 0 and self._excluded[index][1] >= number:
            return self._excluded[index][1]
        return None

    def problems(self, number, mac):
        """Why a lease no longer fits this definition (empty when it does)."""
        reasons = []
        if number is None or not self.net_first <= number <= self.net_last:
            reasons.append("outside the subnet %s" % self.network)
        elif number in self._special:
            reasons.append("the %s address of %s" % (self._special_name(number), self.network))
        elif not self.first <= number <= self.last:
            reasons.append("outside the range %s" % self.range_text())
        elif number == self.gateway:
            reasons.append("the gateway")
        elif self.excluded_end(number) is not None:
            reasons.append("a reserved address")
        if not mac.startswith(self.mac_prefix + ":"):
            reasons.append("MAC %s is not under the prefix %s" % (mac, self.mac_prefix))
        return reasons

    def fqdn(self, owner):
        return "%s.%s" % (owner, self.dns_domain) if self.dns_domain else owner

    def definition(self):
        """The canonical definition (what is stored and compared)."""
        result = {"cidr": str(self.network), "range": {"start": self.text(self.first), "end": self.text(self.last)},
                  "mac_prefix": self.mac_prefix}
        if self.gateway is not None:
            result["gateway"] = self.text(self.gateway)
        if self.reserved:
            result["reserved"] = ["%s-%s" % (self.text(s), self.text(e)) if s != e else self.text(s)
                                  for s, e in self.reserved]
        if self.dns_domain:
            result["dns_domain"] = self.dns_domain
        return result


def _merge(intervals, low, high):
    """Clip intervals to low..high and merge overlapping or adjacent ones."""
    clipped = sorted((max(s, low), min(e, high)) for s, e in intervals if e >= low and s <= high)
    merged = []
    for start, end in clipped:
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def parse_pools(definitions):
    """Validate the ``pools`` option: {name: definition} -> {name: Pool}."""
    if definitions in (None, ""):
        return {}
    if not isinstance(definitions, dict):
        raise FabricError("a dict of pool name -> definition (cidr, range, gateway, reserved, dns_domain, "
                          "mac_prefix)", field="pools")
    return {name: Pool(name, definition) for name, definition in definitions.items()}


def derive_mac(prefix, pool, owner, attempt=0):
    """The MAC of (pool, owner): the prefix followed by bytes of a SHA-256 of the pair. ``attempt``
    > 0 gives the next candidate when the first is taken."""
    octets = prefix.split(":")
    digest = hashlib.sha256(("%s\x00%s\x00%d" % (pool, owner, attempt)).encode("utf-8")).digest()
    return ":".join(octets + ["%02x" % b for b in digest[:6 - len(octets)]])


# --------------------------------------------------------------------------------------------------
# Requests (one owner, or the ``leases`` list)


def build_requests(pool=None, owner=None, state="present", leases=None):
    """The per-owner requests of one call, validated, in order: a list of dicts with pool, owner,
    state and field (the option path to name in errors)."""
    state = state or "present"
    if state not in STATES:
        raise FabricError("must be one of %s" % ", ".join(STATES), field="state")
    raw = []
    if leases:
        if owner:
            raise FabricError("give either 'owner' or 'leases', not both", field="owner")
        for index, item in enumerate(leases):
            field = "leases[%d]" % index
            if not isinstance(item, dict):
                raise FabricError("each item is a dict with 'owner' (and optionally 'pool', 'state')", field=field)
            unknown = sorted(set(item) - {"owner", "pool", "state"})
            if unknown:
                raise FabricError("unknown key(s) %s; an item takes owner, pool and state" % ", ".join(unknown),
                                  field=field)
            raw.append((item.get("pool") or pool, item.get("owner"), item.get("state") or state, field))
    elif owner:
        raw.append((pool, owner, state, ""))
    requests, seen = [], {}
    for pool_name, owner_name, item_state, field in raw:
        prefix = field + "." if field else ""
        if not pool_name:
            raise FabricError("no pool: give 'pool' (for all items) or a 'pool' per item", field=prefix + "pool")
        check_pool_name(pool_name, field=prefix + "pool")
        name = check_owner(owner_name, field=prefix + "owner")
        if item_state not in STATES:
            raise FabricError("must be one of %s" % ", ".join(STATES), field=prefix + "state")
        key = (pool_name, name)
        if key in seen:
            raise FabricError("owner '%s' in pool '%s' is already listed at %s; list each owner once"
                              % (name, pool_name, seen[key] or "owner"), field=prefix + "owner")
        seen[key] = field
        requests.append({"pool": pool_name, "owner": name, "state": item_state, "field": prefix + "owner"})
    return requests


def parse_export(export, default_pools):
    if not export:
        return None
    if not isinstance(export, dict):
        raise FabricError("a dict with 'format' and, for files, 'path'", field="export")
    fmt = export.get("format")
    if fmt not in EXPORT_FORMATS:
        raise FabricError("format must be one of %s" % ", ".join(EXPORT_FORMATS), field="export.format")
    path = export.get("path")
    if fmt == "libvirt":
        if path:
            raise FabricError("the libvirt format returns the reservations as 'reservations' and writes no file; "
                              "leave out 'path'", field="export.path")
    else:
        if not path:
            raise FabricError("the %s format writes a file: give its path" % fmt, field="export.path")
        path = os.path.abspath(os.path.expanduser(path))
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            raise FabricError("directory %s does not exist; create it first" % directory, field="export.path")
        if os.path.isdir(path):
            raise FabricError("%s is a directory; give a file path" % path, field="export.path")
    pools = export.get("pools")
    if pools:
        if isinstance(pools, str):
            pools = [pools]
        for index, name in enumerate(pools):
            check_pool_name(name, field="export.pools[%d]" % index)
        pools = list(dict.fromkeys(pools))
    else:
        pools = list(default_pools)
    return {"format": fmt, "path": path, "pools": pools}


# --------------------------------------------------------------------------------------------------
# The store


def _is_busy(exc):
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


class LeaseStore:
    """The SQLite database file: opening (with the checks that keep a damaged file untouched),
    creation, and one connection per call."""

    def __init__(self, path, timeout=DEFAULT_TIMEOUT):
        self.path = os.path.abspath(os.path.expanduser(path))
        self.timeout = float(timeout)

    # -- errors
    def corrupt(self, detail):
        return FabricError("%s is not a usable IPAM database (%s). It was left exactly as it is. Restore it from a "
                           "backup, or move it away to start an empty database (every lease in it would be "
                           "forgotten)" % (self.path, detail), field="db", path=self.path)

    def sqlite_error(self, exc, doing):
        if _is_busy(exc):
            return FabricError("%s stayed locked by another run for more than %.0f s while %s; raise 'timeout' or "
                               "look for a stuck process holding it" % (self.path, self.timeout, doing), field="db")
        if isinstance(exc, sqlite3.OperationalError):
            return FabricError("cannot use %s while %s: %s; check that the file and its directory exist and are "
                               "writable by this user" % (self.path, doing, exc), field="db")
        return self.corrupt(str(exc))

    # -- opening
    def exists(self):
        """True when the file holds a database (a missing or empty file is a database still to create)."""
        try:
            return os.path.getsize(self.path) > 0
        except OSError:
            return False

    def _check_header(self):
        try:
            with open(self.path, "rb") as handle:
                header = handle.read(100)
        except OSError as exc:
            raise FabricError("cannot read %s: %s" % (self.path, exc.strerror), field="db")
        if header and (len(header) < 100 or not header.startswith(SQLITE_MAGIC)):
            raise self.corrupt("it is not an SQLite 3 file")

    def _connect(self):
        try:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise self.sqlite_error(exc, "opening it")
        return conn

    @staticmethod
    def _tables(conn):
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _check_ours(self, conn):
        """True for an initialised IPAM database, False for an empty one; raises for anything else."""
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = self._tables(conn)
        if app_id == 0 and not tables:
            return False
        if app_id != APPLICATION_ID or not {"pools", "leases"} <= tables:
            raise self.corrupt("it is an SQLite database of something else (tables: %s)"
                               % (", ".join(sorted(tables)) or "none"))
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise FabricError("%s was written by a newer skygrid.fabric (schema %d, this one knows %d); upgrade "
                              "the collection" % (self.path, version, SCHEMA_VERSION), field="db")
        return True

    def _quick_check(self, conn):
        rows = [row[0] for row in conn.execute("PRAGMA quick_check")]
        if rows != ["ok"]:
            raise self.corrupt("integrity check: %s" % "; ".join(str(r) for r in rows[:3]))

    def open_existing(self):
        """A connection to the existing database, checked read-only; None when there is none yet."""
        if not self.exists():
            return None
        self._check_header()
        conn = self._connect()
        try:
            if not self._check_ours(conn):
                conn.close()
                return None
            self._quick_check(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise self.sqlite_error(exc, "reading it")
        except FabricError:
            conn.close()
            raise
        return conn

    def create(self):
        """Create (or finish creating) the database in WAL mode; safe when runs race to do it."""
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            try:
                os.makedirs(directory, 0o755)
            except OSError as exc:
                if not os.path.isdir(directory):
                    raise FabricError("cannot create directory %s: %s" % (directory, exc.strerror), field="db")
        if self.exists():
            self._check_header()
        conn = self._connect()
        try:
            deadline = time.monotonic() + self.timeout
            while True:  # switching to WAL needs a moment alone with the file
                try:
                    if self._check_ours(conn):
                        self._quick_check(conn)
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    break
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
            if str(mode).lower() != "wal":
                raise FabricError("%s cannot be put in WAL mode (it stays in '%s' mode); put it on a local file "
                                  "system" % (self.path, mode), field="db")
            conn.execute("BEGIN IMMEDIATE")
            if not self._check_ours(conn):
                for statement in SCHEMA:
                    conn.execute(statement)
                conn.execute("PRAGMA application_id = %d" % APPLICATION_ID)
                conn.execute("PRAGMA user_version = %d" % SCHEMA_VERSION)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.close()
            raise self.sqlite_error(exc, "creating it")
        except FabricError:
            conn.close()
            raise
        return conn

    @staticmethod
    def memory():
        """An empty in-memory database: what check mode plans against when the file does not exist yet."""
        conn = sqlite3.connect(":memory:", isolation_level=None)
        for statement in SCHEMA:
            conn.execute(statement)
        return conn


def _configure(conn):
    # FULL: a lease handed out must survive a power cut, or it could be handed out twice.
    conn.execute("PRAGMA synchronous = FULL")


# --------------------------------------------------------------------------------------------------
# One call: a transaction with the in-memory state of the pools it touches


class _PoolState:
    """The leases of one pool as read at the start of the transaction, updated by the plan."""

    def __init__(self, name, pool, rows):
        self.name = name
        self.pool = pool
        self.by_owner = {}
        self.used = set()
        for owner, ip, mac in rows:
            number = pool.number(ip) if pool is not None else None
            self.by_owner[owner] = (number, ip, mac)
            if number is not None:
                self.used.add(number)
        self.cursor = pool.first if pool is not None else 0
        self.in_use_at_start = len(self.by_owner)
        self.allocated = 0

    def take(self):
        """The lowest free address; every address below ``cursor`` is known to be taken."""
        pool = self.pool
        number, last, used = self.cursor, pool.last, self.used
        while number <= last:
            if number in used:
                number += 1
                continue
            end = pool.excluded_end(number)
            if end is None:
                break
            number = end + 1
        else:
            self.cursor = number
            return None
        self.cursor = number + 1
        used.add(number)
        return number

    def release(self, owner):
        number, ip, mac = self.by_owner.pop(owner)
        if number is not None:
            self.used.discard(number)
            if self.pool is not None and self.pool.first <= number < self.cursor:
                self.cursor = number
        return ip, mac

    def in_use_allocatable(self):
        pool = self.pool
        return sum(1 for number, _, mac in self.by_owner.values()
                   if number is not None and pool.first <= number <= pool.last and pool.excluded_end(number) is None)


class _Transaction:
    def __init__(self, conn, pools, reconciler, store):
        self.conn = conn
        self.given = pools
        self.reconciler = reconciler
        self.store = store
        self.states = {}
        self.stored_definitions = {}
        self.used_macs = None
        self.dirty = False
        self.ops = []  # (description, func, args, diff key, before, after)

    # -- reads
    def stored_definition(self, name):
        if name not in self.stored_definitions:
            row = self.conn.execute("SELECT definition FROM pools WHERE name = ?", (name,)).fetchone()
            self.stored_definitions[name] = json.loads(row[0]) if row else None
        return self.stored_definitions[name]

    def pool(self, name):
        """The pool's definition: the one given in ``pools``, else the one stored with its leases."""
        if name in self.given:
            return self.given[name]
        stored = self.stored_definition(name)
        if stored is None:
            return None
        return Pool(name, stored, field="pools.%s (as stored in the database)" % name)

    def state(self, name):
        if name not in self.states:
            rows = self.conn.execute("SELECT owner, ip, mac FROM leases WHERE pool = ?", (name,)).fetchall()
            self.states[name] = _PoolState(name, self.pool(name), rows)
        return self.states[name]

    def macs(self):
        if self.used_macs is None:
            self.used_macs = {row[0] for row in self.conn.execute("SELECT mac FROM leases")}
        return self.used_macs

    # -- writes (run through the reconciler)
    def _write(self, sql, args):
        self.conn.execute(sql, args)
        self.dirty = True

    def _definition_op(self, name):
        """Storing the given definition of a pool: when it differs from the stored one, or when there is
        none stored yet and this call allocates in the pool. None when there is nothing to store."""
        if name not in self.given:
            return None
        wanted = self.given[name].definition()
        stored = self.stored_definition(name)
        if stored == wanted or (stored is None and not self.states[name].allocated):
            return None
        if stored is None:
            description = "record the definition of pool %s (%s)" % (name, wanted["cidr"])
        else:
            changes = ["%s %s -> %s" % (key, json.dumps(stored.get(key), sort_keys=True),
                                        json.dumps(wanted.get(key), sort_keys=True))
                       for key in sorted(set(stored) | set(wanted)) if stored.get(key) != wanted.get(key)]
            description = "update the definition of pool %s: %s" % (name, ", ".join(changes))
        return (description, self._write,
                ("INSERT OR REPLACE INTO pools (name, definition, updated) VALUES (?, ?, ?)",
                 (name, json.dumps(wanted, sort_keys=True), time.time())),
                "pool %s" % name, stored, wanted, True)

    def new_mac(self, pool, owner):
        used = self.macs()
        free_octets = 6 - len(pool.mac_prefix.split(":"))
        space = 1 << (8 * free_octets)
        for attempt in range(64):
            mac = derive_mac(pool.mac_prefix, pool.name, owner, attempt)
            if mac not in used:
                return mac
        # A crowded small prefix: walk on from the first candidate (bounded by the size of the space).
        start = int(derive_mac(pool.mac_prefix, pool.name, owner).replace(":", "")[-2 * free_octets:], 16)
        for step in range(space):
            suffix = "%0*x" % (2 * free_octets, (start + step) % space)
            mac = pool.mac_prefix + ":" + ":".join(suffix[i:i + 2] for i in range(0, len(suffix), 2))
            if mac not in used:
                return mac
        raise FabricError("every MAC under the prefix %s is taken; give pool '%s' a shorter mac_prefix"
                          % (pool.mac_prefix, pool.name), field="pools.%s.mac_prefix" % pool.name)

    # -- planning
    def lease_view(self, name, owner, state="present"):
        st = self.state(name)
        entry = st.by_owner.get(owner)
        pool = st.pool
        view = {"pool": name, "owner": owner, "state": state, "ip": None, "mac": None,
                "fqdn": pool.fqdn(owner) if pool is not None else owner,
                "prefix": pool.network.prefixlen if pool is not None else None,
                "gateway": pool.text(pool.gateway) if pool is not None and pool.gateway is not None else None}
        if entry is not None:
            view["ip"], view["mac"] = entry[1], entry[2]
        return view

    def plan_present(self, request, pending):
        name, owner = request["pool"], request["owner"]
        st = self.state(name)
        pool = st.pool
        if pool is None:
            raise FabricError("pool '%s' is not defined: give its definition in pools.%s (at least cidr)"
                              % (name, name), field="pools.%s" % name)
        entry = st.by_owner.get(owner)
        if entry is not None:
            reasons = pool.problems(entry[0], entry[2])
            if reasons:
                raise FabricError("the lease of '%s' in pool '%s' (%s, %s) no longer fits the pool's definition: %s. "
                                  "Release it (state: absent) and allocate again, or restore the definition"
                                  % (owner, name, entry[1], entry[2], "; ".join(reasons)), field=request["field"],
                                  stale=[dict(pool=name, owner=owner, ip=entry[1], mac=entry[2], reasons=reasons)])
            result = self.lease_view(name, owner)
            result["changed"] = False
            return result
        number = st.take()
        if number is None:
            in_use = st.in_use_at_start
            raise FabricError(
                "pool '%s' is full: %d addresses to hand out (%s, less gateway and reserved), %d in use, and this "
                "call asked for %d more; nothing was changed. Release leases (state: absent) or widen "
                "pools.%s.range / cidr" % (name, pool.size, pool.range_text(), in_use, pending[name], name),
                field="pools.%s" % name, pool=name, size=pool.size, in_use=in_use)
        ip = pool.text(number)
        mac = self.new_mac(pool, owner)
        self.macs().add(mac)
        st.by_owner[owner] = (number, ip, mac)
        st.allocated += 1
        result = self.lease_view(name, owner)
        self.ops.append(("allocate %s %s to %s in pool %s" % (ip, mac, owner, name), self._write,
                         ("INSERT INTO leases (pool, owner, ip, mac, created) VALUES (?, ?, ?, ?, ?)",
                          (name, owner, ip, mac, time.time())),
                         "%s/%s" % (name, owner), None, _diff_view(result), True))
        result["changed"] = True
        return result

    def plan_absent(self, request):
        name, owner = request["pool"], request["owner"]
        st = self.state(name)
        entry = st.by_owner.get(owner)
        if entry is None:
            result = self.lease_view(name, owner, state="absent")
            result["changed"] = False
            return result
        before = _diff_view(self.lease_view(name, owner))
        ip, mac = st.release(owner)
        if self.used_macs is not None:
            self.used_macs.discard(mac)
        self.ops.append(("release %s %s of %s in pool %s" % (ip, mac, owner, name), self._write,
                         ("DELETE FROM leases WHERE pool = ? AND owner = ?", (name, owner)),
                         "%s/%s" % (name, owner), before, None, True))
        result = self.lease_view(name, owner, state="absent")
        result["ip"], result["mac"], result["changed"] = ip, mac, True
        return result

    def apply(self):
        """Hand every planned write to the reconciler (which skips them in check mode)."""
        definitions = [op for op in (self._definition_op(name) for name in self.states) if op is not None]
        for description, func, args, key, before, after, diff in definitions + self.ops:
            self.reconciler.act(description, func, *args)
            if diff:
                self.reconciler.record_diff(key, before, after)

    # -- reports
    def stale(self, name):
        st = self.state(name)
        if st.pool is None:
            return []
        found = []
        for owner in sorted(st.by_owner):
            number, ip, mac = st.by_owner[owner]
            reasons = st.pool.problems(number, mac)
            if reasons:
                found.append({"pool": name, "owner": owner, "ip": ip, "mac": mac, "reasons": reasons})
        return found

    def usage(self, name):
        st = self.state(name)
        if st.pool is None:
            return {"size": None, "in_use": len(st.by_owner), "free": None}
        return {"size": st.pool.size, "in_use": len(st.by_owner),
                "free": st.pool.size - st.in_use_allocatable()}

    def entries(self, names):
        """Export entries (pool, name, fqdn, ip, mac), sorted by pool then address; leases whose address
        is outside their pool's subnet (reported as stale) are left out."""
        result = []
        for name in names:
            st = self.state(name)
            pool = st.pool
            rows = []
            for owner, (number, ip, mac) in st.by_owner.items():
                if pool is not None and (number is None or not pool.net_first <= number <= pool.net_last):
                    continue
                rows.append((number if number is not None else -1, owner, ip, mac))
            for _, owner, ip, mac in sorted(rows):
                result.append({"pool": name, "name": owner, "fqdn": pool.fqdn(owner) if pool else owner,
                               "ip": ip, "mac": mac})
        return result


def _diff_view(lease):
    return {key: lease[key] for key in ("ip", "mac", "fqdn")}


# --------------------------------------------------------------------------------------------------
# Exports


def render(fmt, entries, pools):
    """The text of an export file (the same input always gives the same bytes)."""
    header = "# Generated by skygrid.fabric.ip_lease from pool(s) %s; changes here are overwritten.\n" % ", ".join(pools)
    lines = []
    for entry in entries:
        ip = entry["ip"]
        if fmt == "dnsmasq":
            lines.append("dhcp-host=%s,%s,%s" % (entry["mac"], "[%s]" % ip if ":" in ip else ip, entry["name"]))
        elif fmt == "hosts":
            names = entry["fqdn"] if entry["fqdn"] == entry["name"] else "%s %s" % (entry["fqdn"], entry["name"])
            lines.append("%s\t%s" % (ip, names))
        elif fmt == "zone":
            owner = entry["fqdn"] + "." if entry["fqdn"] != entry["name"] else entry["name"]
            lines.append("%s\tIN\t%s\t%s" % (owner, "AAAA" if ":" in ip else "A", ip))
    return header + "".join(line + "\n" for line in lines)


def read_text(path):
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise FabricError("cannot read %s: %s" % (path, exc), field="export.path")


def write_atomic(path, content, mode=0o644):
    """Write ``content`` to ``path`` so readers see the old file or the new one, never a mix: a temporary
    file in the same directory, fsync, rename over, fsync the directory. Keeps an existing file's mode."""
    directory = os.path.dirname(path) or "."
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _export(txn, spec, reconciler):
    for name in spec["pools"]:
        if txn.state(name).pool is None and not txn.state(name).by_owner:
            raise FabricError("pool '%s' is unknown: no definition given or stored and no leases" % name,
                              field="export.pools")
    entries = txn.entries(spec["pools"])
    result = {"format": spec["format"], "path": spec["path"], "pools": spec["pools"], "count": len(entries),
              "changed": False}
    if spec["format"] == "libvirt":
        result["reservations"] = [{"mac": e["mac"], "ip": e["ip"], "name": e["name"]} for e in entries]
        return result
    content = render(spec["format"], entries, spec["pools"])
    before = read_text(spec["path"])
    if before != content:
        result["changed"] = True
        try:
            reconciler.act("write %s file %s (%d entries)" % (spec["format"], spec["path"], len(entries)),
                           write_atomic, spec["path"], content)
        except OSError as exc:
            raise FabricError("cannot write %s: %s" % (spec["path"], exc.strerror or exc), field="export.path")
        reconciler.record_diff("file %s" % spec["path"], before if before is not None else "", content)
    return result


# --------------------------------------------------------------------------------------------------
# Entry point


def run(db, pools, requests, reconciler, export=None, pool=None, timeout=DEFAULT_TIMEOUT):
    """Allocate / release the ``requests`` (from :func:`build_requests`) in one transaction, then
    optionally export.

    ``pools`` are the raw definitions ({name: dict}); ``export`` the raw export option, whose pools
    default to the pools of the requests, else ``pool``, else every pool in the database. Returns a
    dict: ``leases`` (one per request, in order), ``stale`` (leases of the touched pools that no
    longer fit their definition), ``usage`` per touched pool and, with export, ``export`` and (libvirt
    format) ``reservations``."""
    given = parse_pools(pools)
    touched = list(dict.fromkeys(request["pool"] for request in requests))
    spec = parse_export(export, touched or ([pool] if pool else []))
    store = LeaseStore(db, timeout)
    conn = store.open_existing()
    if conn is None:
        wanted = [request for request in requests if request["state"] == "present"]
        for request in wanted:  # nothing stored yet: every pool to allocate in must be given
            if request["pool"] not in given:
                raise FabricError("pool '%s' is not defined: give its definition in pools.%s (at least cidr)"
                                  % (request["pool"], request["pool"]), field="pools.%s" % request["pool"])
        if wanted:
            conn = reconciler.act("create the IPAM database %s" % store.path, store.create)
        if conn is None:  # nothing to write, or check mode: plan against an empty database
            conn = LeaseStore.memory()
    try:
        try:
            _configure(conn)
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise store.sqlite_error(exc, "starting a transaction")
        try:
            txn, report = _run_transaction(conn, given, requests, reconciler, spec, touched, store)
            conn.execute("COMMIT" if txn.dirty else "ROLLBACK")
        except sqlite3.IntegrityError as exc:
            _rollback(conn)
            raise FabricError("the database refused a duplicate (%s); nothing was changed. This is a bug: please "
                              "report it with the database" % exc, field="db")
        except sqlite3.Error as exc:
            _rollback(conn)
            raise store.sqlite_error(exc, "updating it")
        except BaseException:
            _rollback(conn)
            raise
    finally:
        conn.close()
    if spec is not None:  # files are written once the leases they list are committed
        report["export"] = _export(txn, spec, reconciler)
        if "reservations" in report["export"]:
            report["reservations"] = report["export"].pop("reservations")
    return report


def _rollback(conn):
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _run_transaction(conn, given, requests, reconciler, spec, touched, store):
    txn = _Transaction(conn, given, reconciler, store)
    pending = {}  # new leases asked for per pool, for the "pool is full" message
    for request in requests:
        if request["state"] == "present" and request["owner"] not in txn.state(request["pool"]).by_owner:
            pending[request["pool"]] = pending.get(request["pool"], 0) + 1
    results = [txn.plan_present(request, pending) if request["state"] == "present" else txn.plan_absent(request)
               for request in requests]
    if spec is not None:
        if not spec["pools"]:
            spec["pools"] = [row[0] for row in conn.execute(
                "SELECT DISTINCT pool FROM leases UNION SELECT name FROM pools ORDER BY 1")]
        for name in spec["pools"]:
            txn.state(name)
    txn.apply()
    report = {"leases": results, "stale": [lease for name in touched for lease in txn.stale(name)],
              "usage": {name: txn.usage(name) for name in touched}}
    return txn, report
