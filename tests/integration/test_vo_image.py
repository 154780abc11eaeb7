"""skygrid.fabric.image_list and skygrid.fabric.vo_image against the live libvirtd, a PKI made with
openssl and a local HTTP server: happy paths, idempotency, check mode, prune, trust classes, every
refusal (each leaves nothing staged), resume after a cut-off download, absent while in use.

Everything lives in the storage pool ``sgimg-pool`` (directory below), created here and removed at
the end; the one VM is ``sgimg-vm1``. Nothing else on the shared libvirtd is touched.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from imagelist_fixtures import (ROGUE_DN, FileServer, Pki, image_entry, image_list, qcow2_image, random_file,
                                sha512_of, sign, tamper)
from modrun import run_module

pytestmark = pytest.mark.libvirt
libvirt = pytest.importorskip("libvirt")

URI = "qemu:///system"
POOL = "sgimg-pool"
POOL_DIR = "/var/lib/skygrid-test/sgimg-pool"
STAGING = os.path.join(POOL_DIR, ".skygrid", "staging")
PROVENANCE = os.path.join(POOL_DIR, ".skygrid", "provenance")
VM = "sgimg-vm1"
VO = "atlas"
MIB = 1 << 20


# ---------------------------------------------------------------- fixtures

def _remove_domains(conn):
    for dom in conn.listAllDomains(0):
        if dom.name().startswith("sgimg-"):
            if dom.isActive():
                dom.destroy()
            dom.undefine()


def _remove_pool(conn):
    try:
        pool = conn.storagePoolLookupByName(POOL)
    except libvirt.libvirtError:
        pool = None
    if pool is not None:
        if pool.isActive():
            pool.destroy()
        try:
            pool.undefine()
        except libvirt.libvirtError:
            pass  # transient
    shutil.rmtree(POOL_DIR, ignore_errors=True)


@pytest.fixture(scope="module")
def lv():
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open(URI)
    _remove_domains(conn)
    _remove_pool(conn)
    yield conn
    _remove_domains(conn)
    _remove_pool(conn)
    conn.close()


@pytest.fixture(scope="module")
def pool(lv):
    os.makedirs(POOL_DIR)
    storage_pool = lv.storagePoolDefineXML(
        "<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>" % (POOL, POOL_DIR), 0)
    storage_pool.create(0)
    return storage_pool


class Env:
    """The PKI, the HTTP server and the images it serves."""

    def __init__(self, workdir):
        self.dir = workdir
        self.pki = Pki(os.path.join(workdir, "pki"))
        self.server = FileServer()
        self.log = os.path.join(workdir, "log", "vo_images.jsonl")
        self.files = {}
        for name, size in (("a1.qcow2", 2 * MIB), ("a2.qcow2", 2 * MIB), ("c.qcow2", 8 * MIB)):
            self.add(name, qcow2_image(os.path.join(workdir, name), size))
        self.add("b.raw", random_file(os.path.join(workdir, "b.raw"), 3 * MIB))
        evil = os.path.join(workdir, "evil.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", evil, "1M"],
                       check=True)
        self.add("evil.qcow2", evil)
        huge = os.path.join(workdir, "huge.qcow2")  # 1 PiB virtual, a few hundred kB on disk
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", huge, "1P"], check=True)
        self.add("huge.qcow2", huge)

    def add(self, name, path):
        self.files[name] = path
        self.server.add(name, path)

    def url(self, name):
        return self.server.url(name)

    def entry(self, name, identifier, **kwargs):
        kwargs.setdefault("fmt", "raw" if name.endswith(".raw") else "qcow2")
        return image_entry(identifier, self.url(name), self.files[name], **kwargs)

    def publish(self, list_name, entries, signer=None, raw=None, chain=None, **kwargs):
        """Serve a list signed by the endorser (or ``signer``, carrying ``chain``); ``raw`` serves those bytes instead."""
        data = raw if raw is not None else sign(image_list(entries, **kwargs), signer or self.pki.endorser, chain)
        return self.server.add_bytes(list_name, data, self.dir)

    def args(self, list_url=None, **args):
        # The lists are served over http from 127.0.0.1: allow_http is the consent that needs.
        base = {"uri": URI, "pool": POOL, "vo": VO, "endorsers": self.pki.endorsers(), "ca_path": self.pki.ca_path,
                "provenance_log": self.log, "allow_http": True}
        if list_url:
            base["list_url"] = list_url
        base.update(args)
        return base


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    environment = Env(str(tmp_path_factory.mktemp("vo_image")))
    yield environment
    environment.server.close()


@pytest.fixture(autouse=True)
def empty_pool(pool, lv, env):
    """Every test starts with an empty pool, no test VM and an empty provenance log."""
    _remove_domains(lv)
    if os.path.exists(env.log):
        os.unlink(env.log)
    for name in os.listdir(POOL_DIR):
        path = os.path.join(POOL_DIR, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    pool.refresh(0)
    yield


# ---------------------------------------------------------------- helpers

def ok(result):
    assert not result.failed, result.get("msg")
    return result


def failed(result, field, *phrases):
    assert result.failed, "expected a failure, got %s" % result
    assert result["field"] == field, result["msg"]
    for phrase in phrases:
        assert phrase in result["msg"], result["msg"]
    return result


def tree():
    """Every file and directory under the pool directory, with sizes and modes."""
    found = {}
    for base, dirs, files in os.walk(POOL_DIR):
        for name in dirs + files:
            path = os.path.join(base, name)
            info = os.stat(path)
            found[os.path.relpath(path, POOL_DIR)] = (info.st_size, info.st_mode)
    return found


def volumes(pool):
    pool.refresh(0)
    return sorted(name for name in pool.listVolumes() if name != ".skygrid")


def assert_nothing_staged(pool, volume=None, partial_kept=False):
    assert volumes(pool) == []
    if volume:
        assert not os.path.exists(os.path.join(POOL_DIR, volume))
    assert glob.glob(os.path.join(PROVENANCE, "*")) == []
    leftovers = glob.glob(os.path.join(STAGING, "*"))
    if partial_kept:
        assert len(leftovers) == 1 and leftovers[0].endswith(".part"), leftovers
    else:
        assert leftovers == []


def log_events(env):
    if not os.path.exists(env.log):
        return []
    with open(env.log) as handle:
        return [json.loads(line) for line in handle]


# ---------------------------------------------------------------- image_list

def test_image_list_module_returns_the_verified_images(env):
    url = env.publish("good.list", [env.entry("a1.qcow2", "img-a", title="Worker"), env.entry("b.raw", "img-b")])
    args = {"url": url, "endorsers": env.pki.endorsers(), "ca_path": env.pki.ca_path, "allow_http": True}
    for check in (False, True):
        result = ok(run_module("image_list", args, check=check))
        assert result["changed"] is False
        assert [image["identifier"] for image in result["images"]] == ["img-a", "img-b"]
        assert result["images"][0]["sha512"] == sha512_of(env.files["a1.qcow2"])
        assert result["endorser"]["dn"] == env.pki.endorsers()[0]["dn"]
        assert result["image_list"]["url"] == url and "signer" not in result["image_list"]


def bad_lists(env):
    entries = [env.entry("a1.qcow2", "img-a")]
    text = image_list(entries)
    signed = sign(text, env.pki.endorser)
    return {
        "unsigned": (env.publish("unsigned.list", None, raw=text.encode()), "list_url", "is not signed"),
        "tampered": (env.publish("tampered.list", None, raw=tamper(signed, "img-a", "img-x")), "list_url",
                     "does not verify against its content"),
        "wrong signer": (env.publish("rogue.list", entries, signer=env.pki.rogue), "endorsers",
                         "not an endorser of this VO"),
        "untrusted CA": (env.publish("impostor.list", entries, signer=env.pki.impostor), "endorsers[0].ca_sha256",
                         "not issued by the CA pinned"),
        "impostor intermediate": (env.publish("chain.list", entries, signer=env.pki.chained_impostor,
                                              chain=[env.pki.impostor_ca[0]]), "endorsers[0].ca_sha256",
                                  "not issued by the CA pinned"),
        "revoked": (env.publish("revoked.list", entries, signer=env.pki.revoked), "endorsers",
                    "has a revoked certificate"),
        "expired": (env.publish("expired.list", entries, expires_in=-datetime.timedelta(hours=1)), "list_url",
                    "expired at"),
        "endorser mismatch": (env.publish("mismatch.list", entries, endorser_dn=ROGUE_DN), "list_url",
                              "names its endorser as"),
    }


@pytest.mark.parametrize("case", ["unsigned", "tampered", "wrong signer", "untrusted CA", "impostor intermediate",
                                  "revoked", "expired", "endorser mismatch"])
def test_bad_lists_are_refused_and_nothing_is_staged(env, pool, case):
    url, field, phrase = bad_lists(env)[case]
    listed = run_module("image_list", {"url": url, "endorsers": env.pki.endorsers(), "ca_path": env.pki.ca_path,
                                       "allow_http": True})
    failed(listed, "url" if field == "list_url" else field, phrase)
    staged = run_module("vo_image", env.args(url, image="img-a"))
    failed(staged, field, phrase)
    assert staged["changed"] is False
    assert_nothing_staged(pool, "atlas+img-a+1.qcow2")
    assert not os.path.exists(os.path.join(POOL_DIR, ".skygrid"))


def test_an_older_list_is_refused_after_a_newer_one(env, pool):
    """A replay: after version 3 of a list was staged, version 2 of the same list (still valid, three days
    older) is served again. It must not stage its image beside version 3's."""
    new = env.publish("replay.list", [env.entry("a2.qcow2", "img-r", version="3")], identifier="replayed-list",
                      list_version="3")
    ok(run_module("vo_image", env.args(new, image="img-r")))
    with open(os.path.join(POOL_DIR, ".skygrid", "lists", "atlas.json")) as handle:
        assert json.load(handle)["replayed-list"]["version"] == "3"
    before = tree()
    old = env.publish("replay.list", [env.entry("a1.qcow2", "img-r", version="2")], identifier="replayed-list",
                      list_version="2", created_ago=datetime.timedelta(days=3))
    for check in (True, False):
        failed(run_module("vo_image", env.args(old, image="img-r", prune=True), check=check), "list_url",
               "is older than the one accepted before", "hv:version 3")
        assert tree() == before
    assert volumes(pool) == ["atlas+img-r+3.qcow2"]
    # Another list of the VO (another identifier) is not compared with it.
    other = env.publish("other.list", [env.entry("a1.qcow2", "img-o", version="1")], list_version="1")
    ok(run_module("vo_image", env.args(other, image="img-o")))


