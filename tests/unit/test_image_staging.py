"""Image staging without libvirt: names, trust classes, resumable download with size cap and
sha512, format inspection with real qemu-img, conversion, the pool's bookkeeping files, and
telling whether a domain uses a volume."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import subprocess

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils.vm.lifecycle import owned_volume_pattern
from ansible_collections.skygrid.fabric.plugins.module_utils import locks
from ansible_collections.skygrid.fabric.plugins.module_utils.images import download, formats, names, pool_store, staging
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt import storage
from ansible_collections.skygrid.fabric.plugins.module_utils.vm import spec as vm_spec
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from integration import imagelist_fixtures as fx

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")


# ---------------------------------------------------------------- names and trust

@pytest.mark.parametrize("vo, image_id, version, expected", [
    ("atlas", "6a9d3c0e-1f0b-4b4e-8d65-7cf4a1b2c3d4", "4.8.2", "atlas+6a9d3c0e-1f0b-4b4e-8d65-7cf4a1b2c3d4+4.8.2.qcow2"),
    ("vo.example.org", "cernvm_4", None, "vo.example.org+cernvm_4.qcow2"),
    ("lhcb", "img", "", "lhcb+img.qcow2"),
])
def test_volume_name(vo, image_id, version, expected):
    assert names.volume_name(vo, image_id, version) == expected


@pytest.mark.parametrize("image_id", ["../../etc/passwd", "a/b", ".hidden", "..", "a..b", "", None, "x" * 129,
                                      "img\x00", "img\n", "-lead", "trail-", "sp ace", "\u00e9t\u00e9", "/abs", "b+c"])
def test_volume_name_refuses_anything_that_could_escape_the_pool(image_id):
    with pytest.raises(FabricError) as err:
        names.volume_name("atlas", image_id, "1", field="images[3].image")
    assert err.value.field == "images[3].image" and "could escape the pool directory" in str(err.value)


@pytest.mark.parametrize("first, second", [
    (("atlas", "prod-worker", "4.8"), ("atlas-prod", "worker", "4.8")),
    (("atlas", "img-1", None), ("atlas", "img", "1")),
    (("atlas", "img", "1.0-2"), ("atlas", "img-1.0", "2")),
])
def test_volume_names_are_unambiguous(first, second):
    assert names.volume_name(*first) != names.volume_name(*second)


@pytest.mark.parametrize("vo, image_id, version", [
    ("atlas", "vdb", None), ("atlas", "img", "vdb"), ("atlas", "x-vdb", None), ("atlas", "cidata", None),
    ("a-b", "c-vda", "1-vdb"),
])
def test_vm_removal_never_sweeps_a_staged_image(vo, image_id, version):
    """VM removal deletes volumes named like the VM's own overlays and seed; no VM name makes that pattern
    match a staged image, whatever prefix of the image's name the VM is called."""
    volume = names.volume_name(vo, image_id, version)
    for cut in range(1, len(volume)):
        vm_name = volume[:cut]
        if vm_spec.NAME_RE.match(vm_name):
            assert not owned_volume_pattern(vm_name).match(volume), (vm_name, volume)


def test_volume_name_checks_vo_and_version_too():
    with pytest.raises(FabricError) as err:
        names.volume_name("../vo", "img", "1")
    assert err.value.field == "vo"
    with pytest.raises(FabricError, match="image version"):
        names.volume_name("vo", "img", "1/../../x")


@pytest.mark.parametrize("title", ["CernVM 4.8 (x86_64)", "SL6/x86_64 worker", "v1..2 beta", None])
def test_check_title_accepts_ordinary_titles(title):
    names.check_title(title)


@pytest.mark.parametrize("title", ["../../etc/shadow", "/etc/shadow", "a/../b", "..", "line\nbreak", "bell\x07",
                                   "back\\slash"])
def test_check_title_refuses_path_like_titles(title):
    with pytest.raises(FabricError, match="looks like a file path"):
        names.check_title(title, field="image")


