# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Downloading an image: HTTP Range resumes an interrupted download, the size is capped and the sha512
computed on the way, and the kernel starts writing to disk while data is still arriving."""

from __future__ import annotations

import hashlib
import http.client
import os
import queue
import socket
import threading

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.images import image_list
from ansible_collections.skygrid.fabric.plugins.module_utils.images.pool_store import is_no_space, unlink_if_present

CHUNK = 4 * 1024 * 1024
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


def _hash_file(path, hasher, chunk=CHUNK):
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as handle:
        while True:
            got = handle.readinto(buf)
            if not got:
                break
            hasher.update(view[:got])


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
        unlink_if_present(partial)
        offset = 0
    if offset:
        _hash_file(partial, hasher, chunk)
    resumed_from = offset
    if offset < size:
        stream, start, total = image_list.open_source(url, field, offset, timeout, validate_certs)
        try:
            if total is not None and total > size:
                unlink_if_present(partial)
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
            unlink_if_present(partial)
            raise FabricError("%s has only %d bytes, fewer than the %d %s (%s): not the endorsed image; nothing "
                              "was staged" % (url, offset, size, declared[0], declared[1]), field=field)
    digest = hasher.hexdigest()
    if digest != sha512:
        unlink_if_present(partial)
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
                        unlink_if_present(partial)
                        raise FabricError("%s sends more than the %d bytes %s (%s): not the endorsed image; the "
                                          "download was stopped and nothing was staged"
                                          % (url, size, declared[0], declared[1]), field=field)
                    received += got
                    sink.put(buf, got)
            finally:
                sink.close()
        except (OSError, http.client.HTTPException, socket.timeout) as exc:
            if is_no_space(exc):  # the pool's filesystem is full: give its space back (VMs may write there)
                out.close()
                unlink_if_present(partial)
                raise
            raise FabricError("the download of %s was interrupted at %d of %d bytes (%s); the partial download is "
                              "kept and the next run resumes it" % (url, offset + sink.written, size,
                                                                    exc or type(exc).__name__), field=field)
    return offset + sink.written
