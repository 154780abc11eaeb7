# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The files of a directory pool that staging keeps beside the volumes, and the per-pool lock.

Layout of a pool directory ``P`` (type dir, fs or netfs)::

    P/<vo>-<image id>[-<version>].qcow2      the published, read-only (0444) base volumes
    P/.skygrid/staging/<volume>.<sha>.part   downloads in progress (kept to resume an interrupted one)
    P/.skygrid/staging/<volume>.tmp          a raw image being converted to qcow2
    P/.skygrid/provenance/<volume>.provenance.json   one record per published volume
    P/.skygrid/lists/<vo>.json               the newest image list accepted per list identifier (no replays)

A full filesystem: staging checks the free space before it downloads (the image's declared size, less
a partial download already there) and before it converts a raw image (``qemu-img measure``). When the
filesystem fills anyway (something else wrote there meanwhile), the partial files are removed rather
than kept for a resume: VMs whose overlays live on the same filesystem need that space back now.

libvirt lists every entry of a directory pool as a volume, so the bookkeeping lives in one hidden
subdirectory (listed as the single ``dir`` volume ``.skygrid``, whose files are not volumes). It is
inside the pool directory, so it is on the same filesystem and a rename publishes atomically.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import xml.etree.ElementTree as ET

from ansible_collections.skygrid.fabric.plugins.module_utils import locks
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.files import write_atomic

STATE_DIR = ".skygrid"
PROVENANCE_SUFFIX = ".provenance.json"
PART_SUFFIX = ".part"
FILE_POOL_TYPES = ("dir", "fs", "netfs")
# A staging run waits this long for another on the same pool (which may be downloading a large image).
STAGING_LOCK_TIMEOUT = 3600


def lock_path(pool_name):
    return locks.lock_path(_staging_lock(pool_name))


def _staging_lock(pool_name):
    return "vo-image-" + pool_name


class PoolStore:
    """The files of one directory pool: volumes, staging area and provenance records."""

    def __init__(self, pool, field="pool"):
        root = ET.fromstring(pool.XMLDesc(0))
        self.pool = pool
        self.name = pool.name()
        if root.get("type") not in FILE_POOL_TYPES:
            raise FabricError("storage pool '%s' is of type %s; images are published as files into a directory "
                              "pool (type dir, fs or netfs): stage into one of those"
                              % (self.name, root.get("type")), field=field)
        self.path = root.findtext("target/path")
        if not self.path or not os.path.isdir(self.path):
            raise FabricError("the directory of storage pool '%s' (%s) does not exist on this host"
                              % (self.name, self.path), field=field)
        self.state_dir = os.path.join(self.path, STATE_DIR)
        self.staging = os.path.join(self.state_dir, "staging")
        self.provenance_dir = os.path.join(self.state_dir, "provenance")
        self.lists_dir = os.path.join(self.state_dir, "lists")
        self.warnings = []

    def ensure_dirs(self):
        for path, mode in ((self.state_dir, 0o755), (self.staging, 0o700), (self.provenance_dir, 0o755),
                           (self.lists_dir, 0o755)):
            if not os.path.isdir(path):
                os.mkdir(path, mode)
                os.chmod(path, mode)

    def volume_path(self, volume):
        return os.path.join(self.path, volume)

    def provenance_path(self, volume):
        return os.path.join(self.provenance_dir, volume + PROVENANCE_SUFFIX)

    def partial_path(self, volume, sha512):
        return os.path.join(self.staging, "%s.%s%s" % (volume, sha512[:16], PART_SUFFIX))

    def partials(self, volume):
        if not os.path.isdir(self.staging):
            return []
        pattern = re.compile(r"^%s\.[0-9a-f]{16}%s$" % (re.escape(volume), re.escape(PART_SUFFIX)))
        return sorted(os.path.join(self.staging, name) for name in os.listdir(self.staging) if pattern.match(name))

    def read_record(self, volume):
        path = self.provenance_path(volume)
        try:
            with open(path) as handle:
                record = json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            self.warnings.append("provenance record %s is unreadable (%s); treated as missing" % (path, exc))
            return None
        return record if isinstance(record, dict) else None

    def records(self):
        if not os.path.isdir(self.provenance_dir):
            return []
        result = []
        for name in sorted(os.listdir(self.provenance_dir)):
            if name.endswith(PROVENANCE_SUFFIX):
                record = self.read_record(name[:-len(PROVENANCE_SUFFIX)])
                if record is not None:
                    result.append(record)
        return result

    def write_record(self, record):
        write_json(self.provenance_path(record["volume"]), record)

    def lists_path(self, vo):
        return os.path.join(self.lists_dir, vo + ".json")

    def accepted_lists(self, vo):
        """``{list identifier: {version, created, url, accepted_at}}``: the newest list of each identifier this
        pool accepted for ``vo`` (what a replayed older list is compared with)."""
        path = self.lists_path(vo)
        try:
            with open(path) as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise FabricError("the record of the image lists accepted for VO %s (%s) is unreadable (%s): without it "
                              "an old list could be replayed. Restore it, or remove it to accept the current list "
                              "afresh" % (vo, path, exc), field="list_url")
        return data if isinstance(data, dict) else {}

    def remember_list(self, vo, identifier, entry):
        lists = self.accepted_lists(vo)
        if lists.get(identifier) == entry:
            return
        lists[identifier] = entry
        self.ensure_dirs()
        try:
            write_json(self.lists_path(vo), lists)
        except OSError as exc:
            if is_no_space(exc):
                raise self.no_space(exc, "recording the accepted image list in %s (the images are staged; the "
                                         "record only guards against a replayed older list)" % self.lists_path(vo))
            raise

    # -- space

    def available(self):
        """Free bytes on the pool's filesystem, not counting the blocks reserved for root (left to the system)."""
        info = os.statvfs(self.path)
        return info.f_bavail * info.f_frsize

    def check_space(self, needed, what, outcome="Nothing was downloaded, written or changed"):
        """Refuse ``what`` needing ``needed`` bytes the filesystem does not have, before it writes anything."""
        free = self.available()
        if needed > free:
            raise FabricError("%s needs %d bytes (%s), but the filesystem of pool '%s' (%s) has %d bytes (%s) "
                              "available. %s. Free at least %d bytes there (vo_image "
                              "prune removes images the list no longer holds; state: absent removes others) or grow "
                              "that filesystem, and run again"
                              % (what, needed, _human(needed), self.name, self.path, free, _human(free), outcome,
                                 needed - free), field="pool", needed=needed, available=free)

    def no_space(self, exc, doing, needed=None):
        """The error for a filesystem that filled up while ``doing``; the caller has removed its partial files."""
        free = self.available()
        return FabricError("the filesystem of pool '%s' (%s) filled up while %s (%s)%s; %d bytes (%s) are available "
                           "now. Nothing was published for it and its partial files were removed; the images already "
                           "in the pool are untouched. Free space there (vo_image prune removes images the list no "
                           "longer holds) or grow that filesystem, and run again"
                           % (self.name, self.path, doing, exc.strerror or exc,
                              "" if needed is None else ", needing %d bytes (%s)" % (needed, _human(needed)), free,
                              _human(free)), field="pool", available=free)

    def remove_record(self, volume):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.provenance_path(volume))

    def lock(self, timeout=STAGING_LOCK_TIMEOUT):
        """One staging run per pool at a time (a second run waits, then finds the work done)."""
        return locks.held(_staging_lock(self.name), timeout, "pool", "another vo_image run on pool %s" % self.name)

    def volume_use(self):
        """Exclusive: no overlay is being created on a volume of this pool (see locks.volume_use)."""
        return locks.volume_use(self.name, "pool", shared=False)