# ---------------------------------------------------------------- staging

def test_check_mode_stage_and_idempotency(env, pool, lv):
    url = env.publish("a.list", [env.entry("a1.qcow2", "img-a", title="Worker", version="1.0")])
    args = env.args(url, image="Worker")
    before = tree()
    planned = ok(run_module("vo_image", args, check=True, diff=True))
    volume = "atlas+img-a+1.0.qcow2"
    assert planned["changed"] is True and planned["actions"] == [
        "stage %s/%s from %s (sha512 %s...)" % (POOL, volume, env.url("a1.qcow2"), sha512_of(env.files["a1.qcow2"])[:16])]
    assert planned["diff"]["before"] == {} and planned["diff"]["after"][volume]["image_id"] == "img-a"
    assert planned["image"]["provenance"]["staged_at"] is None
    assert tree() == before and volumes(pool) == [] and log_events(env) == []  # check mode changed nothing

    staged = ok(run_module("vo_image", args, diff=True))
    assert staged["changed"] is True and staged["image"]["volume"] == volume
    assert volumes(pool) == [volume]
    path = os.path.join(POOL_DIR, volume)
    assert os.stat(path).st_mode & 0o777 == 0o444
    assert sha512_of(path) == sha512_of(env.files["a1.qcow2"])
    vol = pool.storageVolLookupByName(volume)
    assert "<format type='qcow2'/>" in vol.XMLDesc(0)
    record = json.load(open(os.path.join(PROVENANCE, volume + ".provenance.json")))
    assert record == staged["image"]["provenance"]
    assert record["vo"] == VO and record["trust_class"] == 2 and record["image_id"] == "img-a"
    assert record["image_version"] == "1.0" and record["image_title"] == "Worker"
    assert record["endorser_dn"] == env.pki.endorsers()[0]["dn"] and record["endorser_ca"] == env.pki.endorsers()[0]["ca"]
    assert record["list_url"] == url and record["source_uri"] == env.url("a1.qcow2")
    assert record["sha512"] == sha512_of(env.files["a1.qcow2"]) and record["converted"] is False
    assert record["staged_at"].endswith("Z") and record["volume_bytes"] == os.path.getsize(path)
    assert staged["image_list"]["endorser"]["dn"] == env.pki.endorsers()[0]["dn"]
    events = log_events(env)
    assert [event["event"] for event in events] == ["staged"] and events[0]["volume"] == volume
    assert glob.glob(os.path.join(STAGING, "*")) == []

    again = ok(run_module("vo_image", args))
    assert again["changed"] is False and again["actions"] == []
    assert again["image"]["provenance"] == record
    assert ok(run_module("vo_image", args, check=True))["changed"] is False
    assert len(log_events(env)) == 1