def test_trust_classes():
    names.check_trust_class(1, False)
    names.check_trust_class(2, False)
    names.check_trust_class(3, True)
    with pytest.raises(FabricError, match="fabric_allow_user_images: true") as err:
        names.check_trust_class(3, False)
    assert err.value.field == "trust_class"
    with pytest.raises(FabricError, match="must be 1"):
        names.check_trust_class(4, True)


def test_sha512_and_format_normalisation():
    assert names.normalise_sha512(" " + "AB" * 64 + "\n", "sha512") == "ab" * 64
    with pytest.raises(FabricError, match="128 hexadecimal digits") as err:
        names.normalise_sha512("abc", "images[0].sha512")
    assert err.value.field == "images[0].sha512"
    assert names.normalise_format("QCOW2", "f") == "qcow2" and names.normalise_format("img", "f") == "raw"
    assert names.normalise_format(None, "f") is None
    with pytest.raises(FabricError, match="only qcow2 and raw"):
        names.normalise_format("vmdk", "format")


# ---------------------------------------------------------------- download

@pytest.fixture
def payload(tmp_path):
    data = os.urandom(3 * 65536 + 123)
    path = tmp_path / "image.bin"
    path.write_bytes(data)
    return str(path), data, hashlib.sha512(data).hexdigest()


@pytest.fixture
def server():
    srv = fx.FileServer()
    yield srv
    srv.close()


def test_download_from_file_url(payload, tmp_path):
    path, data, sha = payload
    partial = str(tmp_path / "x.part")
    assert download.download("file://" + path, partial, len(data), sha, chunk=4096) == {"bytes": len(data), "resumed_from": 0}
    assert open(partial, "rb").read() == data


def test_download_resumes_a_partial_file_with_a_range_request(payload, tmp_path, server):
    path, data, sha = payload
    url = server.add("image", path)
    partial = str(tmp_path / "x.part")
    with open(partial, "wb") as handle:
        handle.write(data[:70000])
    assert download.download(url, partial, len(data), sha, chunk=8192)["resumed_from"] == 70000
    assert server.requests[-1]["range"] == "bytes=70000-"
    assert open(partial, "rb").read() == data


def test_download_cut_off_keeps_the_partial_file_then_resumes(payload, tmp_path, server):
    path, data, sha = payload
    url = server.add("image", path, mode="cut")
    partial = str(tmp_path / "x.part")
    with pytest.raises(FabricError, match="interrupted at|stopped at") as err:
        download.download(url, partial, len(data), sha, field="images[0].image", chunk=8192)
    assert err.value.field == "images[0].image" and "next run resumes it" in str(err.value)
    kept = os.path.getsize(partial)
    assert 0 < kept <= len(data) // 2
    server.set_mode("image", "normal")
    assert download.download(url, partial, len(data), sha, chunk=8192)["resumed_from"] == kept
    assert server.requests[-1]["range"] == "bytes=%d-" % kept
    assert open(partial, "rb").read() == data


def test_download_restarts_when_the_server_ignores_range(payload, tmp_path, server):
    path, data, sha = payload
    url = server.add("image", path, mode="norange")
    partial = str(tmp_path / "x.part")
    with open(partial, "wb") as handle:
        handle.write(b"garbage that a restart must not keep")
    assert download.download(url, partial, len(data), sha)["resumed_from"] == 0
    assert open(partial, "rb").read() == data


def test_download_refuses_more_than_declared(payload, tmp_path, server):
    path, data, sha = payload
    partial = str(tmp_path / "x.part")
    url = server.add("image", path)
    with pytest.raises(FabricError, match="larger than the 1000 bytes its list declares"):
        download.download(url, partial, 1000, sha)  # refused from Content-Length, before reading any data
    assert not os.path.exists(partial)
    server.set_mode("image", "nolength")  # no Content-Length: the cap is enforced while streaming
    with pytest.raises(FabricError, match="sends more than the 1000 bytes"):
        download.download(url, partial, 1000, sha, chunk=512)
    assert not os.path.exists(partial)
    with pytest.raises(FabricError, match="larger than the 1000 bytes"):
        download.download("file://" + path, partial, 1000, sha)
    assert not os.path.exists(partial)


