# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Staging VO images into a libvirt directory pool, so that a volume either is the endorsed image
or is not there at all.

Layout of a pool directory ``P`` (type dir, fs or netfs)::

    P/<vo>-<image id>[-<version>].qcow2      the published, read-only (0444) base volumes
    P/.skygrid/staging/<volume>.<sha>.part   downloads in progress (kept to resume an interrupted one)
    P/.skygrid/staging/<volume>.tmp          a raw image being converted to qcow2
    P/.skygrid/provenance/<volume>.provenance.json   one record per published volume

libvirt lists every entry of a directory pool as a volume, so the bookkeeping lives in one hidden
subdirectory (listed as the single ``dir`` volume ``.skygrid``, whose files are not volumes). It is
inside the pool directory, so it is on the same filesystem and a rename publishes atomically.

Staging: stream the image (HTTP Range resumes an interrupted download) into the partial file with
a size cap and sha512 computed on the way; ``qemu-img info`` detects the format (only qcow2 and
raw; a qcow2 naming a backing or data file is refused); raw is converted to qcow2; the result is
made read-only, synced, its provenance record written, and then renamed under its final name and
the pool refreshed. Publishing by rename rather than a libvirt upload: an upload creates the volume
under its final name before its content is complete and copies the data a second time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import http.client
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import threading
import xml.etree.ElementTree as ET

from ansible_collections.skygrid.fabric.plugins.module_utils.images import image_list
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt import storage
from ansible_collections.skygrid.fabric.plugins.module_utils.vm import spec as vm_spec
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.connection import libvirt, libvirt_errors

STATE_DIR = ".skygrid"
PROVENANCE_SUFFIX = ".provenance.json"
PART_SUFFIX = ".part"
SCHEMA = 1
CHUNK = 4 * 1024 * 1024
FILE_POOL_TYPES = ("dir", "fs", "netfs")
STAGED_FORMATS = ("qcow2", "raw")
FORMAT_ALIASES = {"qcow2": "qcow2", "raw": "raw", "img": "raw"}
TRUST_CLASSES = (1, 2, 3)
# One component of a volume name: no '/', no leading '.', no '..' -- it can only name a file in the pool.
NAME_PART_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._+-]{0,126}[A-Za-z0-9])?\Z")
LOCK_DIRS = ("/run/lock", "/var/lock", "/tmp")


# ---------------------------------------------------------------- names and trust

def name_part(value, what, field):
    text = "" if value is None else str(value)
    if not NAME_PART_RE.match(text) or ".." in text:
        raise FabricError("%s %r cannot be part of a volume name: it must be 1-128 letters, digits, '.', '_', '+' "
                          "or '-', begin and end with a letter or digit, and hold no '..' or '/' (a name like "
                          "that could escape the pool directory); nothing was staged" % (what, value), field=field)
    return text


def volume_name(vo, image_id, version, field="image"):
    """``<vo>-<image id>[-<version>].qcow2``: every part checked, so the name stays inside the pool."""
    parts = [name_part(vo, "VO name", "vo"), name_part(image_id, "image identifier", field)]
    if version not in (None, ""):
        parts.append(name_part(version, "image version", field))
    return "-".join(parts) + ".qcow2"


def check_title(title, field="image"):
    """Titles never become paths here; still refuse ones that look like an attempt to (or carry
    control characters into logs)."""
    if title is None:
        return
    if any(ord(char) < 32 or ord(char) == 127 for char in title) or title.strip() in (".", "..") \
            or title.startswith("/") or "../" in title or "/.." in title or "\\" in title:
        raise FabricError("image title %r looks like a file path or holds control characters; refusing an image "
                          "whose list entry tries to escape the pool directory. Ask the VO to fix its list"
                          % (title,), field=field)


def check_trust_class(trust_class, allow_user_images):
    if trust_class not in TRUST_CLASSES:
        raise FabricError("must be 1 (site image, sha512 pinned by the site), 2 (VO image from a signed list) or "
                          "3 (user image), got %r" % (trust_class,), field="trust_class")
    if trust_class == 3 and not allow_user_images:
        raise FabricError("class 3 (user-built) images are refused on this site; set fabric_allow_user_images: true "
                          "(allow_user_images) if the site accepts them", field="trust_class")