def test_check_mode_plans_into_a_pool_not_created_yet(env, pool):
    """A play's check run on a new node: the pool the hypervisor role defines earlier in the run is not there.
    The list is still fetched and verified, every image is planned, a warning names the pool; a real run fails."""
    url = env.publish("new.list", [env.entry("a1.qcow2", "img-a", title="Worker", version="1.0")])
    args = env.args(url, image="Worker", pool="sgimg-not-yet")
    planned = ok(run_module("vo_image", args, check=True, diff=True))
    volume = "atlas+img-a+1.0.qcow2"
    assert planned["changed"] is True and planned["actions"] == [
        "stage sgimg-not-yet/%s from %s (sha512 %s...)" % (volume, env.url("a1.qcow2"), sha512_of(env.files["a1.qcow2"])[:16])]
    assert planned["image"]["path"] is None and planned["image_list"]["endorser"]["dn"] == env.pki.endorsers()[0]["dn"]
    assert any("storage pool 'sgimg-not-yet' does not exist yet" in str(warning) for warning in planned.get("warnings", []))
    conn = pool.connect()
    assert "sgimg-not-yet" not in conn.listStoragePools() + conn.listDefinedStoragePools()  # nothing created
    failed(run_module("vo_image", args), "pool", "storage pool 'sgimg-not-yet' does not exist")
    # only a check run plans: an unsigned list is still refused there
    bad = env.publish("new-unsigned.list", None, raw=b"not a signed list")
    assert run_module("vo_image", env.args(bad, image="Worker", pool="sgimg-not-yet"), check=True).failed