def test_download_refuses_fewer_bytes_than_declared(payload, tmp_path, server):
    path, data, sha = payload
    partial = str(tmp_path / "x.part")
    with pytest.raises(FabricError, match="fewer than the"):
        download.download("file://" + path, partial, len(data) + 10, sha)
    assert not os.path.exists(partial)
    url = server.add("image", path, mode="nolength")
    with pytest.raises(FabricError, match="fewer than the"):
        download.download(url, partial, len(data) + 10, sha)
    assert not os.path.exists(partial)


def test_download_refuses_a_wrong_sha512_and_deletes_the_partial_file(payload, tmp_path, server):
    path, data, sha = payload
    partial = str(tmp_path / "x.part")
    url = server.add("image", path)
    with pytest.raises(FabricError, match="altered or damaged"):
        download.download(url, partial, len(data), "00" * 64)
    assert not os.path.exists(partial)
    with open(partial, "wb") as handle:  # a complete but wrong partial file is not trusted either
        handle.write(b"y" * len(data))
    with pytest.raises(FabricError, match="altered or damaged"):
        download.download(url, partial, len(data), sha)
    assert not os.path.exists(partial)


def test_download_reports_a_refused_connection(tmp_path):
    with pytest.raises(FabricError, match="fetching http://127.0.0.1:9/x failed") as err:
        download.download("http://127.0.0.1:9/x", str(tmp_path / "x.part"), 10, "00" * 64, field="image")
    assert err.value.field == "image"


class _BrokenFile:
    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_sink_hands_the_writer_error_to_the_reader():
    sink = download._Sink(_BrokenFile(), hashlib.sha512(), 16, depth=2)
    buf = sink.take()
    sink.put(buf, 4)
    with pytest.raises(OSError):
        for _index in range(4):
            sink.put(sink.take(), 4)
    with pytest.raises(OSError):
        sink.close()


# ---------------------------------------------------------------- format (real qemu-img)

