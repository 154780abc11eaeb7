# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Usage records, one per VM life on a hypervisor, kept in SQLite so none is lost or counted twice.

A life opens the first time a collection sees the VM running and closes at the first collection
that no longer finds it; its end is the last time it was seen (so a removal never adds time the VM
did not run: collect right before removing a VM and right after, and the end is exact to seconds).
CPU time is libvirt's ``cpu.time`` of the QEMU process; a counter that went down (the VM was stopped
and started again) adds the earlier process's last reading to the life's total.

Exporting closed records is a batch protocol, exactly-once across re-runs and kills:

1. in one transaction: resume the batch left unfinished, or give every closed, unexported record a
   new batch, remembering how long the JSON lines file is at that moment;
2. write the batch's APEL message under a name fixed by the batch (``batch_message``; same name and
   content on a re-run: temp file + rename), and cut the JSON lines file back to the remembered length before appending
   the batch's lines (a killed append leaves no partial or doubled line);
3. mark the batch done.

A kill before 3 makes the next run redo 2 for the same batch, which rewrites the same file and the
same lines. One run at a time: an exclusive lock on ``<db>.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY,
    vm_uuid TEXT NOT NULL,
    vm_name TEXT NOT NULL,
    hypervisor TEXT NOT NULL,
    vo TEXT, trust_class TEXT, image_id TEXT, image_sha512 TEXT,
    cores INTEGER, memory_mb INTEGER, disk_gb INTEGER,
    start INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    end INTEGER,
    cpu_ns_done INTEGER NOT NULL DEFAULT 0,
    cpu_ns_last INTEGER NOT NULL DEFAULT 0,
    batch INTEGER REFERENCES batch(id)
);
CREATE UNIQUE INDEX IF NOT EXISTS usage_open ON usage(vm_uuid, hypervisor) WHERE end IS NULL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batch (
    id INTEGER PRIMARY KEY,
    created INTEGER NOT NULL,
    jsonl_offset INTEGER,
    done INTEGER
);
"""

PROVENANCE = ("vo", "trust_class", "image_id", "image_sha512")
DIRQ_GRANULARITY_S = 60  # dirq's default: one intermediate directory per minute
RUNNING_MESSAGE = 0xffffff  # the element number of a message of started records (batches count below it)


def dirq_path(when, number):
    """``<8 hex: the minute>/<14 hex: element>``, a dirq QueueSimple element's path in its queue."""
    return os.path.join("%08x" % (when - when % DIRQ_GRANULARITY_S), "%08x%06x" % (when, number))


def record_key(row):
    """The record's identity everywhere it is exported: one VM life on one hypervisor."""
    return "%s/%s/%d" % (row["vm_uuid"], row["hypervisor"], row["start"])


def as_record(row):
    """A usage record as a plain dict (the JSON lines format)."""
    end = row["end"]
    cpu_ns = row["cpu_ns_done"] + row["cpu_ns_last"]
    return {
        "key": record_key(row),
        "vm_uuid": row["vm_uuid"], "vm_name": row["vm_name"], "hypervisor": row["hypervisor"],
        "vo": row["vo"], "trust_class": row["trust_class"], "image_id": row["image_id"],
        "image_sha512": row["image_sha512"],
        "status": "completed" if end is not None else "started",
        "start": row["start"], "end": end,
        "wall_s": (end if end is not None else row["last_seen"]) - row["start"],
        "cpu_s": cpu_ns // 1000000000,
        "cores": row["cores"], "memory_mb": row["memory_mb"], "disk_gb": row["disk_gb"],
    }