def test_raw_image_is_converted_to_qcow2(env, pool):
    url = env.publish("b.list", [env.entry("b.raw", "img-b")])
    staged = ok(run_module("vo_image", env.args(url, image="img-b")))
    volume = staged["image"]["volume"]
    path = os.path.join(POOL_DIR, volume)
    assert volume == "atlas+img-b+1.qcow2" and volumes(pool) == [volume]
    record = staged["image"]["provenance"]
    assert record["source_format"] == "raw" and record["converted"] is True and record["declared_format"] == "raw"
    assert record["sha512"] == sha512_of(env.files["b.raw"])  # the endorsed bytes, before conversion
    assert "<format type='qcow2'/>" in pool.storageVolLookupByName(volume).XMLDesc(0)
    subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", env.files["b.raw"], path], check=True,
                   stdout=subprocess.DEVNULL)
    assert ok(run_module("vo_image", env.args(url, image="img-b")))["changed"] is False


def test_newest_version_by_title_and_prune(env, pool):
    first = env.publish("p1.list", [env.entry("a1.qcow2", "img-a", title="Worker", version="1"),
                                    env.entry("b.raw", "img-b", title="Other")])
    ok(run_module("vo_image", env.args(first, images=[{"image": "Worker"}, {"image": "Other"}])))
    assert volumes(pool) == ["atlas+img-a+1.qcow2", "atlas+img-b+1.qcow2"]
    # The VO releases version 2 of the worker and withdraws the other image.
    second = env.publish("p2.list", [env.entry("a1.qcow2", "img-a", title="Worker", version="1"),
                                     env.entry("a2.qcow2", "img-a", title="Worker", version="2")])
    planned = ok(run_module("vo_image", env.args(second, image="Worker", prune=True), check=True))
    assert planned["images"][0]["volume"] == "atlas+img-a+2.qcow2"
    assert planned["pruned"] == ["atlas+img-b+1.qcow2"]  # version 1 is still in the list: kept
    assert volumes(pool) == ["atlas+img-a+1.qcow2", "atlas+img-b+1.qcow2"]
    result = ok(run_module("vo_image", env.args(second, image="Worker", prune=True)))
    assert result["pruned"] == ["atlas+img-b+1.qcow2"] and result["kept"] == []
    assert volumes(pool) == ["atlas+img-a+1.qcow2", "atlas+img-a+2.qcow2"]
    assert not os.path.exists(os.path.join(PROVENANCE, "atlas+img-b+1.qcow2.provenance.json"))
    # Version 1 withdrawn too: pruned. A site image (class 1) of the VO is never pruned by the list.
    third = env.publish("p3.list", [env.entry("a2.qcow2", "img-a", title="Worker", version="2")])
    ok(run_module("vo_image", env.args(trust_class=1, image="site-img", image_url=env.url("b.raw"),
                                       sha512=sha512_of(env.files["b.raw"]), size=3 * MIB)))
    result = ok(run_module("vo_image", env.args(third, prune=True)))
    assert result["pruned"] == ["atlas+img-a+1.qcow2"] and result["images"] == []
    assert volumes(pool) == ["atlas+img-a+2.qcow2", "atlas+site-img.qcow2"]
    assert ok(run_module("vo_image", env.args(third, image="Worker", prune=True)))["changed"] is False
    assert [event["event"] for event in log_events(env)][-2:] == ["staged", "pruned"]


def test_site_and_user_image_trust_classes(env, pool):
    pinned = {"image": "el9-worker", "version": "2026.01", "image_url": env.url("a1.qcow2"),
              "sha512": sha512_of(env.files["a1.qcow2"]), "size": os.path.getsize(env.files["a1.qcow2"])}
    site = ok(run_module("vo_image", env.args(trust_class=1, **pinned)))
    record = site["image"]["provenance"]
    assert record["trust_class"] == 1 and record["endorser_dn"] is None and record["list_id"] is None
    assert volumes(pool) == ["atlas+el9-worker+2026.01.qcow2"]
    refused = run_module("vo_image", env.args(trust_class=3, **dict(pinned, image="mine")))
    failed(refused, "trust_class", "fabric_allow_user_images: true")
    user = ok(run_module("vo_image", env.args(trust_class=3, allow_user_images=True, **dict(pinned, image="mine"))))
    assert user["image"]["provenance"]["trust_class"] == 3
    failed(run_module("vo_image", env.args(trust_class=1, **dict(pinned, image="x", sha512=None))), "sha512",
           "is required for a trust_class 1 image")
    failed(run_module("vo_image", env.args("http://127.0.0.1:1/l", trust_class=1, **dict(pinned, image="x"))),
           "list_url", "only used for trust_class 2")
    url = env.publish("c2.list", [env.entry("a1.qcow2", "img-a")])
    failed(run_module("vo_image", env.args(url, image="img-a", sha512=pinned["sha512"])), "sha512",
           "comes from the signed image list")
    failed(run_module("vo_image", env.args(trust_class=2, image="img-a")), "list_url", "is required for trust_class 2")
    wrong = run_module("vo_image", env.args(trust_class=1, **dict(pinned, image="y", sha512="00" * 64)))
    failed(wrong, "image", "altered or damaged", "the inventory pins (sha512)")
    assert volumes(pool) == ["atlas+el9-worker+2026.01.qcow2", "atlas+mine+2026.01.qcow2"]


