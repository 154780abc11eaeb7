# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""IP address management (the ``ip_lease`` module): named address pools, leases of IP + MAC + hostname per owner (a VM),
kept in one SQLite database on the IPAM host, and exports of the leases for dnsmasq, /etc/hosts,
DNS zones and libvirt networks.

Plain Python (no Ansible import): the ``ip_lease`` module is a thin wrapper around
:func:`transaction.run`. The pool model is in pool.py, the database file and the writers' queue in store.py,
one call's transaction in transaction.py and the exported files in exports.py.

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
