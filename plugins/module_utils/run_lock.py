# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The run lock: one playbook run at a time works on a worker node, held for the whole run.

A run takes the locks of its hosts (``fabric-run-<host>``, files of ``locks.py``'s private directory) in
sorted order, so two runs that want overlapping hosts never wait for each other in a circle. The flocks
are handed to a small detached holder process, which lives only as long as the run's owner process
(``ansible-playbook``, checked by PID *and* start time, so a reused PID does not keep it alive): when the
run ends or is killed, even with SIGKILL, the holder exits and the kernel drops the flocks. Nothing is
left to clean up. Each lock file says who holds it, so a run that must wait can name the other one.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import time

from ansible_collections.skygrid.fabric.plugins.module_utils import locks
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

PREFIX = "fabric-run-"
POLL_S = 0.2  # how often the holder looks whether its owner still lives


def process_start(pid):
    """The start time of process ``pid`` (clock ticks since boot, /proc/<pid>/stat field 22); None when it is
    gone or a zombie (dead, its parent has not collected it yet)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: the fields after it follow the last ')'.
    fields = stat[stat.rindex(b")") + 2:].split()
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


def started_at(start):
    """A process start time (clock ticks since boot) as seconds since the epoch."""
    with open("/proc/stat", "rb") as handle:
        boot = int(next(line for line in handle if line.startswith(b"btime ")).split()[1])
    return boot + start / os.sysconf("SC_CLK_TCK")


class Owner:
    """The run a lock belongs to: its owner process (``ansible-playbook``) identified by PID and start time."""

    def __init__(self, pid, playbook, controller=None):
        self.pid = pid
        self.start = process_start(pid)
        if self.start is None:
            raise FabricError("the process %d that should own the run lock does not exist" % pid)
        self.playbook = playbook
        self.controller = controller or socket.gethostname()
        self.since = started_at(self.start)  # when the run began, not when it took the lock
        self.run_id = "%s:%d:%d" % (self.controller, pid, self.start)

    def record(self, holder_pid, holder_start):
        return {"run_id": self.run_id, "playbook": self.playbook, "pid": self.pid, "controller": self.controller,
                "since": self.since, "holder_pid": holder_pid, "holder_start": holder_start}


def describe(record):
    """Who holds a lock, for a person: 'convert_worker_nodes.yml, pid 1234 on ctl1, since 2026-11-28 01:20:00 UTC'."""
    if not record:
        return "a run that is just starting (it has not written its name yet)"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record.get("since", 0)))
    return "%s, pid %s on %s, since %s" % (record.get("playbook") or "a playbook", record.get("pid"),
                                           record.get("controller"), since)


def _read(fd):
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "null")
    except ValueError:  # being written right now
        return None


def _write(fd, record):
    data = json.dumps(record, sort_keys=True).encode() + b"\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _close_all_but(keep):
    """Close every descriptor but ``keep``; 0-2 point to /dev/null (no pipe of the run stays open)."""
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(null, std)
    low = 3
    for fd in sorted(set(keep)) + [os.sysconf("SC_OPEN_MAX")]:
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1


def _hold(fds, owner_pid, owner_start):
    """The holder's life: keep ``fds`` (and their flocks) open while the owner process lives."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ends with its owner, or on SIGTERM (state=released)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _close_all_but(fds)
    while process_start(owner_pid) == owner_start:
        time.sleep(POLL_S)


def start_holder(fds, owner):
    """Start the detached process that keeps ``fds`` locked while ``owner`` lives; returns its PID. A double
    fork: the holder belongs to no one's process tree (init reaps it) and to no one's session."""
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # never return into the caller's stack from here
        try:
            os.close(reader)
            os.setsid()
            holder = os.fork()
            if holder:
                os.write(writer, b"%d" % holder)
            else:
                os.close(writer)
                _hold(fds, owner.pid, owner.start)
        finally:
            os._exit(0)
    os.close(writer)
    try:
        answer = os.read(reader, 32)
    finally:
        os.close(reader)
        os.waitpid(child, 0)
    if not answer:
        raise FabricError("could not start the process that holds the run lock")
    return int(answer)


def _room_for(count, field):
    """Raise the open-file limit so that ``count`` lock files fit besides what the process has open: a site
    of a thousand worker nodes would pass the usual soft limit of 1024."""
    want = count + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            raise FabricError("%d hosts need %d open files, more than this controller allows (ulimit -Hn %d): "
                              "raise the limit or take the lock for fewer hosts at a time" % (count, want, hard),
                              field=field)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class RunLock:
    """The run locks of ``hosts`` for the run of ``owner``; ``directory`` defaults to locks.default_dir()."""

    def __init__(self, hosts, owner, directory=None, field="hosts"):
        if not hosts or not all(isinstance(host, str) and host for host in hosts):
            raise FabricError("give the inventory host names whose run lock to take (a non-empty list)", field=field)
        self.hosts = sorted(set(hosts))  # one global order: no two runs wait for each other in a circle
        self.owner, self.directory, self.field = owner, directory, field

    def _open(self, host):
        return locks.open_lock(PREFIX + host, self.field, self.directory)

    def _ours(self, record):
        return bool(record) and record.get("run_id") == self.owner.run_id

    def survey(self):
        """Who holds each lock now, without taking any: {host: record or None (free) or 'this run'}."""
        found = {}
        for host in self.hosts:
            fd, _path = self._open(host)
            try:
                if locks.try_flock(fd):
                    found[host] = None
                else:
                    record = _read(fd)
                    found[host] = "this run" if self._ours(record) else record
            finally:
                os.close(fd)
        return found

    def acquire(self, timeout, on_wait=None):
        """Take every lock this run does not hold yet, waiting at most ``timeout`` seconds in all; ``on_wait``
        (host, record) is called once for each lock another run holds. Returns a dict: taken, already (held by
        this run before), waited_s, holder_pid, waited_for (host: record of the run waited for)."""
        started = time.monotonic()
        deadline = started + timeout
        _room_for(len(self.hosts), self.field)
        taken, already, waited_for, fds = [], [], {}, []
        try:
            for host in self.hosts:
                fd, path = self._open(host)
                backoff = locks.Backoff(0.05, 1.0)
                while not locks.try_flock(fd):
                    record = _read(fd)
                    if self._ours(record):
                        os.close(fd)
                        fd = None
                        already.append(host)
                        break
                    if not waited_for.get(host) and record and on_wait:
                        on_wait(host, record)
                    waited_for[host] = record or waited_for.get(host)
                    if time.monotonic() >= deadline:
                        raise FabricError(
                            "another run holds the fabric lock of %s: %s; waited %d s (raise run_lock timeout - "
                            "fabric_run_lock_timeout in the playbooks - or wait for it; lock %s)"
                            % (host, describe(record), round(time.monotonic() - started), path), field="timeout")
                    backoff.sleep(deadline)
                if fd is not None:
                    fds.append(fd)
                    taken.append(host)
            holder_pid = None
            if fds:
                holder_pid = start_holder(fds, self.owner)
                record = self.owner.record(holder_pid, process_start(holder_pid))
                for fd in fds:
                    _write(fd, record)
        finally:
            for fd in fds:
                os.close(fd)  # the holder has its own copies: the flocks stay
        return {"taken": taken, "already": already, "waited_s": round(time.monotonic() - started, 1),
                "holder_pid": holder_pid, "waited_for": waited_for}

    def release(self, timeout=10):
        """End this run's holders of these locks (the other runs' locks are left alone): the hosts released."""
        released, holders = [], set()
        for host, record in self._held_by_us():
            holders.add((record["holder_pid"], record["holder_start"]))
            released.append(host)
        for pid, start in holders:
            if process_start(pid) == start:  # not a reused PID
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(process_start(pid) == start for pid, start in holders):
            if time.monotonic() >= deadline:
                raise FabricError("the process holding the run lock did not end within %d s (pids %s)"
                                  % (timeout, ", ".join(str(pid) for pid, _start in holders)))
            time.sleep(0.05)
        return released

    def _held_by_us(self):
        for host in self.hosts:
            fd, _path = self._open(host)
            try:
                if not locks.try_flock(fd):
                    record = _read(fd)
                    if self._ours(record):
                        yield host, record
            finally:
                os.close(fd)
