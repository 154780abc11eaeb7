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
not store a duplicate. Writers queue for that lock on a flock of ``<db>.lock`` (see WriterQueue):
fairer and cheaper than SQLite's sleep-and-retry, but never needed for correctness.

Inside the lock a call does only what it needs: the requested owners are looked up by index; the
lowest free address is found from a stored per-pool hint (every address below it is taken), reading
only the leases above the hint, with a cursor that moves forward (backwards on a release); a
candidate MAC is checked by index. So allocating N leases costs about O(N) however full the pool
is, never O(N * L). Reports over the whole pool (stale leases, usage) use index range counts after
the commit, outside the lock.

Check mode: each write is described to the caller's reconciler (``act(description, func, ...)``),
which runs it only outside check mode. The plan is made in memory first, so check mode reports
exactly the addresses a real run would hand out, and a failing call changes nothing.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import signal
import socket
import sqlite3
import tempfile
import threading
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
    # ipkey: the address as 32 hex digits, so that text order is address order (an index range scan
    # finds the leases above an address, IPv4 and IPv6 alike).
    """CREATE TABLE IF NOT EXISTS leases (
        pool TEXT NOT NULL,
        owner TEXT NOT NULL,
        ip TEXT NOT NULL,
        ipkey TEXT NOT NULL,
        mac TEXT NOT NULL,
        created REAL NOT NULL,
        UNIQUE (pool, ip),
        UNIQUE (pool, mac),
        UNIQUE (pool, owner)
    )""",
    "CREATE INDEX IF NOT EXISTS leases_key ON leases (pool, ipkey)",
    "CREATE INDEX IF NOT EXISTS leases_mac ON leases (mac)",
    # next: every address of the pool below it that may be handed out is leased (valid for the
    # definition whose fingerprint is stored with it), so the search for the lowest free address
    # starts there instead of reading every lease of the pool.
    """CREATE TABLE IF NOT EXISTS hints (
        pool TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        next TEXT NOT NULL
    )""",
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
        self._excluded_starts = [interval[0] for interval in self._excluded]
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

    def _address(self, value, field, what="address", special_ok=False):
        try:
            address = ipaddress.ip_address(str(value).strip())
        except ValueError:
            raise FabricError("'%s' is not an IP address" % (value,), field=field)
        if address.version != self.version or address not in self.network:
            raise FabricError("%s %s is not in the pool's subnet %s" % (what, address, self.network), field=field)
        number = int(address)
        if number in self._special and not special_ok:
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
                start = self._address(low, item_field, what="reserved address", special_ok=True)
                end = self._address(high, item_field, what="reserved address", special_ok=True)
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
                start = end = self._address(text, item_field, what="reserved address", special_ok=True)
            intervals.append((start, end))
        return intervals

    # -- queries
    def text(self, number):
        return str(self._address_class(number))

    def number(self, text):
        """The integer of an address string, or None when it is not of this pool's IP version."""
        try:
            return int.from_bytes(socket.inet_pton(self.family, text), "big")
        except (OSError, ValueError):
            return None

    def stored_number(self, ip, key):
        """The integer of a stored lease's address (from its key), or None when it is of the other IP version."""
        return int(key, 16) if (":" in ip) == (self.version == 6) else None

    def fingerprint(self):
        """Identifies what the lowest-free search depends on: the range and the excluded addresses."""
        return hashlib.sha256(json.dumps([self.version, self.first, self.last, self._excluded]).encode()).hexdigest()

    def range_text(self):
        return "%s-%s" % (self.text(self.first), self.text(self.last))

    def excluded_intervals(self):
        """The gateway and reserved addresses inside the range, as merged (first, last) intervals."""
        return list(self._excluded)

    def allocatable(self, number):
        """Whether the pool may hand out this address (in the range, not the gateway, not reserved)."""
        return number is not None and self.first <= number <= self.last and self.excluded_end(number) is None

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