def qemu_img(*args):
    subprocess.run(("qemu-img",) + args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@needs_qemu_img
def test_inspect_accepts_qcow2_and_raw(tmp_path):
    qcow = fx.qcow2_image(str(tmp_path / "a.qcow2"), 1 << 20)
    raw = fx.random_file(str(tmp_path / "a.raw"), 1 << 20)
    assert formats.inspect(qcow, "qcow2", "u")["format"] == "qcow2"
    assert formats.inspect(raw, None, "u") == {"format": "raw", "virtual_size": 1 << 20}


@needs_qemu_img
def test_inspect_refuses_a_huge_virtual_size(tmp_path):
    """A 1 PiB qcow2 is a few hundred kB to download; every overlay on it would inherit 1 PiB."""
    image = str(tmp_path / "huge.qcow2")
    qemu_img("create", "-f", "qcow2", image, "1P")
    with pytest.raises(FabricError) as err:
        formats.inspect(image, "qcow2", "http://x/huge", field="images[0].image")
    assert err.value.field == "images[0].image"
    assert "virtual size of 1048576 GiB" in str(err.value) and "max_virtual_size_gb (1024)" in str(err.value)
    assert formats.inspect(image, "qcow2", "u", max_virtual_size=1 << 50)["virtual_size"] == 1 << 50
    qemu_img("create", "-f", "qcow2", str(tmp_path / "b.qcow2"), "2G")
    with pytest.raises(FabricError, match="virtual size of 2 GiB, more than max_virtual_size_gb \\(1\\)"):
        formats.inspect(str(tmp_path / "b.qcow2"), "qcow2", "u", max_virtual_size=formats.GIB)


def test_qemu_img_info_runs_under_resource_limits(tmp_path, monkeypatch):
    """qemu-img parses what the download holds (for class 3, anything a user built): memory and CPU time capped."""
    seen = tmp_path / "limits"
    fake = tmp_path / "qemu-img"
    fake.write_text("#!/bin/sh\nulimit -v > %s\nulimit -t >> %s\necho '{\"format\": \"raw\", \"virtual-size\": 1}'\n"
                    % (seen, seen))
    fake.chmod(0o755)
    monkeypatch.setattr(formats, "qemu_img", lambda: str(fake))
    assert formats.inspect(str(fake), None, "u")["format"] == "raw"
    memory_kib, cpu_seconds = seen.read_text().split()
    assert int(memory_kib) * 1024 == formats.INFO_MEMORY_LIMIT and int(cpu_seconds) == formats.INFO_CPU_SECONDS


@needs_qemu_img
def test_inspect_refuses_a_backing_file(tmp_path):
    image = str(tmp_path / "evil.qcow2")
    qemu_img("create", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", image, "1M")
    with pytest.raises(FabricError, match="names a backing file \\(/etc/hostname\\)") as err:
        formats.inspect(image, "qcow2", "http://x/evil", field="image")
    assert err.value.field == "image"


@needs_qemu_img
def test_inspect_refuses_an_external_data_file(tmp_path):
    image, data = str(tmp_path / "evil.qcow2"), str(tmp_path / "host-file")
    qemu_img("create", "-f", "qcow2", "-o", "data_file=%s" % data, image, "1M")
    with pytest.raises(FabricError, match="external data file"):
        formats.inspect(image, None, "u")


@needs_qemu_img
def test_inspect_refuses_other_formats_and_mismatches(tmp_path):
    vmdk = str(tmp_path / "a.vmdk")
    qemu_img("create", "-f", "vmdk", vmdk, "1M")
    with pytest.raises(FabricError, match="in vmdk format"):
        formats.inspect(vmdk, None, "u")
    qcow = fx.qcow2_image(str(tmp_path / "a.qcow2"), 65536)
    with pytest.raises(FabricError, match="is qcow2 but its list declares raw"):
        formats.inspect(qcow, "raw", "u")
    raw = fx.random_file(str(tmp_path / "a.raw"), 65536)
    with pytest.raises(FabricError, match="is raw but its list declares qcow2"):
        formats.inspect(raw, "qcow2", "u")
    with pytest.raises(FabricError, match="qemu-img cannot read"):
        formats.inspect(str(tmp_path / "missing"), None, "u")


@needs_qemu_img
def test_convert_to_qcow2_keeps_the_content(tmp_path):
    raw = fx.random_file(str(tmp_path / "a.raw"), 1 << 20)
    out = str(tmp_path / "a.qcow2")
    formats.convert_to_qcow2(raw, out, "u")
    assert formats.inspect(out, "qcow2", "u")["format"] == "qcow2"
    subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, out], check=True, stdout=subprocess.DEVNULL)


# ---------------------------------------------------------------- the pool directory

class FakePool:
    def __init__(self, path, kind="dir", name="images"):
        self.path, self.kind, self._name = path, kind, name

    def XMLDesc(self, flags):
        return "<pool type='%s'><name>%s</name><target><path>%s</path></target></pool>" % (self.kind, self._name, self.path)

    def name(self):
        return self._name


@pytest.fixture
def lock_dir(tmp_path, monkeypatch):
    directory = tmp_path / "locks"
    monkeypatch.setattr(locks, "default_dir", lambda: str(directory))
    return directory


