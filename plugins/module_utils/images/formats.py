# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Image formats: ``qemu-img info`` (under memory and CPU limits) says what a download is (only qcow2 and
raw, no qcow2 naming a backing or data file, virtual size capped), ``qemu-img convert`` turns raw into qcow2."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import subprocess

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.images.names import STAGED_FORMATS
from ansible_collections.skygrid.fabric.plugins.module_utils.images.pool_store import unlink_if_present

GIB = 1 << 30
# A VM image of more than 1 TiB virtual size is a mistake or an attack (a 1 PiB qcow2 is a small download).
DEFAULT_MAX_VIRTUAL_SIZE_GB = 1024
DEFAULT_MAX_VIRTUAL_SIZE = DEFAULT_MAX_VIRTUAL_SIZE_GB * GIB
# qemu-img info on a hostile image: at most this much memory and CPU time.
INFO_MEMORY_LIMIT = 1 * GIB
INFO_CPU_SECONDS = 30


def qemu_img():
    path = shutil.which("qemu-img")
    if not path:
        raise FabricError("qemu-img is not installed on this host; it checks and converts images: install qemu-utils "
                          "(Debian/Ubuntu) or qemu-img (EL)", field="pool")
    return path


def _info_limits():
    """Caps for the ``qemu-img info`` child: it parses bytes a VO or a user made (as QEMU's own docs advise)."""
    resource.setrlimit(resource.RLIMIT_AS, (INFO_MEMORY_LIMIT, INFO_MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (INFO_CPU_SECONDS, INFO_CPU_SECONDS))


def inspect(path, declared_format, url, field="image", max_virtual_size=DEFAULT_MAX_VIRTUAL_SIZE):
    """The image's format from ``qemu-img info``, refusing anything that could reach outside the file or
    whose virtual size is above ``max_virtual_size`` bytes (overlays on it inherit that size)."""
    try:
        proc = subprocess.run([qemu_img(), "info", "--output=json", path], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, check=False, preexec_fn=_info_limits,
                              timeout=INFO_CPU_SECONDS * 4)
    except subprocess.TimeoutExpired:
        raise FabricError("qemu-img info took more than %d s on the image from %s; refused, nothing was staged"
                          % (INFO_CPU_SECONDS * 4, url), field=field)
    if proc.returncode != 0:
        raise FabricError("qemu-img cannot read the image from %s: %s; nothing was staged"
                          % (url, proc.stderr.decode("utf-8", "replace").strip()), field=field)
    info = json.loads(proc.stdout.decode("utf-8"))
    fmt = info.get("format")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise FabricError("the image from %s is a qcow2 that names a backing file (%s): a VM on it would read a file "
                          "of this host. Refused; nothing was staged" % (url, info.get("backing-filename")), field=field)
    data = (info.get("format-specific") or {}).get("data") or {}
    if data.get("data-file"):
        raise FabricError("the image from %s is a qcow2 with an external data file (%s): a VM on it would use a file "
                          "of this host. Refused; nothing was staged" % (url, data.get("data-file")), field=field)
    if info.get("encrypted"):
        raise FabricError("the image from %s is encrypted; only plain qcow2 or raw images are staged" % url, field=field)
    if fmt not in STAGED_FORMATS:
        raise FabricError("the image from %s is in %s format; only qcow2 and raw images are staged (other formats can "
                          "reference files on the host); nothing was staged" % (url, fmt), field=field)
    if declared_format and declared_format != fmt:
        raise FabricError("the image from %s is %s but its list declares %s (hv:format); refusing a mismatch "
                          "(a raw image that looks like qcow2 is a known attack); nothing was staged"
                          % (url, fmt, declared_format), field=field)
    virtual = info.get("virtual-size") or 0
    if virtual > max_virtual_size:
        raise FabricError("the image from %s has a virtual size of %d GiB, more than max_virtual_size_gb (%d): every VM "
                          "overlay on it would inherit that size and could fill the host's disk. Refused; nothing was "
                          "staged. Raise max_virtual_size_gb if the site accepts such images"
                          % (url, virtual // GIB, max_virtual_size // GIB), field=field)
    return {"format": fmt, "virtual_size": info.get("virtual-size")}


def qcow2_bytes(src, url, field="image"):
    """The bytes ``qemu-img convert`` will write turning the raw file ``src`` into a qcow2 (``qemu-img measure``:
    the data it holds plus metadata; holes cost nothing)."""
    proc = subprocess.run([qemu_img(), "measure", "--output=json", "-f", "raw", "-O", "qcow2", src],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False, preexec_fn=_info_limits,
                          timeout=INFO_CPU_SECONDS * 4)
    if proc.returncode != 0:
        raise FabricError("qemu-img measure cannot size the qcow2 of the raw image from %s: %s; nothing was staged"
                          % (url, proc.stderr.decode("utf-8", "replace").strip()), field=field)
    return int(json.loads(proc.stdout.decode("utf-8"))["required"])


def convert_to_qcow2(src, dst, url, field="image"):
    """raw -> qcow2. Out-of-order writes (-W) and O_DIRECT output (-t none) keep the conversion from
    competing with the page cache it reads from; a filesystem without O_DIRECT gets a second try
    without it."""
    proc = None
    for cache in (["-t", "none"], []):
        unlink_if_present(dst)
        proc = subprocess.run([qemu_img(), "convert", "-q", "-W"] + cache + ["-f", "raw", "-O", "qcow2", src, dst],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        if proc.returncode == 0:
            return
    unlink_if_present(dst)
    message = proc.stderr.decode("utf-8", "replace").strip()
    if os.strerror(errno.ENOSPC) in message:  # qemu-img reports the errno's text: the caller names the pool
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), dst)
    raise FabricError("converting the raw image from %s to qcow2 failed: %s" % (url, message), field=field)