class UsageStore:
    def __init__(self, path=None):
        """``path`` None: an empty store in memory (what check mode reads when no database exists yet)."""
        self.path = path
        self._lock = None
        if path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._lock = open(path + ".lock", "a")
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        # isolation_level=None: transactions are the explicit BEGIN IMMEDIATE ... COMMIT below.
        self.db = sqlite3.connect(path or ":memory:", isolation_level=None, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self):
        self.db.close()
        if self._lock is not None:
            self._lock.close()

    @contextlib.contextmanager
    def transaction(self, commit=True):
        """One write transaction; ``commit=False`` rolls it back (check mode sees what would change)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT" if commit else "ROLLBACK")

    # ------------------------------------------------------------ collection

    def collect(self, hypervisor, samples, now, commit=True):
        """Open, update and close the records of ``hypervisor`` from one sampling of its VMs.

        ``samples``: [{uuid, name, running, cpu_ns (None when not running), cores, memory_mb, disk_gb,
        metadata}]. Returns {opened: [...], closed: [...], updated: n} with the records' keys."""
        opened, closed, updated = [], [], 0
        with self.transaction(commit=commit) as db:
            open_rows = {row["vm_uuid"]: row for row in db.execute(
                "SELECT * FROM usage WHERE hypervisor = ? AND end IS NULL", (hypervisor,))}
            present = set()
            for sample in samples:
                present.add(sample["uuid"])
                row = open_rows.get(sample["uuid"])
                if row is None:
                    if not sample["running"]:
                        continue  # a life starts when the VM first runs
                    metadata = sample.get("metadata") or {}
                    cursor = db.execute(
                        "INSERT INTO usage (vm_uuid, vm_name, hypervisor, vo, trust_class, image_id, image_sha512,"
                        " cores, memory_mb, disk_gb, start, last_seen, cpu_ns_last) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (sample["uuid"], sample["name"], hypervisor) + tuple(metadata.get(k) for k in PROVENANCE)
                        + (sample["cores"], sample["memory_mb"], sample["disk_gb"], now, now, sample["cpu_ns"] or 0))
                    opened.append(record_key(db.execute("SELECT * FROM usage WHERE id = ?",
                                                        (cursor.lastrowid,)).fetchone()))
                    continue
                done, last = row["cpu_ns_done"], row["cpu_ns_last"]
                reading = sample["cpu_ns"]
                if reading is None or reading < last:  # stopped, or a new QEMU process: bank the old counter
                    done, last = done + last, 0
                if reading is not None:
                    last = reading
                last_seen = now if sample["running"] else row["last_seen"]
                db.execute("UPDATE usage SET last_seen = ?, cpu_ns_done = ?, cpu_ns_last = ?, cores = ?,"
                           " memory_mb = ?, disk_gb = ? WHERE id = ?",
                           (last_seen, done, last, sample["cores"], sample["memory_mb"], sample["disk_gb"], row["id"]))
                updated += 1
            for vm_uuid, row in open_rows.items():
                if vm_uuid not in present:
                    db.execute("UPDATE usage SET end = last_seen WHERE id = ?", (row["id"],))
                    closed.append(record_key(row))
        return {"opened": opened, "closed": closed, "updated": updated}

    def records(self, where="1", args=()):
        return [as_record(row) for row in self.db.execute("SELECT * FROM usage WHERE %s ORDER BY id" % where, args)]

    # ------------------------------------------------------------ export

    def pending_export(self):
        """Closed records no batch has taken yet, and the unfinished batch's records."""
        return self.records("end IS NOT NULL AND (batch IS NULL OR batch IN (SELECT id FROM batch WHERE done IS NULL))")

    def begin_batch(self, now, jsonl_path=None):
        """Step 1: the batch to write (resumed or new) as (batch id, records, jsonl offset), or None."""
        with self.transaction() as db:
            row = db.execute("SELECT * FROM batch WHERE done IS NULL ORDER BY id LIMIT 1").fetchone()
            if row is None:
                if db.execute("SELECT 1 FROM usage WHERE end IS NOT NULL AND batch IS NULL LIMIT 1").fetchone() is None:
                    return None
                offset = os.path.getsize(jsonl_path) if jsonl_path and os.path.exists(jsonl_path) else 0
                batch_id = db.execute("INSERT INTO batch (created, jsonl_offset) VALUES (?, ?)", (now, offset)).lastrowid
                db.execute("UPDATE usage SET batch = ? WHERE end IS NOT NULL AND batch IS NULL", (batch_id,))
                row = db.execute("SELECT * FROM batch WHERE id = ?", (batch_id,)).fetchone()
        return row["id"], self.records("batch = ?", (row["id"],)), row["jsonl_offset"]

    def batch_message(self, batch_id):
        """Where the batch's APEL message goes, relative to the APEL SSM's outgoing directory: the layout
        of a dirq QueueSimple, which ssmsend reads (``<8 hex: the minute>/<14 hex: element>``), under a
        name fixed by the batch, so a redone batch replaces its own message and never adds a second."""
        created = self.db.execute("SELECT created FROM batch WHERE id = ?", (batch_id,)).fetchone()[0]
        return dirq_path(created, batch_id % RUNNING_MESSAGE)

    def running_published(self, hypervisor):
        """When the started records of ``hypervisor``'s running VMs were last written (None: never)."""
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", ("running_published/" + hypervisor,)).fetchone()
        return row[0] if row else None

    def mark_running_published(self, hypervisor, now):
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", ("running_published/" + hypervisor, now))

    def finish_batch(self, batch_id, now):
        """Step 3."""
        with self.transaction() as db:
            db.execute("UPDATE batch SET done = ? WHERE id = ?", (now, batch_id))


def append_lines_at(path, offset, records):
    """Step 2 for JSON lines: cut the file back to ``offset`` (what a killed earlier attempt may have
    added) and append one line per record."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        os.ftruncate(fd, min(offset, size))
        os.lseek(fd, 0, os.SEEK_END)
        data = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records).encode()
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)
