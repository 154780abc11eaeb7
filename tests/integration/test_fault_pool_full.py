"""Fault (issue 17): the image pool's filesystem fills up during staging. A real small filesystem (ext4 in a
loop-mounted file) holds a libvirt directory pool; vo_image stages signed-list images into it from the
local HTTP server of imagelist_fixtures, while a filler file (fallocate, on the same filesystem, outside the
pool) takes the space away: before the run, in the middle of a download, or between a raw download and its
conversion.

Every time: a clear error naming the pool, its path, the bytes needed and available and the fix; nothing
half-written (no volume, no provenance record, nothing left in the staging area); the image published
before untouched; and once the space is freed, the same run stages the image and the next one changes
nothing. Everything is named ``sgf2-...`` and removed at the end."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import threading
import uuid

import pytest
from imagelist_fixtures import FileServer, Pki, image_entry, image_list, qcow2_image, random_file, sign
from modrun import run_module

pytestmark = pytest.mark.libvirt
libvirt = pytest.importorskip("libvirt")

URI = "qemu:///system"
VO = "atlas"
MIB = 1 << 20
FS_SIZE = 48 * MIB
TAG = "sgf2-%s" % uuid.uuid4().hex[:8]
POOL = TAG + "-pool"
BASE = os.path.join("/var/lib/skygrid-test", TAG)


def sh(*argv):
    subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


class SmallFs:
    """An ext4 filesystem of FS_SIZE in a loop-mounted file; the pool is its directory ``pool``, the
    filler files live beside it."""

    def __init__(self):
        self.image = BASE + ".ext4"
        self.mount = BASE
        self.pool_dir = os.path.join(self.mount, "pool")
        self.fillers = os.path.join(self.mount, "filler")
        self.mounted = False

    def create(self):
        with open(self.image, "wb") as handle:
            handle.truncate(FS_SIZE)
        sh("mkfs.ext4", "-q", "-m", "0", "-L", TAG, self.image)  # -m 0: no root reserve, the numbers stay plain
        os.makedirs(self.mount)
        sh("mount", "-o", "loop", self.image, self.mount)
        self.mounted = True
        os.makedirs(self.pool_dir)
        os.makedirs(self.fillers)

    def destroy(self):
        if self.mounted:
            sh("umount", self.mount)  # the loop device goes with it (mount -o loop sets autoclear)
        with contextlib.suppress(OSError):
            os.rmdir(self.mount)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.image)

    def available(self):
        info = os.statvfs(self.mount)
        return info.f_bavail * info.f_frsize

    def fill_to(self, free):
        """Take space away with filler files until only about ``free`` bytes are available (in chunks: an
        allocation also needs blocks for its own extent tree, so one exact-sized file may not fit)."""
        chunk = 4 * MIB
        while chunk >= 16 * 1024 and self.available() > free:
            size = min(chunk, self.available() - free)
            try:
                sh("fallocate", "-l", str(size), os.path.join(self.fillers, uuid.uuid4().hex))
            except subprocess.CalledProcessError:
                chunk //= 2

    def empty_fillers(self):
        for name in os.listdir(self.fillers):
            os.unlink(os.path.join(self.fillers, name))


@pytest.fixture(scope="module")
def small_fs():
    if not shutil.which("mkfs.ext4") or not shutil.which("fallocate"):
        pytest.skip("needs mkfs.ext4 and fallocate")
    fs = SmallFs()
    try:
        fs.create()
    except (subprocess.CalledProcessError, OSError) as exc:
        fs.destroy()
        pytest.skip("cannot loop-mount a filesystem here: %s" % getattr(exc, "stderr", exc))
    yield fs
    fs.destroy()


@pytest.fixture(scope="module")
def pool(small_fs):
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open(URI)
    storage_pool = conn.storagePoolDefineXML(
        "<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>" % (POOL, small_fs.pool_dir), 0)
    try:
        storage_pool.create(0)
        yield storage_pool
    finally:
        if storage_pool.isActive():
            storage_pool.destroy()
        storage_pool.undefine()
        conn.close()


class Env:
    """PKI, HTTP server, images and one signed list holding them all."""

    def __init__(self, workdir):
        self.dir = workdir
        self.pki = Pki(os.path.join(workdir, "pki"))
        self.server = FileServer()
        self.files = {
            "small.qcow2": qcow2_image(os.path.join(workdir, "small.qcow2"), 2 * MIB),
            "big.qcow2": qcow2_image(os.path.join(workdir, "big.qcow2"), 12 * MIB),
            "disk.raw": random_file(os.path.join(workdir, "disk.raw"), 8 * MIB),
        }
        for name, path in self.files.items():
            self.server.add(name, path)
        entries = [image_entry(name.split(".")[0], self.server.url(name), path, fmt=name.split(".")[1])
                   for name, path in sorted(self.files.items())]
        self.list_url = self.server.add_bytes("images.list", sign(image_list(entries), self.pki.endorser), workdir)

    def size(self, name):
        return os.path.getsize(self.files[name])

    def stage(self, image, check=False):
        return run_module("vo_image", {"uri": URI, "pool": POOL, "vo": VO, "image": image, "list_url": self.list_url,
                                       "endorsers": self.pki.endorsers(), "ca_path": self.pki.ca_path,
                                       "allow_http": True}, check=check)

    def gets(self, name):
        return [request for request in self.server.requests if request["path"] == "/" + name]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    environment = Env(str(tmp_path_factory.mktemp("sgf2-pool-full")))
    yield environment
    environment.server.httpd.resume.set()
    environment.server.close()


@pytest.fixture
def staged_small(env, pool, small_fs):
    """Each test: an empty pool but for the image published before (``small``), and no filler."""
    small_fs.empty_fillers()
    for name in os.listdir(small_fs.pool_dir):
        path = os.path.join(small_fs.pool_dir, name)
        if name != ".skygrid" and not name.startswith(VO + "+small"):
            os.chmod(path, 0o644)
            os.unlink(path)
    staging = os.path.join(small_fs.pool_dir, ".skygrid", "staging")
    if os.path.isdir(staging):
        shutil.rmtree(staging)
    for name in os.listdir(os.path.join(small_fs.pool_dir, ".skygrid", "provenance")) \
            if os.path.isdir(os.path.join(small_fs.pool_dir, ".skygrid", "provenance")) else []:
        if not name.startswith(VO + "+small"):
            os.unlink(os.path.join(small_fs.pool_dir, ".skygrid", "provenance", name))
    pool.refresh(0)
    result = env.stage("small")
    assert not result.failed, result["msg"]
    yield snapshot(small_fs)
    small_fs.empty_fillers()


def snapshot(small_fs):
    """Every file under the pool directory with its sha256 (staging dir entries included)."""
    found = {}
    for base, _dirs, files in os.walk(small_fs.pool_dir):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, small_fs.pool_dir)] = hashlib.sha256(handle.read()).hexdigest()
    return found


def volumes(pool):
    pool.refresh(0)
    return sorted(name for name in pool.listVolumes() if name != ".skygrid")


def refused(result, *phrases):
    assert result.failed, "expected a failure, got %s" % result
    assert result["field"] == "pool", result["msg"]
    for phrase in ("pool '%s'" % POOL,) + phrases:
        assert phrase in result["msg"], result["msg"]
    return result


def converges(env, pool, image):
    first = env.stage(image)
    assert not first.failed and first["changed"], first.get("msg")
    second = env.stage(image)
    assert not second.failed and not second["changed"], second.get("msg")
    assert first["image"]["volume"] in volumes(pool)


def test_an_image_that_cannot_fit_is_refused_before_its_download(env, pool, small_fs, staged_small):
    before = snapshot(small_fs)
    size = env.size("big.qcow2")
    small_fs.fill_to(size // 2)
    free = small_fs.available()
    for check in (True, False):
        result = refused(env.stage("big", check=check), small_fs.pool_dir, "needs %d bytes" % size,
                         "has %d bytes" % free, "Nothing was downloaded, written or changed",
                         "Free at least %d bytes" % (size - free))
        assert result["needed"] == size and result["available"] == free
    assert env.gets("big.qcow2") == []  # refused before the download began
    assert snapshot(small_fs) == before and volumes(pool) == [VO + "+small+1.qcow2"]
    small_fs.empty_fillers()
    converges(env, pool, "big")
    assert {k: v for k, v in snapshot(small_fs).items() if k in before} == before


def test_a_filesystem_filling_up_mid_download_leaves_nothing_half_written(env, pool, small_fs, staged_small):
    before = snapshot(small_fs)
    size = env.size("big.qcow2")
    assert small_fs.available() > size  # the pre-flight check passes: the space goes while downloading
    env.server.set_mode("big.qcow2", "pause")
    env.server.httpd.paused.clear()
    env.server.httpd.resume.clear()
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(result=env.stage("big")))
    runner.start()
    try:
        assert env.server.httpd.paused.wait(60), "the download never started"
        small_fs.fill_to(64 * 1024)  # another writer takes the space while the image is half downloaded
    finally:
        env.server.httpd.resume.set()
        runner.join(120)
        env.server.set_mode("big.qcow2", "normal")
    refused(outcome["result"], small_fs.pool_dir, "filled up while downloading image big",
            "No space left on device", "needing %d bytes" % size, "partial files were removed",
            "images already in the pool are untouched")
    assert snapshot(small_fs) == before and volumes(pool) == [VO + "+small+1.qcow2"]
    small_fs.empty_fillers()
    converges(env, pool, "big")


def test_a_raw_image_whose_conversion_cannot_fit_is_removed_before_converting(env, pool, small_fs, staged_small):
    before = snapshot(small_fs)
    size = env.size("disk.raw")
    small_fs.fill_to(size + 2 * MIB)  # room for the download, not for the qcow2 made from it
    free = small_fs.available()
    result = refused(env.stage("disk"), small_fs.pool_dir, "converting raw image disk to qcow2 needs",
                     "The downloaded raw image was removed and nothing was published")
    assert free - size - MIB < result["available"] <= free - size + MIB
    assert len(env.gets("disk.raw")) >= 1
    assert snapshot(small_fs) == before and volumes(pool) == [VO + "+small+1.qcow2"]
    small_fs.empty_fillers()
    converges(env, pool, "disk")