def ipkey(number):
    return "%032x" % number


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
        """The FabricError for an sqlite3 error; other errors (a misuse of the API: a bug) come back as they are."""
        if _is_busy(exc):
            return FabricError("%s stayed locked by another run for more than %.0f s while %s; raise 'timeout' or "
                               "look for a stuck process holding it" % (self.path, self.timeout, doing), field="db")
        if isinstance(exc, sqlite3.OperationalError):
            return FabricError("cannot use %s while %s: %s; check that the file and its directory exist and are "
                               "writable by this user" % (self.path, doing, exc), field="db")
        if type(exc) is sqlite3.DatabaseError:  # pylint: disable=unidiomatic-typecheck
            return self.corrupt(str(exc))  # SQLITE_CORRUPT, SQLITE_NOTADB: exactly this class
        return exc

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
            WriterQueue(self.path, self.timeout).create()
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


class _LockTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _LockTimeout()


class WriterQueue:
    """Where writers wait their turn: an exclusive flock on ``<db>.lock``, taken before BEGIN IMMEDIATE.

    SQLite's own busy handler polls with a growing sleep (up to 100 ms), so under load a run that has
    waited long loses the lock again and again to runs that just arrived. Waiting in flock costs no CPU
    and every waiter is woken the moment the lock is free. The lock file is made with the database;
    when it is missing, writers still serialise correctly through BEGIN IMMEDIATE, only less fairly."""

    def __init__(self, db_path, timeout):
        self.path = db_path + ".lock"
        self.timeout = timeout
        self.fd = None

    def create(self):
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644))

    def acquire(self):
        """True when queued and now first (or when there is no lock file); False after the timeout."""
        try:
            self.fd = os.open(self.path, os.O_RDWR)
        except OSError:
            return True
        if self._try():
            return True
        if threading.current_thread() is threading.main_thread():
            acquired = False
            previous = signal.signal(signal.SIGALRM, _on_alarm)
            try:
                try:
                    signal.setitimer(signal.ITIMER_REAL, max(self.timeout, 0.001))
                    fcntl.flock(self.fd, fcntl.LOCK_EX)
                    acquired = True
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except _LockTimeout:  # also when the alarm lands just as flock returns: then we let go
                acquired = False
            finally:
                signal.signal(signal.SIGALRM, previous)
            if acquired:
                return True
        else:  # signals are for the main thread only: poll
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                time.sleep(0.002)
                if self._try():
                    return True
        self.release()
        return False

    def _try(self):
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            return False

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def _configure(conn):
    # FULL: a lease handed out must survive a power cut, or it could be handed out twice.
    conn.execute("PRAGMA synchronous = FULL")


# --------------------------------------------------------------------------------------------------
# One call: a transaction with the in-memory state of the pools it touches
#
# Inside the write lock the work is kept to what the call needs: the requested owners are looked up
# by index, the used addresses of a pool are read (once) only when the call allocates in it, and a
# candidate MAC is checked by index. Reports over the whole pool (stale leases, usage) are made after
# the commit, outside the lock.

_CHUNK = 500  # owners per "IN (...)" query (old SQLite builds allow 999 parameters)


