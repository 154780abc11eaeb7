# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who holds a lock on a file, from ``/proc/locks``: so that an error after a lock timeout can name the
process to look at instead of only the file.

Best effort: a process in another PID namespace shows as pid 0 or a pid not in our ``/proc``, and a host
without ``/proc/locks`` gives no answer; the caller's message must make sense without one."""

from __future__ import annotations

import os

PROC_LOCKS = "/proc/locks"


def parse(text):
    """The held locks in ``/proc/locks`` text: ``(kind, mode, pid, major, minor, inode)`` per lock, kind
    FLOCK/POSIX/OFDLCK, mode READ/WRITE. Waiters (lines with ``->``) hold nothing and are left out."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or "->" in fields:
            continue
        try:
            kind, mode, pid, device = fields[1], fields[3], int(fields[4]), fields[5]
            major, minor, inode = device.split(":")
            found.append((kind, mode, pid, int(major, 16), int(minor, 16), int(inode)))
        except ValueError:
            continue
    return found


def _command(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            argv = handle.read().split(b"\0")
    except OSError:
        return None
    # one line, no control characters: it goes into an error message
    text = " ".join(" ".join(part.decode("utf-8", "replace") for part in argv if part).split())
    return text[:120] or None


def holders(paths, proc_locks=PROC_LOCKS, writers_only=True):
    """``[(pid, command or None, path)]``: the other processes holding a lock (a WRITE lock when
    ``writers_only``) on any of ``paths``, each once per path. Empty when nothing is known."""
    wanted = {}
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            continue
        wanted[(os.major(info.st_dev), os.minor(info.st_dev), info.st_ino)] = path
    if not wanted:
        return []
    try:
        with open(proc_locks) as handle:
            text = handle.read()
    except OSError:
        return []
    result = []
    for _kind, mode, pid, major, minor, inode in parse(text):
        path = wanted.get((major, minor, inode))
        if path is None or pid == os.getpid() or (writers_only and mode != "WRITE"):
            continue
        entry = (pid, _command(pid) if pid > 0 else None, path)
        if entry not in result:
            result.append(entry)
    return result


def describe(paths, proc_locks=PROC_LOCKS, writers_only=True):
    """``"held by pid 123 (python3 x.py) on /a.lock"``-style text, or "" when no holder is known."""
    found = holders(paths, proc_locks, writers_only)
    if not found:
        return ""
    parts = ["pid %d%s on %s" % (pid, " (%s)" % command if command else "", path) for pid, command, path in found]
    return "held by " + ", ".join(parts)