# ---------------------------------------------------------------- refusals: nothing staged

def test_tampered_image_is_refused(env, pool):
    other_sha = sha512_of(env.files["a2.qcow2"])  # the list vouches for a2, the server sends a1
    url = env.publish("t.list", [env.entry("a1.qcow2", "img-a", sha512=other_sha)])
    failed(run_module("vo_image", env.args(url, image="img-a")), "image", "altered or damaged", "nothing was staged")
    assert_nothing_staged(pool, "atlas+img-a+1.qcow2")


def test_qcow2_with_a_backing_file_is_refused(env, pool):
    url = env.publish("evil.list", [env.entry("evil.qcow2", "img-evil")])
    failed(run_module("vo_image", env.args(url, image="img-evil")), "image", "names a backing file (/etc/hostname)")
    assert_nothing_staged(pool, "atlas+img-evil+1.qcow2")


def test_a_huge_virtual_size_is_refused(env, pool):
    url = env.publish("huge.list", [env.entry("huge.qcow2", "img-huge")])
    failed(run_module("vo_image", env.args(url, image="img-huge")), "image", "virtual size of 1048576 GiB",
           "max_virtual_size_gb (1024)")
    assert_nothing_staged(pool, "atlas+img-huge+1.qcow2")
    failed(run_module("vo_image", env.args(url, image="img-huge", max_virtual_size_gb=0)), "max_virtual_size_gb",
           "positive")


def test_format_other_than_declared_is_refused(env, pool):
    url = env.publish("fmt.list", [env.entry("b.raw", "img-b", fmt="qcow2")])
    failed(run_module("vo_image", env.args(url, image="img-b")), "image", "is raw but its list declares qcow2")
    assert_nothing_staged(pool)


@pytest.mark.parametrize("identifier, title, selector, field, phrase", [
    ("../../../../etc/cron.d/sgimg-evil", "Evil", "Evil", "image", "could escape the pool directory"),
    ("../../../../etc/cron.d/sgimg-evil", "Evil", "../../../../etc/cron.d/sgimg-evil", "image", "could escape"),
    ("img/sub", "Evil", "Evil", "image", "could escape"),
    ("img-ok", "../../../../etc/cron.d/sgimg-evil", "img-ok", "image", "looks like a file path"),
])
def test_path_traversal_in_the_list_is_refused(env, pool, identifier, title, selector, field, phrase):
    url = env.publish("trav.list", [env.entry("a1.qcow2", identifier, title=title)])
    failed(run_module("vo_image", env.args(url, image=selector)), field, phrase)
    assert_nothing_staged(pool)
    assert not os.path.exists("/etc/cron.d/sgimg-evil") and not glob.glob("/var/lib/skygrid-test/*evil*")


def test_path_traversal_in_vo_or_version_is_refused(env, pool):
    url = env.publish("v.list", [env.entry("a1.qcow2", "img-a", version="../../x")])
    failed(run_module("vo_image", env.args(url, image="img-a")), "image", "image version")
    failed(run_module("vo_image", env.args(url, vo="../atlas", image="img-a")), "vo", "could escape")
    assert_nothing_staged(pool)


def test_a_network_list_cannot_point_at_host_files(env, pool):
    hostname = "/etc/hostname"
    entry = image_entry("img-host", "file://" + hostname, hostname, fmt=None)
    url = env.publish("host.list", [entry])
    failed(run_module("vo_image", env.args(url, image="img-host")), "image", "points at a file on this host")
    assert_nothing_staged(pool)


def test_image_larger_than_declared_is_refused(env, pool):
    declared = os.path.getsize(env.files["a1.qcow2"]) - 1
    url = env.publish("big.list", [env.entry("a1.qcow2", "img-a", size=declared)])
    failed(run_module("vo_image", env.args(url, image="img-a")), "image", "larger than the %d bytes" % declared)
    assert_nothing_staged(pool)
    env.server.set_mode("a1.qcow2", "nolength")  # no Content-Length: cut off while streaming
    try:
        failed(run_module("vo_image", env.args(url, image="img-a")), "image", "sends more than the %d bytes" % declared)
    finally:
        env.server.set_mode("a1.qcow2", "normal")
    assert_nothing_staged(pool)