class _PoolState:
    """One pool during the transaction: what is known of its leases, and what this call changes.

    Lowest-free search: ``cursor`` only ever has taken or excluded addresses below it. It starts at the
    pool's stored hint (when that was made for the same range and exclusions), and ``used`` holds the
    addresses in use from ``loaded_from`` up, read from the database only as far down as the cursor goes."""

    def __init__(self, conn, name, pool, hint):
        self.conn = conn
        self.name = name
        self.pool = pool
        self.known = {}        # owner -> (number, ip, mac), or None: looked up, holds no lease
        self.used = set()      # numbers in use at or above loaded_from
        self.loaded_from = None
        self.released = set()  # numbers released by this call (still in the database until applied)
        self.added = {}        # owner -> lease allocated by this call
        self.removed = {}      # owner -> lease released by this call
        self.allocated = 0
        self.cursor = pool.first if pool is not None else 0
        if pool is not None and hint is not None and hint[0] == pool.fingerprint():
            self.cursor = min(max(pool.first, int(hint[1], 16)), pool.last + 1)
        self.start = self.cursor

    def number(self, ip, key):
        return self.pool.stored_number(ip, key) if self.pool is not None else None

    def lookup(self, owners):
        missing = [owner for owner in dict.fromkeys(owners) if owner not in self.known]
        for index in range(0, len(missing), _CHUNK):
            chunk = missing[index:index + _CHUNK]
            found = {row[0]: row for row in self.conn.execute(
                "SELECT owner, ip, mac, ipkey FROM leases WHERE pool = ? AND owner IN (%s)"
                % ",".join("?" * len(chunk)), [self.name] + chunk)}
            for owner in chunk:
                row = found.get(owner)
                self.known[owner] = (self.number(row[1], row[3]), row[1], row[2]) if row else None

    def lease(self, owner):
        if owner not in self.known:
            self.lookup([owner])
        return self.known[owner]

    def _load(self):
        """Read the used addresses from the cursor up to where ``used`` already covers."""
        if self.loaded_from is None:
            rows = self.conn.execute("SELECT ipkey FROM leases WHERE pool = ? AND ipkey >= ?",
                                     (self.name, ipkey(self.cursor)))
        else:
            rows = self.conn.execute("SELECT ipkey FROM leases WHERE pool = ? AND ipkey >= ? AND ipkey < ?",
                                     (self.name, ipkey(self.cursor), ipkey(self.loaded_from)))
        self.used.update({int(row[0], 16) for row in rows} - self.released)
        self.loaded_from = self.cursor

    def take(self):
        """The lowest free address, or None when the pool is full."""
        if self.loaded_from is None or self.cursor < self.loaded_from:
            self._load()
        number = self._skip(self.cursor)
        if number > self.pool.last:
            self.cursor = number
            return None
        self.cursor = number + 1
        self.used.add(number)
        return number

    def _skip(self, number):
        """The first address from ``number`` up that is neither used nor excluded (> last when none)."""
        pool, last, used = self.pool, self.pool.last, self.used
        while number <= last:
            if number in used:
                number += 1
                continue
            end = pool.excluded_end(number)
            if end is None:
                break
            number = end + 1
        return number

    def add(self, owner, entry):
        self.known[owner] = self.added[owner] = entry
        self.removed.pop(owner, None)
        self.allocated += 1

    def release(self, owner):
        entry = self.known[owner]
        number, ip, mac = entry
        self.known[owner] = None
        if self.added.pop(owner, None) is None:
            self.removed[owner] = entry
        if number is not None:
            self.released.add(number)
            self.used.discard(number)
            if self.pool is not None and self.pool.first <= number < self.cursor:
                self.cursor = number
        return ip, mac

    def next_hint(self):
        """The hint to store after this call, or None when it is unchanged."""
        if self.pool is None:
            return None
        cursor = self.cursor
        if self.loaded_from is not None and cursor >= self.loaded_from:
            cursor = self._skip(cursor)  # move past the leases just above, which are known
        if cursor == self.start:
            return None
        return (self.name, self.pool.fingerprint(), ipkey(cursor))

    def all_leases(self):
        """Every lease of the pool: owner -> (number, ip, mac), with this call's changes laid over what
        the database holds (needed in check mode, where they are never written)."""
        number = self.number
        leases = {owner: (number(ip, key), ip, mac) for owner, ip, mac, key in
                  self.conn.execute("SELECT owner, ip, mac, ipkey FROM leases WHERE pool = ?", (self.name,))}
        for owner in self.removed:
            leases.pop(owner, None)
        leases.update(self.added)
        return leases


