"""Fault (issue 17): the IPAM database busy or unreadable while ip_lease runs, through real module processes
(tests/modrun.py) against a real SQLite file, with the lock held by another real process.

Each fault must give a clear error naming the file (and, when busy, the lock and its holder), change
nothing, and never put an empty database in place of the damaged one; once the fault is gone, the same
call converges."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time

import pytest

from modrun import run_module

POOLS = {"vmnet": {"cidr": "10.20.0.0/24", "gateway": "10.20.0.1"}}
HELD = ["wn1", "wn2", "wn3"]

# A separate process holding the database the way another ip_lease run would: the writers' queue
# (flock of <db>.lock) or SQLite's own write lock (BEGIN IMMEDIATE, as an sqlite3 shell could).
HOLDER = r"""
import fcntl, sqlite3, sys, time
db, how = sys.argv[1], sys.argv[2]
if how == "queue":
    handle = open(db + ".lock", "r+")
    fcntl.flock(handle, fcntl.LOCK_EX)
else:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


@pytest.fixture
def db(tmp_path):
    path = str(tmp_path / "ipam.sqlite")
    for owner in HELD:
        assert not lease(path, owner).failed
    return path


def lease(db, owner, check=False, **args):
    return run_module("ip_lease", dict(args, db=db, pool="vmnet", pools=POOLS, owner=owner), check=check)


def leases(db):
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT owner, ip FROM leases ORDER BY owner").fetchall())
    finally:
        conn.close()


def digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def failed(result, *phrases):
    assert result.failed and result["field"] == "db", result
    for phrase in phrases:
        assert phrase in result["msg"], result["msg"]
    return result


@pytest.mark.parametrize("how", ["queue", "sqlite"])
def test_a_held_database_fails_after_the_timeout_naming_the_holder_then_converges(db, how):
    before = leases(db)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, db, how], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        began = time.monotonic()
        result = lease(db, "wn4", timeout=1.5)
        waited = time.monotonic() - began
        held_file = db + (".lock" if how == "queue" else "-shm")
        failed(result, "stayed locked by another run for more than 1.5 s", "held by pid %d" % holder.pid, held_file,
               "Nothing was changed", "fuser -v %s.lock" % db, "raise 'timeout'")
        assert waited >= 1.5
        assert leases(db) == before
    finally:
        holder.stdin.close()
        holder.wait(10)
    assert holder.returncode == 0
    first = lease(db, "wn4")
    assert not first.failed and first["changed"] and first["lease"]["ip"] == "10.20.0.5"
    again = lease(db, "wn4")
    assert not again.failed and not again["changed"] and again["lease"]["ip"] == "10.20.0.5"


def _directory(db):
    os.unlink(db)
    os.mkdir(db)


def _truncated(db):
    os.truncate(db, os.path.getsize(db) // 2)


def _scribbled(db):
    with open(db, "r+b") as handle:  # keep the header, damage the pages
        handle.seek(100)
        handle.write(os.urandom(os.path.getsize(db) - 100))


def _emptied(db):
    os.truncate(db, 0)


def _deleted(db):
    os.unlink(db)


@pytest.mark.parametrize("damage,phrases", [
    (_directory, ["is a directory", "left exactly as it is"]),
    (_truncated, ["not a usable IPAM database", "left exactly as it is"]),
    (_scribbled, ["not a usable IPAM database", "left exactly as it is"]),
    (_emptied, ["is empty, but", ".lock shows", "Nothing was changed"]),
    (_deleted, ["is missing, but", ".lock shows", "Nothing was changed"]),
])
@pytest.mark.parametrize("check", [False, True])
def test_an_unreadable_database_is_reported_and_never_replaced_by_an_empty_one(db, tmp_path, damage, phrases, check):
    backup = str(tmp_path / "backup.sqlite")
    subprocess.run(["sqlite3", db, ".backup %s" % backup], check=True)
    before = leases(db)
    damage(db)
    listing = sorted(os.listdir(str(tmp_path)))
    state = digest(db) if os.path.isfile(db) else None
    result = lease(db, "wn4", check=check)
    failed(result, db, "Restore", "sqlite3 %s '.backup <file>'" % db, *phrases)
    assert sorted(os.listdir(str(tmp_path))) == listing  # no new database, no journal left beside it
    assert (digest(db) if os.path.isfile(db) else None) == state
    # The fix the message gives: restore the backup; the same call then converges, with no address twice.
    if os.path.isdir(db):
        shutil.rmtree(db)
    shutil.copyfile(backup, db)
    assert leases(db) == before
    first = lease(db, "wn4")
    assert not first.failed and first["lease"]["ip"] not in before.values()
    assert not lease(db, "wn4")["changed"]
