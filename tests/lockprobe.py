"""Whether a run lock is free, seen from outside: a flock tried on a descriptor of our own (plain fcntl, not
the code under test). Used by the unit and integration tests of skygrid.fabric.run_lock."""

from __future__ import annotations

import fcntl
import os

from ansible_collections.skygrid.fabric.plugins.module_utils import locks, run_lock


def run_lock_free(host, directory=None):
    fd = os.open(locks.lock_path(run_lock.PREFIX + host, directory), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