class _Transaction:
    def __init__(self, conn, pools, reconciler):
        self.conn = conn
        self.given = pools
        self.reconciler = reconciler
        self.states = {}
        self.stored_definitions = {}
        self.macs_added = set()
        self.macs_released = set()
        self.dirty = False
        self.ops = []  # (pool, description, func, args, diff key, before, after)

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
            hint = self.conn.execute("SELECT fingerprint, next FROM hints WHERE pool = ?", (name,)).fetchone()
            self.states[name] = _PoolState(self.conn, name, self.pool(name), hint)
        return self.states[name]

    def mac_taken(self, mac):
        if mac in self.macs_added:
            return True
        if mac in self.macs_released:
            return False
        return self.conn.execute("SELECT 1 FROM leases WHERE mac = ? LIMIT 1", (mac,)).fetchone() is not None

    # -- writes (run through the reconciler)
    def _write(self, sql, args, hint=None):
        self.conn.execute(sql, args)
        if hint is not None:
            self.conn.execute("INSERT OR REPLACE INTO hints (pool, fingerprint, next) VALUES (?, ?, ?)", hint)
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
        return (name, description, self._write,
                ("INSERT OR REPLACE INTO pools (name, definition, updated) VALUES (?, ?, ?)",
                 (name, json.dumps(wanted, sort_keys=True), time.time())),
                "pool %s" % name, stored, wanted)

    def new_mac(self, pool, owner):
        free_octets = 6 - len(pool.mac_prefix.split(":"))
        space = 1 << (8 * free_octets)
        for attempt in range(min(64, space)):
            mac = derive_mac(pool.mac_prefix, pool.name, owner, attempt)
            if not self.mac_taken(mac):
                return mac
        # A crowded small prefix: walk on from the first candidate (bounded by the size of the space).
        start = int(derive_mac(pool.mac_prefix, pool.name, owner).replace(":", "")[-2 * free_octets:], 16)
        for step in range(space):
            suffix = "%0*x" % (2 * free_octets, (start + step) % space)
            mac = pool.mac_prefix + ":" + ":".join(suffix[i:i + 2] for i in range(0, len(suffix), 2))
            if not self.mac_taken(mac):
                return mac
        raise FabricError("every MAC under the prefix %s is taken; give pool '%s' a shorter mac_prefix"
                          % (pool.mac_prefix, pool.name), field="pools.%s.mac_prefix" % pool.name)

    # -- planning
    def lease_view(self, name, owner, state="present"):
        st = self.state(name)
        entry = st.lease(owner)
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
        entry = st.lease(owner)
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
            in_use = self.conn.execute("SELECT COUNT(*) FROM leases WHERE pool = ?", (name,)).fetchone()[0]
            raise FabricError(
                "pool '%s' is full: %d addresses to hand out (%s, less gateway and reserved), %d in use, and this "
                "call asked for %d more; nothing was changed. Release leases (state: absent) or widen "
                "pools.%s.range / cidr" % (name, pool.size, pool.range_text(), in_use, pending[name], name),
                field="pools.%s" % name, pool=name, size=pool.size, in_use=in_use)
        ip = pool.text(number)
        mac = self.new_mac(pool, owner)
        self.macs_added.add(mac)
        self.macs_released.discard(mac)
        st.add(owner, (number, ip, mac))
        result = self.lease_view(name, owner)
        self.ops.append((name, "allocate %s %s to %s in pool %s" % (ip, mac, owner, name), self._write,
                         ("INSERT INTO leases (pool, owner, ip, ipkey, mac, created) VALUES (?, ?, ?, ?, ?, ?)",
                          (name, owner, ip, ipkey(number), mac, time.time())),
                         "%s/%s" % (name, owner), None, _diff_view(result)))
        result["changed"] = True
        return result

    def plan_absent(self, request):
        name, owner = request["pool"], request["owner"]
        st = self.state(name)
        if st.lease(owner) is None:
            result = self.lease_view(name, owner, state="absent")
            result["changed"] = False
            return result
        before = _diff_view(self.lease_view(name, owner))
        ip, mac = st.release(owner)
        self.macs_added.discard(mac)
        self.macs_released.add(mac)
        self.ops.append((name, "release %s %s of %s in pool %s" % (ip, mac, owner, name), self._write,
                         ("DELETE FROM leases WHERE pool = ? AND owner = ?", (name, owner)),
                         "%s/%s" % (name, owner), before, None))
        result = self.lease_view(name, owner, state="absent")
        result["ip"], result["mac"], result["changed"] = ip, mac, True
        return result

    def apply(self):
        """Hand every planned write to the reconciler (which skips them in check mode). A pool's new
        lowest-free hint is written with its last lease change, so it is never stored on its own."""
        ops = [op for op in (self._definition_op(name) for name in self.states) if op is not None] + self.ops
        last = {op[0]: index for index, op in enumerate(ops)}
        hints = {name: self.states[name].next_hint() for name in last}
        for index, (name, description, func, args, key, before, after) in enumerate(ops):
            if last[name] == index and hints[name] is not None:
                args = args + (hints[name],)
            self.reconciler.act(description, func, *args)
            self.reconciler.record_diff(key, before, after)

    def entries(self, names):
        """Export entries (pool, name, fqdn, ip, mac), sorted by pool then address; leases whose address
        is outside their pool's subnet (reported as stale) are left out."""
        result = []
        for name in names:
            st = self.state(name)
            pool = st.pool
            rows = []
            for owner, (number, ip, mac) in st.all_leases().items():
                if pool is not None and (number is None or not pool.net_first <= number <= pool.net_last):
                    continue
                rows.append((number if number is not None else -1, owner, ip, mac))
            for _number, owner, ip, mac in sorted(rows):
                result.append({"pool": name, "name": owner, "fqdn": pool.fqdn(owner) if pool else owner,
                               "ip": ip, "mac": mac})
        return result