def normalise_sha512(value, field):
    text = str(value or "").strip().lower()
    if not image_list.SHA512_RE.match(text):
        raise FabricError("must be the image's sha512: 128 hexadecimal digits (sha512sum prints it)", field=field)
    return text


def normalise_format(value, field):
    if value in (None, ""):
        return None
    fmt = FORMAT_ALIASES.get(str(value).strip().lower())
    if fmt is None:
        raise FabricError("declared format %r is not staged here: only qcow2 and raw images are (other formats can "
                          "reference files on the host)" % (value,), field=field)
    return fmt


# ---------------------------------------------------------------- the pool directory

def lock_path(pool_name):
    directory = next((path for path in LOCK_DIRS if os.path.isdir(path) and os.access(path, os.W_OK)), "/tmp")
    return os.path.join(directory, "skygrid-vo-image-%s.lock" % re.sub(r"[^A-Za-z0-9_.-]", "_", pool_name))


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
        self.warnings = []

    def ensure_dirs(self):
        for path, mode in ((self.state_dir, 0o755), (self.staging, 0o700), (self.provenance_dir, 0o755)):
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
        path = self.provenance_path(record["volume"])
        tmp = path + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(record, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
        fsync_path(self.provenance_dir)

    def remove_record(self, volume):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.provenance_path(volume))

    @contextlib.contextmanager
    def lock(self):
        """One staging run per pool at a time (a second run waits, then finds the work done)."""
        with open(lock_path(self.name), "a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


WRITEBACK_WINDOW = 32 * 1024 * 1024
QCOW2_MAGIC = b"QFI\xfb"


def _load_sync_file_range():
    """Linux's sync_file_range(2), to start writing a download to disk while it is still arriving
    (so the fsync before publishing has little left to do); None where it is not available."""
    try:
        import ctypes
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (ImportError, OSError, AttributeError):
        return None
    func.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    func.restype = ctypes.c_int
    return func


_SYNC_FILE_RANGE = []
SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd, offset, length):
    """Ask the kernel to start writing ``length`` bytes from ``offset`` to disk, without waiting."""
    if not _SYNC_FILE_RANGE:
        _SYNC_FILE_RANGE.append(_load_sync_file_range())
    func = _SYNC_FILE_RANGE[0]
    if func is not None:
        func(fd, offset, length, SYNC_FILE_RANGE_WRITE)  # best effort: the fsync later is what counts


