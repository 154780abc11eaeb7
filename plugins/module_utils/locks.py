# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lock files only their owner can touch, held with a timeout.

A lock in a world-writable directory (``/run/lock``, ``/tmp``) lets any user plant a symlink where root
then creates a file, or hold the lock and hang root's runs. Here the directory is private (root:
``/run/skygrid/locks``, 0700; another user: ``$XDG_RUNTIME_DIR/skygrid-locks``), checked on every use
(a real directory, owned by us, writable by no one else), the file is opened without following
symlinks and is 0600, and waiting ends after ``timeout`` seconds with an error that says who to look for.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import tempfile
import time

from ansible_collections.skygrid.fabric.plugins.module_utils import lock_holders
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

ROOT_LOCK_DIR = "/run/skygrid/locks"


def default_dir():
    if os.geteuid() == 0:
        return ROOT_LOCK_DIR
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not runtime or not os.path.isdir(runtime):  # no login session (su, cron): a directory of our own in /tmp
        runtime = os.path.join(tempfile.gettempdir(), "skygrid-%d" % os.geteuid())
    return os.path.join(runtime, "skygrid-locks")


def lock_path(name, directory=None):
    """The lock file for ``name`` (any text: it is made a safe file name)."""
    return os.path.join(directory or default_dir(), re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".lock")


def _private_dir(path, field):
    """Create ``path`` (0700) if missing; refuse it unless it is a directory of ours no one else can write."""
    try:
        parent = os.path.dirname(path)
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, 0o755)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        info = os.lstat(path)
    except OSError as exc:
        raise FabricError("cannot make the lock directory %s: %s" % (path, exc.strerror), field=field)
    problem = None
    if not stat.S_ISDIR(info.st_mode):
        problem = "it is not a directory (a symlink?)"
    elif info.st_uid != os.geteuid():
        problem = "it belongs to uid %d, not to this user (uid %d)" % (info.st_uid, os.geteuid())
    elif info.st_mode & 0o022:
        problem = "others can write to it (mode %04o)" % (info.st_mode & 0o7777)
    if problem:
        raise FabricError("refusing the lock directory %s: %s. Someone may be trying to take over this host's "
                          "runs; remove it (it is recreated, 0700) after checking who made it" % (path, problem),
                          field=field)


def _open(path, field):
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FabricError("refusing the lock file %s: it is a symlink. Remove it after checking who planted it"
                              % path, field=field)
        raise FabricError("cannot open the lock file %s: %s" % (path, exc.strerror), field=field)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
        os.close(fd)
        raise FabricError("refusing the lock file %s: not a regular file of this user. Remove it after checking "
                          "who made it" % path, field=field)
    os.fchmod(fd, 0o600)
    return fd


def open_lock(name, field, directory=None):
    """Open (creating it) the lock file of ``name`` in the checked private directory: (fd, path)."""
    directory = directory or default_dir()
    _private_dir(directory, field)
    path = lock_path(name, directory)
    return _open(path, field), path


def try_flock(fd, shared=False):
    """Take the flock on ``fd`` if no one else holds it; False when another open file holds it."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        return False


class Backoff:
    """The pause between two tries of a busy lock, growing to ``longest`` seconds."""

    def __init__(self, first=0.01, longest=0.5):
        self.delay, self.longest = first, longest

    def sleep(self, deadline=None):
        """Pause, but not past ``deadline`` (a time.monotonic() value), so a timeout ends on time."""
        time.sleep(self.delay if deadline is None else max(0, min(self.delay, deadline - time.monotonic())))
        self.delay = min(self.delay * 2, self.longest)


@contextlib.contextmanager
def held(name, timeout, field, what, shared=False, directory=None):
    """Hold the lock ``name`` (exclusive, or ``shared``) for the ``with`` block; wait at most ``timeout``
    seconds for it. ``what`` says in an error who holds it (for example "another vo_image run on pool x")."""
    fd, path = open_lock(name, field, directory)
    try:
        deadline = time.monotonic() + timeout
        backoff = Backoff()
        while not try_flock(fd, shared):
            if time.monotonic() >= deadline:
                holder = lock_holders.describe([path], writers_only=False)
                raise FabricError("waited %d s for %s to finish (lock %s%s) and gave up; if no such run is going on, "
                                  "find the process holding it (fuser -v %s) and stop it"
                                  % (timeout, what, path, ", " + holder if holder else "", path), field=field)
            backoff.sleep(deadline)
        yield path
    finally:
        os.close(fd)  # closing drops the flock


# How long an overlay creation, a prune or a publication waits for the others on the same pool: each
# holds the volume-use lock only for a moment (a check and a create, rename or delete).
VOLUME_USE_TIMEOUT = 300


def volume_use(pool_name, field, shared):
    """The lock that keeps a base volume from being removed or replaced while an overlay is created on it:
    overlay creation holds it shared, prune/remove/replace exclusively (around their "in use" check and
    the change), so an overlay is either seen as a user or created after the base volume is gone (and fails)."""
    return held("volumes-of-pool-" + pool_name, VOLUME_USE_TIMEOUT, field,
                "a change of the base volumes in pool %s (vo_image) or an overlay being created there" % pool_name,
                shared=shared)