def audit(conn, name, pool, overlay=None):
    """Stale leases (those that no longer fit the pool's definition, with the reasons) and usage.

    Index range scans (the leases in the range, in each excluded interval, outside the range) rather
    than a pass over every lease in Python; a pool's usage costs about the same for 100 or 100,000
    leases. ``overlay`` (a _PoolState) lays that call's unwritten changes over the database (check mode)."""
    in_use = conn.execute("SELECT COUNT(*) FROM leases WHERE pool = ?", (name,)).fetchone()[0]
    if pool is None:
        if overlay is not None:
            in_use += len(overlay.added) - len(overlay.removed)
        return [], {"size": None, "in_use": in_use, "free": None}
    v6 = 1 if pool.version == 6 else 0
    first, last = ipkey(pool.first), ipkey(pool.last)
    select = "SELECT owner, ip, mac, ipkey FROM leases WHERE pool = ? AND "
    fitting = conn.execute("SELECT COUNT(*) FROM leases WHERE pool = ? AND ipkey BETWEEN ? AND ? "
                           "AND (instr(ip, ':') > 0) = ?", (name, first, last, v6)).fetchone()[0]
    suspects = conn.execute(select + "(ipkey < ? OR ipkey > ? OR (instr(ip, ':') > 0) != ?)",
                            (name, first, last, v6)).fetchall()
    suspects += conn.execute(select + "substr(mac, 1, ?) != ?",
                             (name, len(pool.mac_prefix) + 1, pool.mac_prefix + ":")).fetchall()
    for start, end in pool.excluded_intervals():
        inside = conn.execute(select + "ipkey BETWEEN ? AND ? AND (instr(ip, ':') > 0) = ?",
                              (name, ipkey(start), ipkey(end), v6)).fetchall()
        fitting -= len(inside)
        suspects += inside
    if overlay is not None:
        in_use += len(overlay.added) - len(overlay.removed)
        fitting += len(overlay.added)  # handed out by this call: they fit
        fitting -= sum(1 for number, _ip, _mac in overlay.removed.values() if pool.allocatable(number))
    stale = {}
    for owner, ip, mac, key in suspects:
        if owner in stale or (overlay is not None and owner in overlay.removed):
            continue
        reasons = pool.problems(pool.stored_number(ip, key), mac)
        if reasons:
            stale[owner] = {"pool": name, "owner": owner, "ip": ip, "mac": mac, "reasons": reasons}
    return [stale[owner] for owner in sorted(stale)], {"size": pool.size, "in_use": in_use, "free": pool.size - fitting}


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
    """Render and write the export while the transaction still holds the write lock, so that two runs
    cannot write their files in the opposite order of their commits. Returns (result, undo): undo puts
    the old file back should the commit fail."""
    for name in spec["pools"]:
        st = txn.state(name)
        if st.pool is None and not st.all_leases():
            raise FabricError("pool '%s' is unknown: no definition given or stored and no leases" % name,
                              field="export.pools")
    entries = txn.entries(spec["pools"])
    result = {"format": spec["format"], "path": spec["path"], "pools": spec["pools"], "count": len(entries),
              "changed": False}
    if spec["format"] == "libvirt":
        result["reservations"] = [{"mac": e["mac"], "ip": e["ip"], "name": e["name"]} for e in entries]
        return result, None
    content = render(spec["format"], entries, spec["pools"])
    before = read_text(spec["path"])
    if before == content:
        return result, None
    result["changed"] = True
    try:
        written = reconciler.act("write %s file %s (%d entries)" % (spec["format"], spec["path"], len(entries)),
                                 _write_returning, spec["path"], content)
    except OSError as exc:
        raise FabricError("cannot write %s: %s" % (spec["path"], exc.strerror or exc), field="export.path")
    reconciler.record_diff("file %s" % spec["path"], before if before is not None else "", content)

    def undo():
        if written:
            if before is None:
                os.unlink(spec["path"])
            else:
                write_atomic(spec["path"], before)
    return result, undo