def test_cut_off_download_is_resumed_by_the_next_run(env, pool):
    url = env.publish("cut.list", [env.entry("c.qcow2", "img-c")])
    env.server.set_mode("c.qcow2", "cut")
    try:
        cut = run_module("vo_image", env.args(url, image="img-c"))
    finally:
        env.server.set_mode("c.qcow2", "normal")
    failed(cut, "image", "next run resumes it")
    assert_nothing_staged(pool, "atlas+img-c+1.qcow2", partial_kept=True)
    kept = os.path.getsize(glob.glob(os.path.join(STAGING, "*.part"))[0])
    assert 0 < kept <= os.path.getsize(env.files["c.qcow2"]) // 2
    staged = ok(run_module("vo_image", env.args(url, image="img-c")))
    assert staged["changed"] and volumes(pool) == ["atlas+img-c+1.qcow2"]
    assert [request["range"] for request in env.server.requests if request["path"] == "/c.qcow2"][-1] == "bytes=%d-" % kept
    assert sha512_of(os.path.join(POOL_DIR, "atlas+img-c+1.qcow2")) == sha512_of(env.files["c.qcow2"])
    assert glob.glob(os.path.join(STAGING, "*")) == []


def test_a_volume_not_staged_here_is_never_taken_over(env, pool):
    pool.createXML("<volume><name>atlas+img-a+1.qcow2</name><capacity>1048576</capacity>"
                   "<target><format type='qcow2'/></target></volume>", 0)
    url = env.publish("f.list", [env.entry("a1.qcow2", "img-a")])
    failed(run_module("vo_image", env.args(url, image="img-a")), "image", "without a provenance record")
    assert os.path.getsize(os.path.join(POOL_DIR, "atlas+img-a+1.qcow2")) < MIB  # untouched


def test_a_volume_recorded_for_another_vo_is_never_replaced(env, pool):
    """Under the old names ('-' joined parts holding '-') VO atlas-prod's image 'worker' 4.8 and VO atlas's
    'prod-worker' 4.8 shared a volume; a record for another VO under the name is refused, never replaced."""
    url = env.publish("v.list", [env.entry("a1.qcow2", "img-a")])
    staged = ok(run_module("vo_image", env.args(url, image="img-a")))["image"]
    record_path = os.path.join(PROVENANCE, staged["volume"] + ".provenance.json")
    with open(record_path) as handle:
        record = json.load(handle)
    record["vo"] = "atlas-prod"
    with open(record_path, "w") as handle:
        json.dump(record, handle)
    before = tree()
    env.publish("v.list", [env.entry("a2.qcow2", "img-a")])  # new bytes under the same version
    failed(run_module("vo_image", env.args(url, image="img-a")), "image", "is recorded for VO atlas-prod",
           "never replaced")
    assert tree() == before


def test_an_image_staged_under_an_old_name_stays_in_use(env, pool):
    """After an upgrade, an image the previous release staged as <vo>-<id>-<version>.qcow2 (VMs have overlays
    on it) is that image: not staged again, not pruned while the list holds it."""
    url = env.publish("o.list", [env.entry("a1.qcow2", "img-a")])
    staged = ok(run_module("vo_image", env.args(url, image="img-a")))["image"]
    old = "atlas-img-a-1.qcow2"  # the name the previous release gave it
    os.rename(staged["path"], os.path.join(POOL_DIR, old))
    record_path = os.path.join(PROVENANCE, staged["volume"] + ".provenance.json")
    with open(record_path) as handle:
        record = json.load(handle)
    os.unlink(record_path)
    record.update(volume=old, path=os.path.join(POOL_DIR, old))
    with open(os.path.join(PROVENANCE, old + ".provenance.json"), "w") as handle:
        json.dump(record, handle)
    pool.refresh(0)
    result = ok(run_module("vo_image", env.args(url, image="img-a", prune=True)))
    assert result["changed"] is False and result["pruned"] == []
    assert result["image"]["volume"] == old and volumes(pool) == [old]
    # The VO publishes a new version: it gets the new name, and the old one is pruned once unused.
    env.publish("o.list", [env.entry("a2.qcow2", "img-a", version="2")])
    result = ok(run_module("vo_image", env.args(url, image="img-a", prune=True)))
    assert result["image"]["volume"] == "atlas+img-a+2.qcow2" and result["pruned"] == [old]


def test_a_staged_volume_changed_on_disk_is_reported(env, pool):
    url = env.publish("m.list", [env.entry("a1.qcow2", "img-a")])
    path = ok(run_module("vo_image", env.args(url, image="img-a")))["image"]["path"]
    os.chmod(path, 0o644)
    failed(run_module("vo_image", env.args(url, image="img-a")), "image", "changed since it was staged",
           "it is writable")


def read_record(volume):
    with open(os.path.join(PROVENANCE, volume + ".provenance.json")) as handle:
        return json.load(handle)


