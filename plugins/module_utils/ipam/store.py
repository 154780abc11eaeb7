# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The SQLite lease database: opening it (with the checks that keep a damaged file untouched), creating it,
and the queue writers wait in for its lock."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import sqlite3
import threading
import time

from ansible_collections.skygrid.fabric.plugins.module_utils import lock_holders
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

DEFAULT_DB = "/var/lib/skygrid/ipam.sqlite"
DEFAULT_TIMEOUT = 30.0

APPLICATION_ID = 0x53474950  # "SGIP": marks a skygrid IPAM database
SCHEMA_VERSION = 1
SQLITE_MAGIC = b"SQLite format 3\x00"
# How a backup to restore from is made (a copy of the file while a run writes may be torn).
BACKUP_HINT = "one made with: sqlite3 %s '.backup <file>'"

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
                           "backup (%s), or move it away to start an empty database (every lease in it would be "
                           "forgotten)" % (self.path, detail, BACKUP_HINT % self.path), field="db", path=self.path)

    @property
    def queue_path(self):
        return self.path + ".lock"

    def busy(self, doing):
        """The error after waiting ``timeout`` for another writer: names the files and, when /proc/locks
        tells, the processes holding them."""
        files = [self.queue_path, self.path, self.path + "-wal", self.path + "-shm"]
        holder = lock_holders.describe(files) or "no holder found in /proc/locks (another host, or it just let go)"
        return FabricError("%s stayed locked by another run for more than %g s while %s (%s; writers queue on %s). "
                           "Nothing was changed. Let that run finish, or stop it if it is stuck (fuser -v %s %s), "
                           "then run again; raise 'timeout' if runs are only slow"
                           % (self.path, self.timeout, doing, holder, self.queue_path, self.queue_path, self.path),
                           field="db", path=self.path)

    def sqlite_error(self, exc, doing):
        """The FabricError for an sqlite3 error; other errors (a misuse of the API: a bug) come back as they are."""
        if _is_busy(exc):
            return self.busy(doing)
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
        except IsADirectoryError:
            raise self.corrupt("it is a directory, not a file")
        except OSError as exc:
            raise FabricError("cannot read %s: %s. Nothing was changed. Run as the user that owns it (uid %s), or "
                              "restore its mode (0644) and its directory's" % (self.path, exc.strerror, _owner(self.path)),
                              field="db", path=self.path)
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
        # One read transaction for the id and the tables: a run creating the database at this moment commits
        # both at once, and two autocommit reads could see the id before it and the tables after it.
        own = not conn.in_transaction
        if own:
            conn.execute("BEGIN")
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = self._tables(conn)
        finally:
            if own:
                conn.execute("COMMIT")
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

    def _refuse_if_lost(self):
        """A missing or empty file is a database still to create, unless files SQLite and the writers' queue
        leave beside a database are there: then it was lost, and an empty one would hand out addresses
        that are already leased."""
        traces = [path for path in (self.queue_path, self.path + "-wal") if os.path.exists(path)]
        if traces:
            raise FabricError("%s is %s, but %s show%s that an IPAM database was in use here: starting an empty one "
                              "would hand out addresses that VMs already hold. Nothing was changed. Restore the "
                              "database from a backup (%s); only if no lease of it is in use any more, remove %s to "
                              "start an empty database"
                              % (self.path, "empty" if os.path.exists(self.path) else "missing", " and ".join(traces),
                                 "" if len(traces) > 1 else "s", BACKUP_HINT % self.path, " and ".join(traces)),
                              field="db", path=self.path)

    def open_existing(self):
        """A connection to the existing database, checked read-only; None when there is none yet."""
        if not self.exists():
            self._refuse_if_lost()
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
        self._mark()
        return conn

    def _mark(self):
        """The writers' queue file doubles as the trace that a database exists here (see _refuse_if_lost):
        made again if it went missing (best effort: a reader without write access cannot)."""
        if not os.path.exists(self.queue_path):
            try:
                WriterQueue(self.path, self.timeout).create()
            except OSError:
                pass

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
        else:
            self._refuse_if_lost()
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
            WriterQueue(self.path, self.timeout).create()  # only now: it marks a database that exists
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


def _owner(path):
    try:
        return os.stat(path).st_uid
    except OSError:
        return "?"


class _LockTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _LockTimeout()


class WriterQueue:
    """Where writers wait their turn: an exclusive flock on ``<db>.lock``, taken before BEGIN IMMEDIATE.

    SQLite's own busy handler polls with a growing sleep (up to 100 ms), so under load a run that has
    waited long loses the lock again and again to runs that just arrived. Waiting in flock costs no CPU
    and every waiter is woken the moment the lock is free. The lock file is made with the database, 0600
    (any user who can open a file can flock it, and would hang every run);
    when it is missing, writers still serialise correctly through BEGIN IMMEDIATE, only less fairly."""

    def __init__(self, db_path, timeout):
        self.path = db_path + ".lock"
        self.timeout = timeout
        self.fd = None

    def create(self):
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        os.close(fd)

    def acquire(self):
        """True when queued and now first (or when there is no lock file); False after the timeout."""
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            return True
        if os.fstat(self.fd).st_mode & 0o077:  # 0644 from an earlier release: anyone could open and hold it
            os.fchmod(self.fd, 0o600)
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


def configure(conn):
    # FULL: a lease handed out must survive a power cut, or it could be handed out twice.
    conn.execute("PRAGMA synchronous = FULL")
