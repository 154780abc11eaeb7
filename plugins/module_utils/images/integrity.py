# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Is a staged volume still the bytes its provenance record vouches for?

A record keeps the published file's sha512 (``volume_sha512``: the image's own for a qcow2, the
converted file's for a raw image), its size and its mtime. Hashing a multi-GB image on every VM start
would cost seconds, so the file is re-hashed only when its size or mtime differs from the record (a
write through any path changes the mtime), and always on an explicit verify. Anyone able to set the
mtime back after writing is root on the hypervisor, which no check here can defend against.
"""

from __future__ import annotations

import hashlib
import os

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

CHUNK = 4 * 1024 * 1024

OK = "ok"                      # the bytes match the record (re-hashed, or size and mtime unchanged)
CHANGED = "changed"            # the bytes differ from what the record vouches for
MISSING = "missing"            # the record names a file that is not there
UNVERIFIABLE = "unverifiable"  # an earlier release's record of a converted image holds no hash of the file


def file_sha512(path):
    digest = hashlib.sha512()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(path):
    """What a record keeps to notice a change without hashing: size and mtime (ns)."""
    info = os.stat(path)
    return {"volume_bytes": info.st_size, "volume_mtime_ns": info.st_mtime_ns}


def expected_sha512(record):
    """The sha512 the published file must have, or None when the record cannot tell."""
    if record.get("volume_sha512"):
        return record["volume_sha512"]
    if record.get("converted") is False or record.get("source_format") == "qcow2":
        return record.get("sha512")  # published as downloaded: the endorsed hash is the file's
    return None


def check(path, record, force=False):
    """``(status, detail, fingerprint or None)`` for the file at ``path`` against ``record``.

    Unchanged size and mtime count as OK without hashing unless ``force``. The fingerprint is the file's
    now, to record after an OK re-hash (None when nothing new was learnt)."""
    try:
        now = fingerprint(path)
    except FileNotFoundError:
        return MISSING, "the file %s is gone" % path, None
    except OSError as exc:
        raise FabricError("cannot read staged volume %s: %s" % (path, exc.strerror), field="pool")
    recorded = {key: record.get(key) for key in now}
    if not force and now == recorded:
        return OK, "size and mtime as recorded", None
    want = expected_sha512(record)
    if want is None:
        return UNVERIFIABLE, ("its record (written by an earlier release) holds no hash of the converted file; "
                              "stage it again to make it verifiable"), None
    try:
        have = file_sha512(path)
    except OSError as exc:
        raise FabricError("cannot read staged volume %s: %s" % (path, exc.strerror), field="pool")
    if have != want:
        return CHANGED, "its sha512 is %s..., %s... when staged" % (have[:16], want[:16]), None
    return OK, "re-hashed: sha512 as staged", dict(now, volume_sha512=want)


def refuse_changed(path, detail, field):
    raise FabricError("staged volume %s changed since it was staged (%s): it can no longer be trusted. Stop its "
                      "VMs, remove it (skygrid.fabric.vo_image state: absent) and stage it again"
                      % (path, detail), field=field)


def require_unchanged(path, record, field, warn):
    """The cheap check of ``check`` for a file about to be used: raises when its bytes changed or it is
    gone, passes an unverifiable one to ``warn``; returns the fingerprint to record after a re-hash (or None)."""
    status, detail, fresh = check(path, record)
    if status in (CHANGED, MISSING):
        refuse_changed(path, detail, field)
    if status == UNVERIFIABLE:
        warn("%s: %s" % (path, detail))
    return fresh