def _write_returning(path, content):
    write_atomic(path, content)
    return True


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
    queue = WriterQueue(store.path, store.timeout)
    try:
        try:
            _configure(conn)
            if not queue.acquire():
                raise sqlite3.OperationalError("database is locked")
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise store.sqlite_error(exc, "starting a transaction")
        undo = None
        try:
            txn = _Transaction(conn, given, reconciler)
            report = _plan_and_apply(txn, requests, spec)
            if spec is not None:
                report["export"], undo = _export(txn, spec, reconciler)
                if "reservations" in report["export"]:
                    report["reservations"] = report["export"].pop("reservations")
            conn.execute("COMMIT" if txn.dirty else "ROLLBACK")
        except sqlite3.IntegrityError as exc:
            _rollback(conn, undo)
            raise FabricError("the database refused a duplicate (%s); nothing was changed. This is a bug: please "
                              "report it with the database" % exc, field="db")
        except sqlite3.Error as exc:
            _rollback(conn, undo)
            raise store.sqlite_error(exc, "updating it")
        except BaseException:
            _rollback(conn, undo)
            raise
        finally:
            queue.release()
        # Outside the lock: what the pools look like now (this call's changes laid over in check mode).
        report["stale"], report["usage"] = [], {}
        try:
            for name in touched:
                st = txn.state(name)
                stale, usage = audit(conn, name, st.pool, overlay=None if txn.dirty else st)
                report["stale"].extend(stale)
                report["usage"][name] = usage
        except sqlite3.Error as exc:
            raise store.sqlite_error(exc, "reading it")
        return report
    finally:
        queue.release()
        conn.close()


def _rollback(conn, undo=None):
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    if undo is not None:
        undo()


def _plan_and_apply(txn, requests, spec):
    by_pool = {}
    for request in requests:
        by_pool.setdefault(request["pool"], []).append(request["owner"])
    for name, names in by_pool.items():
        txn.state(name).lookup(names)
    pending = {}  # new leases asked for per pool, for the "pool is full" message
    for request in requests:
        if request["state"] == "present" and txn.state(request["pool"]).lease(request["owner"]) is None:
            pending[request["pool"]] = pending.get(request["pool"], 0) + 1
    results = [txn.plan_present(request, pending) if request["state"] == "present" else txn.plan_absent(request)
               for request in requests]
    if spec is not None:
        if not spec["pools"]:
            spec["pools"] = [row[0] for row in txn.conn.execute(
                "SELECT DISTINCT pool FROM leases UNION SELECT name FROM pools ORDER BY 1")]
        for name in spec["pools"]:
            txn.state(name)
    txn.apply()
    return {"leases": results}
