# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One ``ip_lease`` call: a transaction over the pools it touches (:func:`run`), planned in memory, applied in
one write, audited after the commit."""

from __future__ import annotations

import json
import sqlite3
import time

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.ipam.exports import parse_export, write_export
from ansible_collections.skygrid.fabric.plugins.module_utils.ipam.pool import Pool, derive_mac, ipkey, parse_pools
from ansible_collections.skygrid.fabric.plugins.module_utils.ipam.store import DEFAULT_TIMEOUT, LeaseStore, WriterQueue, configure

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
            configure(conn)
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
                report["export"], undo = write_export(txn, spec, reconciler)
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