def rewrite_last_byte(path):
    """What a local intruder with write access does: change bytes, then put the mode back."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 0xFF]))
    os.chmod(path, 0o444)


def test_a_touched_volume_is_rehashed_once_and_its_new_mtime_recorded(env, pool):
    url = env.publish("t.list", [env.entry("a1.qcow2", "img-a")])
    staged = ok(run_module("vo_image", env.args(url, image="img-a")))["image"]
    record = read_record(staged["volume"])
    assert record["volume_sha512"] == record["sha512"] == sha512_of(staged["path"])  # a qcow2 is published as is
    assert record["volume_mtime_ns"] == os.stat(staged["path"]).st_mtime_ns
    os.utime(staged["path"], ns=(record["volume_mtime_ns"] + 10**9, record["volume_mtime_ns"] + 10**9))
    again = ok(run_module("vo_image", env.args(url, image="img-a")))
    assert again["changed"] is False
    assert read_record(staged["volume"])["volume_mtime_ns"] == record["volume_mtime_ns"] + 10**9


def test_bytes_changed_under_a_read_only_volume_refuse_converge_verify_and_vm_start(env, pool, lv):
    url = env.publish("v.list", [env.entry("a1.qcow2", "img-a"), env.entry("b.raw", "img-b")])
    images = ok(run_module("vo_image", env.args(url, images=[{"image": "img-a"}, {"image": "img-b"}])))["images"]
    converted = read_record(images[1]["volume"])
    assert converted["converted"] and converted["volume_sha512"] == sha512_of(images[1]["path"]) != converted["sha512"]
    checked = ok(run_module("vo_image", env.args(state="verify")))
    assert checked["changed"] is False
    assert sorted((item["volume"], item["status"]) for item in checked["verified"]) == \
        sorted((image["volume"], "ok") for image in images)
    target = images[0]
    rewrite_last_byte(target["path"])
    assert os.path.getsize(target["path"]) == read_record(target["volume"])["volume_bytes"]  # only the bytes moved
    failed(run_module("vo_image", env.args(url, image="img-a")), "image", "changed since it was staged",
           "its sha512 is")
    refused = failed(run_module("vo_image", env.args(state="verify")), "state", target["volume"], "stage them again")
    statuses = {item["volume"]: item["status"] for item in refused["verified"]}
    assert statuses == {target["volume"]: "changed", images[1]["volume"]: "ok"}
    vm = {"uri": URI, "name": VM, "state": "running", "virt_type": "qemu", "memory_mb": 64,
          "disks": [{"pool": POOL, "base_volume": target["volume"]}]}
    failed(run_module("vm", vm), "disks[0].base_volume", "changed since it was staged", target["path"])
    domain = lv.lookupByName(VM)
    assert not domain.isActive()  # defined, never started on the changed bytes
    ok(run_module("vm", dict(vm, state="absent")))
    failed(run_module("vo_image", env.args(state="verify", image="no-such")), "image", "nothing to verify")
    os.unlink(target["path"])
    pool.refresh(0)
    missing = failed(run_module("vo_image", env.args(state="verify", image="img-a")), "state", "is gone")
    assert missing["verified"][0]["status"] == "missing"


# ---------------------------------------------------------------- absent

def test_absent_is_refused_while_a_vm_uses_the_image(env, pool, lv):
    url = env.publish("u.list", [env.entry("a1.qcow2", "img-a")])
    volume = ok(run_module("vo_image", env.args(url, image="img-a")))["image"]["volume"]
    vm = {"uri": URI, "name": VM, "state": "present", "virt_type": "qemu", "memory_mb": 64,
          "disks": [{"pool": POOL, "base_volume": volume}],
          "metadata": {"vo": VO, "trust_class": 2, "image_id": "img-a", "image_sha512": sha512_of(env.files["a1.qcow2"])}}
    ok(run_module("vm", vm))
    refused = run_module("vo_image", env.args(image="img-a", state="absent"))
    failed(refused, "image", "in use by", "VM %s" % VM)
    assert "VM %s" % VM in refused["in_use"][volume]
    assert volume in volumes(pool)
    # prune keeps it too, and says why
    empty = env.publish("empty.list", [])
    pruned = ok(run_module("vo_image", env.args(empty, prune=True)))
    assert pruned["pruned"] == [] and pruned["kept"][0]["volume"] == volume and "VM %s" % VM in pruned["kept"][0]["users"]
    ok(run_module("vm", dict(vm, state="absent")))
    planned = ok(run_module("vo_image", env.args(image="img-a", state="absent"), check=True, diff=True))
    assert planned["removed"] == [volume] and planned["diff"]["after"] == {} and volume in volumes(pool)
    removed = ok(run_module("vo_image", env.args(image="img-a", state="absent")))
    assert removed["changed"] and removed["removed"] == [volume]
    assert volumes(pool) == [] and glob.glob(os.path.join(PROVENANCE, "*")) == []
    assert log_events(env)[-1]["event"] == "removed"
    assert ok(run_module("vo_image", env.args(image="img-a", state="absent")))["changed"] is False


def test_argument_errors_name_the_option(env):
    failed(run_module("vo_image", env.args(state="absent")), "image", "name the staged image")
    failed(run_module("vo_image", env.args(state="absent", image="x", prune=True)), "prune", "goes with state present")
    failed(run_module("vo_image", env.args(version="1")), "version", "goes with 'image'")
    failed(run_module("vo_image", env.args(image="x", pool="sgimg-no-such-pool")), "list_url", "is required")
    result = run_module("vo_image", env.args(trust_class=1, image="x", image_url="file:///etc/hostname",
                                             sha512="00" * 64, size=10, pool="sgimg-no-such-pool"))
    failed(result, "pool", "does not exist")


def test_several_vos_in_one_call_and_a_failing_one_does_not_stop_the_others(env, pool):
    good = env.publish("vos-good.list", [env.entry("a1.qcow2", "img-a", title="Worker", version="1")])
    forged = env.publish("vos-forged.list", [env.entry("a2.qcow2", "img-f", version="1")], signer=env.pki.rogue)
    site = {"vo": "ops", "trust_class": 1, "images": [{
        "image": "site-img", "image_url": env.url("a2.qcow2"), "sha512": sha512_of(env.files["a2.qcow2"]),
        "size": os.path.getsize(env.files["a2.qcow2"])}]}
    atlas = {"vo": "atlas", "list_url": good, "endorsers": env.pki.endorsers(), "images": [{"image": "Worker"}]}
    lhcb = {"vo": "lhcb", "list_url": forged, "endorsers": env.pki.endorsers(), "images": [{"image": "img-f"}]}
    args = env.args(vos=[atlas, lhcb, site])
    del args["vo"], args["endorsers"]
    result = run_module("vo_image", args)
    # lhcb's list is signed by someone else: lhcb fails, named with its item; atlas and ops are staged anyway.
    failed(result, "vos", "staging failed for lhcb", "vos[1] (lhcb).endorsers")
    assert sorted(result["vos"]) == ["atlas", "ops"] and list(result["failed_vos"]) == ["lhcb"]
    assert volumes(pool) == ["atlas+img-a+1.qcow2", "ops+site-img.qcow2"]
    again = ok(run_module("vo_image", dict(args, vos=[atlas, site])))
    assert not again["changed"] and again["failed_vos"] == {}
    assert [image["volume"] for image in again["vos"]["atlas"]["images"]] == ["atlas+img-a+1.qcow2"]
    # A VO's options go in its item; a VO named twice is a mistake.
    failed(run_module("vo_image", dict(args, vos=[atlas], prune=True)), "prune", "goes in each item of 'vos'")
    failed(run_module("vo_image", dict(args, vos=[site, site])), "vos[1].vo", "names VO ops twice")
    failed(run_module("vo_image", dict(args, vos=[site], state="verify")), "vos", "state present")


# ---------------------------------------------------------------- the role, through the playbook

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def playbook(inventory, *extra):
    """Run playbooks/stage_vo_images.yml against this host; returns (changed count, output)."""
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, "collections"), ANSIBLE_STDOUT_CALLBACK="default",
               ANSIBLE_NOCOLOR="1")
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", inventory,
                           os.path.join(ROOT, "playbooks", "stage_vo_images.yml")] + list(extra),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:]
    recap = re.search(r"^localhost\s+:\s+ok=\d+\s+changed=(\d+)", proc.stdout, re.M)
    assert recap, proc.stdout[-2000:]
    return int(recap.group(1)), proc.stdout


def test_role_stages_prunes_and_is_idempotent(env, pool, tmp_path):
    list_url = env.publish("role.list", [env.entry("a1.qcow2", "img-a", title="Worker", version="1"),
                                         env.entry("b.raw", "img-b", title="Other")])
    inventory = {"all": {"children": {"hypervisors": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}, "vars": {
        "fabric_image_pool": POOL, "fabric_libvirt_uri": URI, "fabric_ca_path": env.pki.ca_path,
        "vo_images_provenance_log": env.log, "fabric_image_lists_allow_http": True,
        "fabric_vos": {
            "atlas": {"trust_class": 2, "image_list_url": list_url, "endorsers": env.pki.endorsers(),
                      "images": [{"image": "Worker"}, {"image": "img-b"}], "vm_memory_mb": 2048},
            "ops": {"trust_class": 1, "images": [{
                "image": "site-img", "image_url": env.url("a2.qcow2"), "sha512": sha512_of(env.files["a2.qcow2"]),
                "size": os.path.getsize(env.files["a2.qcow2"])}]},
        }}}}
    path = str(tmp_path / "hosts.yml")
    with open(path, "w") as handle:
        json.dump(inventory, handle)  # JSON is YAML
    before = tree()
    changed, output = playbook(path, "--check", "--diff")
    assert changed == 1 and tree() == before and volumes(pool) == [], output  # one task, two VOs
    changed, output = playbook(path)
    assert changed == 1 and volumes(pool) == ["atlas+img-a+1.qcow2", "atlas+img-b+1.qcow2", "ops+site-img.qcow2"]
    changed, output = playbook(path)
    assert changed == 0, output
    # The VO withdraws img-b: the next run prunes it and leaves the rest alone.
    env.publish("role.list", [env.entry("a1.qcow2", "img-a", title="Worker", version="1")])
    inventory["all"]["vars"]["fabric_vos"]["atlas"]["images"] = [{"image": "Worker"}]
    with open(path, "w") as handle:
        json.dump(inventory, handle)
    changed, output = playbook(path)
    assert changed == 1 and volumes(pool) == ["atlas+img-a+1.qcow2", "ops+site-img.qcow2"], output
    assert [event["event"] for event in log_events(env)] == ["staged", "staged", "staged", "pruned"]