class MissingPoolStore:
    """A pool that does not exist yet, planned in check mode: an earlier task of the same run (the hypervisor
    role, skygrid.fabric.libvirt_pool) creates it, so a check run on a new node shows the images it would
    stage instead of failing. It holds nothing: no image, record or accepted list; every image is to stage."""

    def __init__(self, name):
        self.name = name
        self.pool = None
        self.path = None
        self.warnings = ["storage pool '%s' does not exist yet: check mode shows what a run would stage once it is "
                         "created (skygrid.fabric.libvirt_pool, the hypervisor role's hypervisor_image_pool); a run "
                         "in which nothing creates it fails" % name]

    def volume_path(self, volume):
        return None

    def partial_path(self, volume, sha512):
        return None

    def read_record(self, volume):
        return None

    def records(self):
        return []

    def accepted_lists(self, vo):
        return {}

    def lists_path(self, vo):
        return None

    def check_space(self, needed, what, outcome=None):
        """Nothing to measure until the pool exists."""


def staged_record(pool, volume):
    """``(path, record)`` of a volume vo_image staged into ``pool``, or None: a pool whose volumes are not
    files here, or a volume no provenance record vouches for (not staged by vo_image)."""
    try:
        store = PoolStore(pool)
    except FabricError:
        return None
    record = store.read_record(volume)
    if not record:
        return None
    return store.volume_path(volume), record  # (a separate return: pylint inferred the one-line form as None only)


def write_json(path, data):
    """Write ``data`` to ``path`` whole or not at all."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n", mode=0o644)


def fsync_path(path):
    """fsync a file, or a directory (after a rename in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_no_space(exc):
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _human(size):
    """1536 -> "1.5 KiB"."""
    scale, unit = next((scale, unit) for scale, unit in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"), (1, ""))
                       if size >= scale or scale == 1)
    return "%d bytes" % size if scale == 1 else "%.1f %s" % (size / scale, unit)


def unlink_if_present(path):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