def test_pool_store_layout_and_records(tmp_path, lock_dir):
    store = pool_store.PoolStore(FakePool(str(tmp_path)))
    assert store.records() == [] and store.partials("v.qcow2") == []  # nothing is created by reading
    assert not os.path.exists(store.state_dir)
    store.ensure_dirs()
    assert stat.S_IMODE(os.stat(store.staging).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.provenance_dir).st_mode) == 0o755
    assert store.state_dir == str(tmp_path / ".skygrid")
    store.write_record({"volume": "v.qcow2", "vo": "atlas"})
    assert store.read_record("v.qcow2") == {"volume": "v.qcow2", "vo": "atlas"}
    assert os.listdir(store.provenance_dir) == ["v.qcow2.provenance.json"]
    with open(store.provenance_path("broken.qcow2"), "w") as handle:
        handle.write("{not json")
    assert [record["volume"] for record in store.records()] == ["v.qcow2"]
    assert "unreadable" in store.warnings[0]
    partial = store.partial_path("v.qcow2", "ab" * 64)
    assert partial.endswith("/.skygrid/staging/v.qcow2.abababababababab.part")
    open(partial, "w").close()
    open(store.partial_path("v2.qcow2", "cd" * 64), "w").close()
    assert store.partials("v.qcow2") == [partial]
    store.remove_record("v.qcow2")
    store.remove_record("v.qcow2")
    assert store.read_record("v.qcow2") is None
    with store.lock():
        assert os.listdir(str(lock_dir)) == ["vo-image-images.lock"]


def test_pool_store_refuses_block_pools_and_missing_directories(tmp_path):
    with pytest.raises(FabricError, match="of type logical") as err:
        pool_store.PoolStore(FakePool(str(tmp_path), kind="logical"))
    assert err.value.field == "pool"
    with pytest.raises(FabricError, match="does not exist on this host"):
        pool_store.PoolStore(FakePool(str(tmp_path / "missing")))


def test_lock_path_is_safe_for_any_pool_name():
    assert os.path.basename(pool_store.lock_path("../../etc/x y")) == "vo-image-.._.._etc_x_y.lock"


class FakeDomain:
    def __init__(self, name, xml):
        self._name, self.xml = name, xml

    def name(self):
        return self._name

    def isActive(self):
        return False

    def XMLDesc(self, flags):
        return self.xml


class FakeConn:
    def __init__(self, domains=()):
        self.domains = list(domains)

    def listAllDomains(self, flags):
        return self.domains


class FakeVolumePool(FakePool):
    created = ()

    def listAllVolumes(self, flags):
        return []

    def connect(self):
        return self

    def storageVolLookupByPath(self, path):
        return object()

    def createXML(self, xml, flags):
        self.created += (xml,)
        return xml


def test_a_volume_that_came_into_use_during_the_download_is_not_replaced(tmp_path, lock_dir):
    """The "in use" check before the download is not enough: a VM can start on the old bytes meanwhile."""
    stager = staging.ImageStager.__new__(staging.ImageStager)
    stager.store = pool_store.PoolStore(FakeVolumePool(str(tmp_path)))
    stager.store.ensure_dirs()
    final, ready = str(tmp_path / "atlas+a+1.qcow2"), str(tmp_path / ".skygrid" / "staging" / "new")
    for path, text in ((final, "old"), (ready, "new")):
        with open(path, "w") as handle:
            handle.write(text)
    stager.conn = FakeConn([FakeDomain("wn1-atlas-1", domain_xml(pool="images", base_volume="atlas+a+1.qcow2"))])
    item = {"volume": "atlas+a+1.qcow2", "field": "image"}
    with pytest.raises(FabricError) as err:
        stager._replace(ready, final, {"volume": item["volume"]}, item)
    assert err.value.field == "image" and "came into use by VM wn1-atlas-1" in str(err.value)
    assert open(final).read() == "old" and stager.store.read_record(item["volume"]) is None
    stager.conn = FakeConn()
    stager._replace(ready, final, {"volume": item["volume"]}, item)
    assert open(final).read() == "new" and stager.store.read_record(item["volume"]) == {"volume": item["volume"]}