def fsync_path(path):
    """fsync a file, or a directory (after a rename in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- download

def _hash_file(path, hasher, chunk=CHUNK):
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as handle:
        while True:
            got = handle.readinto(buf)
            if not got:
                break
            hasher.update(view[:got])


def _unlink(path):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


LISTED = ("its list declares", "hv:size", "sl:checksum:sha512")
PINNED = ("the inventory pins", "size", "sha512")


def download(url, partial, size, sha512, field="image", timeout=60, validate_certs=True, chunk=CHUNK, declared=LISTED):
    """Fetch ``url`` into ``partial``, resuming a partial file left by an interrupted run; at most
    ``size`` bytes; the sha512 computed while streaming must equal ``sha512``. ``declared`` says in
    errors where size and sha512 come from (LISTED or PINNED).

    A refused download (too large, too small, wrong checksum) deletes the partial file; an
    interrupted one keeps it for the next run. Returns ``{"bytes", "resumed_from"}``.
    """
    hasher = hashlib.sha512()
    offset = os.path.getsize(partial) if os.path.exists(partial) else 0
    if offset > size:
        _unlink(partial)
        offset = 0
    if offset:
        _hash_file(partial, hasher, chunk)
    resumed_from = offset
    if offset < size:
        stream, start, total = image_list.open_source(url, field, offset, timeout, validate_certs)
        try:
            if total is not None and total > size:
                _unlink(partial)
                raise FabricError("%s is %d bytes, larger than the %d bytes %s (%s): not the endorsed image; "
                                  "nothing was staged" % (url, total, size, declared[0], declared[1]), field=field)
            if start != offset:  # the server ignored the range: start again
                hasher, offset, resumed_from = hashlib.sha512(), 0, 0
            offset = _stream_into(stream, partial, offset, size, hasher, url, field, chunk, declared)
        finally:
            stream.close()
        if offset < size:
            if total is not None and total >= size:
                raise FabricError("the download of %s stopped at %d of %d bytes (the server closed the connection); "
                                  "the partial download is kept and the next run resumes it" % (url, offset, size),
                                  field=field)
            _unlink(partial)
            raise FabricError("%s has only %d bytes, fewer than the %d %s (%s): not the endorsed image; nothing "
                              "was staged" % (url, offset, size, declared[0], declared[1]), field=field)
    digest = hasher.hexdigest()
    if digest != sha512:
        _unlink(partial)
        raise FabricError("the sha512 of %s is %s..., not the %s... %s (%s): the image was altered or damaged; "
                          "nothing was staged. Tell its publisher if it persists"
                          % (url, digest[:16], sha512[:16], declared[0], declared[2]), field=field)
    return {"bytes": size, "resumed_from": resumed_from}


class _Sink:
    """Hashes and writes the chunks the caller reads from the network, in two threads of its own:
    hashlib, socket reads and file writes all release the GIL, so the three overlap. A buffer goes
    back to the free pool when both threads are done with it."""

    def __init__(self, out, hasher, chunk, depth=6, offset=0, writeback=None):
        self.out = out
        self.hasher = hasher
        self.offset = offset  # where the first chunk goes in the file
        self.unsynced = offset  # writeback has been started for everything before this
        # Only a qcow2 is published as downloaded; a raw download is converted and deleted, so writing
        # it to disk early would be wasted. None: decide from the first chunk.
        self.writeback = writeback
        self.free = queue.Queue()
        for _index in range(depth):
            self.free.put(bytearray(chunk))
        self.lock = threading.Lock()
        self.users = {}
        self.error = None
        self.written = 0
        self.closed = False
        self.queues = (queue.Queue(), queue.Queue())
        self.threads = [threading.Thread(target=self._run, args=(work, jobs), name="skygrid-image-" + work.__name__,
                                         daemon=True)
                        for work, jobs in zip((self._hash, self._write), self.queues)]
        for thread in self.threads:
            thread.start()

    def _hash(self, view):
        self.hasher.update(view)

    def _write(self, view):
        size = len(view)
        if self.writeback is None and size:
            self.writeback = bytes(view[:len(QCOW2_MAGIC)]) == QCOW2_MAGIC
        while view:  # a raw write may write less than asked
            view = view[self.out.write(view):]
        self.written += size
        end = self.offset + self.written
        if self.writeback and end - self.unsynced >= WRITEBACK_WINDOW:
            start_writeback(self.out.fileno(), self.unsynced, end - self.unsynced)
            self.unsynced = end

    def _run(self, work, jobs):
        while True:
            item = jobs.get()
            if item is None:
                return
            buf, size = item
            if self.error is None:
                try:
                    work(memoryview(buf)[:size])
                except Exception as exc:  # reported to the reading thread by take() and close()
                    self.error = exc
            with self.lock:
                self.users[id(buf)] -= 1
                done = not self.users[id(buf)]
            if done:
                self.free.put(buf)

    def take(self):
        """An empty buffer to read into (raises the writer's error, if it had one)."""
        buf = self.free.get()
        if self.error is not None:
            raise self.error
        return buf

    def put(self, buf, size):
        with self.lock:
            self.users[id(buf)] = len(self.queues)
        for jobs in self.queues:
            jobs.put((buf, size))

    def close(self):
        """Wait until everything handed over is hashed and written; raise the writer's error, if any."""
        if not self.closed:
            self.closed = True
            for jobs in self.queues:
                jobs.put(None)
            for thread in self.threads:
                thread.join()
        if self.error is not None:
            raise self.error


def _stream_into(stream, partial, offset, size, hasher, url, field, chunk, declared=LISTED):
    """Append ``stream`` to ``partial`` (from ``offset``), hashing on the way; returns the new length."""
    with open(partial, "r+b" if offset else "wb", buffering=0) as out:
        out.seek(offset)
        out.truncate()
        writeback = None
        if offset:
            out.seek(0)
            writeback = out.read(len(QCOW2_MAGIC)) == QCOW2_MAGIC
            out.seek(offset)
        sink = _Sink(out, hasher, chunk, offset=offset, writeback=writeback)
        received = offset
        try:
            try:
                while True:
                    buf = sink.take()
                    got = stream.readinto(buf)
                    if not got:
                        break
                    if received + got > size:
                        sink.close()
                        out.close()
                        _unlink(partial)
                        raise FabricError("%s sends more than the %d bytes %s (%s): not the endorsed image; the "
                                          "download was stopped and nothing was staged"
                                          % (url, size, declared[0], declared[1]), field=field)
                    received += got
                    sink.put(buf, got)
            finally:
                sink.close()
        except (OSError, http.client.HTTPException, socket.timeout) as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise FabricError("no space left writing %s: free space in the pool's filesystem (%s bytes needed)"
                                  % (partial, size), field="pool")
            raise FabricError("the download of %s was interrupted at %d of %d bytes (%s); the partial download is "
                              "kept and the next run resumes it" % (url, offset + sink.written, size,
                                                                    exc or type(exc).__name__), field=field)
    return offset + sink.written


# ---------------------------------------------------------------- format

def qemu_img():
    path = shutil.which("qemu-img")
    if not path:
        raise FabricError("qemu-img is not installed on this host; it checks and converts images: install qemu-utils "
                          "(Debian/Ubuntu) or qemu-img (EL)", field="pool")
    return path


def inspect(path, declared_format, url, field="image"):
    """The image's format from ``qemu-img info``, refusing anything that could reach outside the file."""
    proc = subprocess.run([qemu_img(), "info", "--output=json", path], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, check=False)
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
    return {"format": fmt, "virtual_size": info.get("virtual-size")}


def convert_to_qcow2(src, dst, url, field="image"):
    """raw -> qcow2. Out-of-order writes (-W) and O_DIRECT output (-t none) keep the conversion from
    competing with the page cache it reads from; a filesystem without O_DIRECT gets a second try
    without it."""
    proc = None
    for cache in (["-t", "none"], []):
        _unlink(dst)
        proc = subprocess.run([qemu_img(), "convert", "-q", "-W"] + cache + ["-f", "raw", "-O", "qcow2", src, dst],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        if proc.returncode == 0:
            return
    _unlink(dst)
    raise FabricError("converting the raw image from %s to qcow2 failed: %s"
                      % (url, proc.stderr.decode("utf-8", "replace").strip()), field=field)


# ---------------------------------------------------------------- who uses a volume

def users_of(conn, store, volume):
    """VMs (and overlay volumes in the pool) that use ``volume``: a domain whose skygrid metadata has
    it as a disk's base volume, a disk that is the volume itself, or a qcow2 backed by its file."""
    path = store.volume_path(volume)
    users = []
    for dom in conn.listAllDomains(0):
        xmls = [dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)]
        if dom.isActive():
            xmls.append(dom.XMLDesc(0))
        for xml in xmls:
            if _domain_uses(xml, store.name, volume, path):
                users.append("VM %s" % dom.name())
                break
    for vol in store.pool.listAllVolumes(0):
        if vol.name() == volume:
            continue
        try:
            root = ET.fromstring(vol.XMLDesc(0))
        except (libvirt.libvirtError, ET.ParseError):
            continue
        if root.findtext("backingStore/path") == path:
            users.append("overlay volume %s/%s" % (store.name, vol.name()))
    return users


def _domain_uses(xml, pool_name, volume, path):
    try:
        spec = vm_spec.from_xml(xml)
    except Exception:  # a domain this collection did not define: fall back to a plain text search
        return path in xml or ("volume='%s'" % volume in xml and "pool='%s'" % pool_name in xml)
    for disk in spec["disks"]:
        if disk["pool"] == pool_name and volume in (disk["volume"], disk["base_volume"]):
            return True
        if disk["volume"] == path:
            return True
    return False


# ---------------------------------------------------------------- the stager

def _short(record):
    """The provenance record without the fields that change every time it is written."""
    return {key: value for key, value in record.items() if key not in ("staged_at", "host")}


class ImageStager:
    """Stages, removes and prunes one VO's images in one pool, recording every change with the Reconciler."""

    def __init__(self, conn, pool_name, vo, reconciler, timeout=60, validate_certs=True, provenance_log=None,
                 clock=image_list.utcnow):
        self.conn = conn
        self.vo = name_part(vo, "VO name", "vo")
        self.reconciler = reconciler
        self.timeout = timeout
        self.validate_certs = validate_certs
        self.provenance_log = provenance_log
        self.clock = clock
        self.pool = storage.pool_by_name(conn, pool_name, "pool")
        self.store = PoolStore(self.pool)
        self.host = socket.gethostname()

    @property
    def warnings(self):
        return self.store.warnings

    # ------------------------------------------------------------ what is wanted

    def from_list(self, verified, selectors):
        """Items for images of a verified list. Each selector is ``{"image", "version", "path"}``
        (``path`` the option prefix errors name: "" or "images[2].")."""
        items = []
        for selector in selectors:
            prefix = selector.get("path", "")
            field = prefix + "image"
            for key in ("image_url", "sha512", "size", "format"):
                if selector.get(key) not in (None, ""):
                    raise FabricError("comes from the signed image list for trust_class 2; give it only for site (1) "
                                      "or user (3) images", field=prefix + key)
            image = image_list.select(verified["images"], selector["image"], selector.get("version"), field)
            check_title(image["title"], field)
            scheme = image_list.check_url(image["uri"], field)
            if scheme == "file" and image_list.check_url(verified["url"], "list_url") != "file":
                raise FabricError("image %s of the list at %s points at a file on this host (%s); only a list read "
                                  "from this host (a file:// mirror) may do that. Refused; nothing was staged"
                                  % (image["identifier"], verified["url"], image["uri"]), field=field)
            if image["vo"] and image["vo"] != self.vo:
                raise FabricError("image %s is marked for VO %s (ad:vo) in the list, not %s"
                                  % (image["identifier"], image["vo"], self.vo), field=field)
            items.append({
                "trust_class": 2, "image_id": image["identifier"], "title": image["title"],
                "version": image["version"], "uri": image["uri"], "size": image["size"], "sha512": image["sha512"],
                "format": normalise_format(image["format"], field), "field": field,
                "volume": volume_name(self.vo, image["identifier"], image["version"], field),
                "list": {"id": verified["identifier"], "title": verified["title"], "uri": verified["uri"],
                         "url": verified["url"], "version": verified["version"], "expires": verified["expires"]},
                "endorser": verified["signer"],
            })
        return items

    def pinned(self, trust_class, selectors):
        """Items for site (1) or user (3) images: URL, sha512 and size come from the inventory."""
        items = []
        for selector in selectors:
            prefix = selector.get("path", "")
            for key in ("image_url", "sha512", "size"):
                if selector.get(key) in (None, ""):
                    raise FabricError("is required for a trust_class %d image: a site pins its own images by URL, "
                                      "sha512 and size (the cap of the download)" % trust_class, field=prefix + key)
            image_list.check_url(selector["image_url"], prefix + "image_url")
            size = int(selector["size"])
            if size <= 0:
                raise FabricError("must be the image's size in bytes", field=prefix + "size")
            field = prefix + "image"
            items.append({
                "trust_class": trust_class, "image_id": selector["image"], "title": None,
                "version": selector.get("version"), "uri": selector["image_url"], "size": size,
                "sha512": normalise_sha512(selector["sha512"], prefix + "sha512"),
                "format": normalise_format(selector.get("format"), prefix + "format"), "field": field,
                "volume": volume_name(self.vo, selector["image"], selector.get("version"), field),
                "list": None, "endorser": None,
            })
        return items

    def record_for(self, item, source_format=None, volume_bytes=None):
        listed = item["list"] or {}
        endorser = item["endorser"] or {}
        return {
            "schema": SCHEMA,
            "vo": self.vo,
            "trust_class": item["trust_class"],
            "pool": self.store.name,
            "volume": item["volume"],
            "path": self.store.volume_path(item["volume"]),
            "image_id": item["image_id"],
            "image_title": item["title"],
            "image_version": item["version"],
            "sha512": item["sha512"],
            "size": item["size"],
            "source_uri": item["uri"],
            "declared_format": item["format"],
            "source_format": source_format,
            "converted": source_format == "raw" if source_format else None,
            "volume_bytes": volume_bytes,
            "list_id": listed.get("id"),
            "list_title": listed.get("title"),
            "list_uri": listed.get("uri"),
            "list_url": listed.get("url"),
            "list_version": listed.get("version"),
            "list_expires": listed.get("expires"),
            "endorser_dn": endorser.get("dn"),
            "endorser_ca": endorser.get("ca"),
            "staged_at": None,
            "staged_by": "skygrid.fabric.vo_image",
            "host": self.host,
        }

    # ------------------------------------------------------------ present

    def ensure(self, item):
        """Stage one item unless its volume is already the same image. Returns the item's result."""
        volume = item["volume"]
        field = item["field"]
        vol = storage.volume(self.pool, volume)
        record = self.store.read_record(volume)
        path = self.store.volume_path(volume)
        result = {"image_id": item["image_id"], "title": item["title"], "version": item["version"],
                  "volume": volume, "pool": self.store.name, "path": path, "sha512": item["sha512"],
                  "trust_class": item["trust_class"], "changed": False}
        if vol is not None and record is None:
            raise FabricError("volume '%s' exists in pool '%s' without a provenance record: it was not staged by "
                              "skygrid.fabric.vo_image, so it cannot be trusted as image %s. Remove or rename it"
                              % (volume, self.store.name, item["image_id"]), field=field)
        if vol is not None and self._same_image(record, item):
            self._check_unchanged(record, path, field)
            result["provenance"] = record
            self.reconciler.record_diff(volume, _short(record), _short(record))
            return result
        if vol is not None:  # same name, different bytes: the VO re-published without a new version
            users = users_of(self.conn, self.store, volume)
            if users:
                raise FabricError("volume '%s' holds sha512 %s..., but the list now gives %s... for %s version %s, and "
                                  "it is in use by %s; stop those VMs before it can be replaced"
                                  % (volume, record.get("sha512", "?")[:16], item["sha512"][:16], item["image_id"],
                                     item["version"], ", ".join(users)), field=field)
        planned = self.record_for(item)
        self.reconciler.record_diff(volume, _short(record) if record else None, _short(planned))
        verb = "replace" if vol is not None else "stage"
        action = "%s %s/%s from %s (sha512 %s...)" % (verb, self.store.name, volume, item["uri"], item["sha512"][:16])
        staged = self.reconciler.act(action, self._stage, item)
        result["changed"] = True
        result["provenance"] = staged if staged is not None else planned
        return result

    def _same_image(self, record, item):
        return all(record.get(key) == value for key, value in (
            ("vo", self.vo), ("image_id", item["image_id"]), ("image_version", item["version"]),
            ("sha512", item["sha512"])))

    def _check_unchanged(self, record, path, field):
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise FabricError("cannot read staged volume %s: %s" % (path, exc.strerror), field=field)
        problems = []
        if record.get("volume_bytes") is not None and stat.st_size != record["volume_bytes"]:
            problems.append("its size is %d bytes, %d when staged" % (stat.st_size, record["volume_bytes"]))
        if stat.st_mode & 0o222:
            problems.append("it is writable (mode %04o)" % (stat.st_mode & 0o7777))
        if problems:
            raise FabricError("staged volume %s changed since it was staged (%s): it can no longer be trusted. Stop "
                              "its VMs, remove it (state: absent) and stage it again" % (path, "; ".join(problems)),
                              field=field)

    def _stage(self, item):
        store = self.store
        store.ensure_dirs()
        for stale in store.partials(item["volume"]):  # left by an earlier version of this image
            if stale != store.partial_path(item["volume"], item["sha512"]):
                _unlink(stale)
        partial = store.partial_path(item["volume"], item["sha512"])
        converted = os.path.join(store.staging, item["volume"] + ".tmp")
        download(item["uri"], partial, item["size"], item["sha512"], item["field"], self.timeout, self.validate_certs,
                 declared=LISTED if item["list"] else PINNED)
        try:
            found = inspect(partial, item["format"], item["uri"], item["field"])
            ready = partial
            if found["format"] == "raw":
                convert_to_qcow2(partial, converted, item["uri"], item["field"])
                _unlink(partial)  # before the fsync below: its unwritten pages are dropped, not written
                ready = converted
            os.chmod(ready, 0o444)
            fsync_path(ready)
            record = self.record_for(item, found["format"], os.path.getsize(ready))
            record["staged_at"] = image_list.format_time(self.clock())
            final = store.volume_path(item["volume"])
            replacing = os.path.exists(final)
            if not replacing:  # a volume never exists without its record...
                store.write_record(record)
            os.rename(ready, final)
            fsync_path(store.path)
            if replacing:  # ...and a record never vouches for bytes not yet in place
                store.write_record(record)
        except Exception:
            _unlink(converted)
            _unlink(partial)
            raise
        _unlink(partial)
        with libvirt_errors("refreshing storage pool '%s'" % store.name, "pool"):
            self.pool.refresh(0)
        if storage.volume(self.pool, item["volume"]) is None:
            raise FabricError("published %s, but libvirt does not list it in pool '%s' after a refresh"
                              % (item["volume"], store.name), field="pool")
        self.log("staged", record)
        return record

    # ------------------------------------------------------------ absent and prune

    def matching_records(self, selectors):
        """Records of this VO matching any ``{"image", "version"}`` (identifier or title)."""
        found = []
        for record in self.store.records():
            if record.get("vo") != self.vo:
                continue
            for selector in selectors:
                if selector["image"] in (record.get("image_id"), record.get("image_title")) and \
                        selector.get("version") in (None, record.get("image_version")):
                    found.append(record)
                    break
        return found

    def remove(self, records, event="removed", field="image"):
        """Remove the volumes of ``records``; refuses (removing nothing) when any is in use."""
        busy = {}
        for record in records:
            users = users_of(self.conn, self.store, record["volume"])
            if users:
                busy[record["volume"]] = users
        if busy:
            users_text = "; ".join("%s: %s" % (volume, ", ".join(users)) for volume, users in sorted(busy.items()))
            raise FabricError("refusing to remove %s: in use by %s. Remove or move those VMs first"
                              % (", ".join(sorted(busy)), users_text), field=field, in_use=busy)
        removed = []
        for record in records:
            self.reconciler.record_diff(record["volume"], _short(record), None)
            action = "remove %s/%s (%s %s version %s)" % (
                self.store.name, record["volume"], self.vo, record.get("image_id"), record.get("image_version"))
            self.reconciler.act(action, self._remove, record, event)
            removed.append(record["volume"])
        return removed

    def _remove(self, record, event):
        vol = storage.volume(self.pool, record["volume"])
        if vol is not None:
            storage.delete(vol, "image")
        for partial in self.store.partials(record["volume"]):
            _unlink(partial)
        self.store.remove_record(record["volume"])
        self.log(event, record)

    def prune(self, keep, trust_classes):
        """Remove this VO's staged images (of ``trust_classes``) whose (image id, version, sha512) is
        not in ``keep`` and that nothing uses. Returns (pruned volumes, [{volume, users}] kept in use)."""
        candidates, kept = [], []
        for record in self.store.records():
            if record.get("vo") != self.vo or record.get("trust_class") not in trust_classes:
                continue
            if (record.get("image_id"), record.get("image_version"), record.get("sha512")) in keep:
                continue
            users = users_of(self.conn, self.store, record["volume"])
            if users:
                kept.append({"volume": record["volume"], "users": users})
            else:
                candidates.append(record)
        return self.remove(candidates, event="pruned"), kept

    def log(self, event, record):
        """Append one JSON line to the site's provenance log."""
        if not self.provenance_log:
            return
        entry = dict(record, event=event, time=image_list.format_time(self.clock()))
        directory = os.path.dirname(self.provenance_log)
        if directory and not os.path.isdir(directory):
            os.makedirs(directory, 0o755)
        line = (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8")
        fd = os.open(self.provenance_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