def test_an_overlay_is_not_created_while_a_prune_holds_the_pool(tmp_path, lock_dir, monkeypatch):
    monkeypatch.setattr(locks, "VOLUME_USE_TIMEOUT", 0.2)
    pool = FakeVolumePool(str(tmp_path))
    with pool_store.PoolStore(pool).volume_use():  # what remove/prune hold around "in use" + delete
        with pytest.raises(FabricError) as err:
            storage.create_qcow2(pool, "vm1-vda.qcow2", 1 << 20, ("/p/atlas+a+1.qcow2", "qcow2"), "disks[0]")
    assert err.value.field == "disks[0]" and "change of the base volumes in pool images" in str(err.value)
    assert pool.created == ()
    storage.create_qcow2(pool, "vm1-vda.qcow2", 1 << 20, ("/p/atlas+a+1.qcow2", "qcow2"), "disks[0]")
    assert len(pool.created) == 1


def test_an_overlay_on_a_base_volume_pruned_meanwhile_is_refused(tmp_path, lock_dir, monkeypatch):
    pool = FakeVolumePool(str(tmp_path))
    monkeypatch.setattr(storage, "lookup", lambda func, name: None)
    with pytest.raises(FabricError) as err:
        storage.create_qcow2(pool, "vm1-vda.qcow2", 1 << 20, ("/p/atlas+a+1.qcow2", "qcow2"), "disks[0]")
    assert err.value.field == "disks[0]" and "was removed (pruned?)" in str(err.value) and pool.created == ()


# ---------------------------------------------------------------- who uses a volume

def domain_xml(**disk):
    spec, _seed = vm_spec.normalise({"name": "wn1-atlas-1", "virt_type": "qemu", "disks": [disk]})
    return vm_spec.to_xml(spec)


def test_domain_uses_base_volumes_and_attached_volumes():
    assert staging._domain_uses(domain_xml(pool="images", base_volume="atlas-a-1.qcow2"), "images", "atlas-a-1.qcow2", "/p/a")
    assert not staging._domain_uses(domain_xml(pool="other", base_volume="atlas-a-1.qcow2"), "images", "atlas-a-1.qcow2",
                                    "/p/a")
    assert not staging._domain_uses(domain_xml(pool="images", base_volume="atlas-b-1.qcow2"), "images", "atlas-a-1.qcow2",
                                    "/p/a")
    assert staging._domain_uses(domain_xml(pool="images", volume="atlas-a-1.qcow2"), "images", "atlas-a-1.qcow2", "/p/a")


def test_domain_uses_falls_back_to_text_for_foreign_domains():
    foreign = "<domain><devices><disk><source file='/pool/atlas-a-1.qcow2'/></disk></devices></domain>"
    assert staging._domain_uses(foreign, "images", "atlas-a-1.qcow2", "/pool/atlas-a-1.qcow2")
    assert not staging._domain_uses(foreign, "images", "atlas-b-1.qcow2", "/pool/atlas-b-1.qcow2")


def test_writeback_is_started_early_for_qcow2_downloads_only(tmp_path, monkeypatch):
    """A qcow2 is published as downloaded: its pages go to disk while it arrives. A raw download is
    converted and deleted, so it is not written back early."""
    calls = []
    monkeypatch.setattr(download, "WRITEBACK_WINDOW", 65536)
    monkeypatch.setattr(download, "start_writeback", lambda fd, offset, length: calls.append((offset, length)))
    for name, head in (("q", download.QCOW2_MAGIC), ("r", b"\0\0\0\0")):
        data = head + os.urandom(300000)
        source = tmp_path / name
        source.write_bytes(data)
        del calls[:]
        download.download("file://%s" % source, str(tmp_path / (name + ".part")), len(data),
                          hashlib.sha512(data).hexdigest(), chunk=32768)
        if name == "q":
            assert calls and calls[0][0] == 0 and all(length >= 65536 for _offset, length in calls)
            assert all(calls[index + 1][0] == offset + length for index, (offset, length) in enumerate(calls[:-1]))
        else:
            assert calls == []


def test_start_writeback_is_harmless(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 8192)
    fd = os.open(str(path), os.O_RDONLY)
    try:
        download.start_writeback(fd, 0, 8192)
    finally:
        os.close(fd)
