# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Staging VO images into a libvirt directory pool, so that a volume either is the endorsed image
or is not there at all.

The pool directory's layout is described in pool_store.py.

Staging: stream the image (HTTP Range resumes an interrupted download) into the partial file with
a size cap and sha512 computed on the way; ``qemu-img info`` detects the format (only qcow2 and
raw; a qcow2 naming a backing or data file is refused); raw is converted to qcow2; the result is
made read-only, synced, its provenance record written, and then renamed under its final name and
the pool refreshed. Publishing by rename rather than a libvirt upload: an upload creates the volume
under its final name before its content is complete and copies the data a second time.

The parts: names.py (volume names, trust), pool_store.py (the pool's files and lock), download.py,
formats.py (qemu-img); here: who uses a volume, and the stager.
"""

from __future__ import annotations

import json
import os
import socket
import xml.etree.ElementTree as ET

from ansible_collections.skygrid.fabric.plugins.module_utils.images import image_list, integrity
from ansible_collections.skygrid.fabric.plugins.module_utils.images.download import LISTED, PINNED, download
from ansible_collections.skygrid.fabric.plugins.module_utils.images.formats import (
    DEFAULT_MAX_VIRTUAL_SIZE, convert_to_qcow2, inspect, qcow2_bytes)
from ansible_collections.skygrid.fabric.plugins.module_utils.images.names import check_title, name_part, normalise_format, normalise_sha512, volume_name
from ansible_collections.skygrid.fabric.plugins.module_utils.images.pool_store import (
    MissingPoolStore, PoolStore, fsync_path, is_no_space, unlink_if_present)
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt import storage
from ansible_collections.skygrid.fabric.plugins.module_utils.vm import spec as vm_spec
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.connection import libvirt, libvirt_errors

SCHEMA = 1


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
    return {key: value for key, value in record.items() if key not in ("staged_at", "host", "volume_mtime_ns")}


class ImageStager:
    """Stages, removes and prunes one VO's images in one pool, recording every change with the Reconciler."""

    def __init__(self, conn, pool_name, vo, reconciler, timeout=60, validate_certs=True, provenance_log=None,
                 clock=image_list.utcnow, max_virtual_size=DEFAULT_MAX_VIRTUAL_SIZE, plan_missing_pool=False):
        self.conn = conn
        self.vo = name_part(vo, "VO name", "vo")
        self.reconciler = reconciler
        self.timeout = timeout
        self.validate_certs = validate_certs
        self.provenance_log = provenance_log
        self.clock = clock
        self.max_virtual_size = max_virtual_size
        # plan_missing_pool (check mode only): a pool not created yet is planned into, not an error.
        self.pool = storage.pool_by_name(conn, pool_name, "pool", missing_ok=plan_missing_pool)
        self.store = PoolStore(self.pool) if self.pool is not None else MissingPoolStore(pool_name)
        self.host = socket.gethostname()

    def _volume(self, name):
        return storage.volume(self.pool, name) if self.pool is not None else None

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
            "volume_sha512": None,
            "volume_mtime_ns": None,
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

    # ------------------------------------------------------------ replays

    def check_list(self, verified, field="list_url"):
        """Refuse a list older than the newest of its identifier this pool accepted for the VO."""
        seen = self.store.accepted_lists(self.vo).get(verified["identifier"])
        image_list.check_not_replayed(verified, seen, self.store.lists_path(self.vo), field)

    def remember_list(self, verified):
        """Record ``verified`` as the newest list of its identifier (bookkeeping: not a change of the pool)."""
        self.store.remember_list(self.vo, verified["identifier"], image_list.accepted_entry(verified))

    # ------------------------------------------------------------ present

    def ensure(self, item):
        """Stage one item unless its volume is already the same image. Returns the item's result."""
        field = item["field"]
        vol = self._volume(item["volume"])
        if vol is None:  # staged by an earlier release under a name of the old scheme? Then that one is it.
            legacy = self._legacy_volume(item)
            if legacy is not None:
                item = dict(item, volume=legacy)
                vol = self._volume(legacy)
        volume = item["volume"]
        record = self.store.read_record(volume)
        path = self.store.volume_path(volume)
        result = {"image_id": item["image_id"], "title": item["title"], "version": item["version"],
                  "volume": volume, "pool": self.store.name, "path": path, "sha512": item["sha512"],
                  "trust_class": item["trust_class"], "changed": False}
        if vol is not None and record is None:
            raise FabricError("volume '%s' exists in pool '%s' without a provenance record: it was not staged by "
                              "skygrid.fabric.vo_image, so it cannot be trusted as image %s. Remove or rename it"
                              % (volume, self.store.name, item["image_id"]), field=field)
        if vol is not None and (record.get("vo"), record.get("image_id")) != (self.vo, item["image_id"]):
            raise FabricError("volume '%s' in pool '%s' is recorded for VO %s image %s, not VO %s image %s; it is never "
                              "replaced by another VO's or another image's (a name made before names were "
                              "unambiguous?). Remove it (vo_image state: absent for its VO) once no VM uses it"
                              % (volume, self.store.name, record.get("vo"), record.get("image_id"), self.vo,
                                 item["image_id"]), field=field)
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
        self._check_download_fits(item)  # in check mode too: it says the run would fail
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
        """The staged file is still read-only and the bytes its record vouches for (re-hashed when its size or
        mtime moved); a re-hash that matches records the file's new mtime, so the next run need not hash."""
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise FabricError("cannot read staged volume %s: %s" % (path, exc.strerror), field=field)
        if mode & 0o222:
            integrity.refuse_changed(path, "it is writable (mode %04o)" % (mode & 0o7777), field)
        fresh = integrity.require_unchanged(path, record, field, self.store.warnings.append)
        if fresh:
            self._refresh_record(record, fresh)

    def _refresh_record(self, record, fresh):
        """Record a verified file's new mtime: bookkeeping, not a change of the pool, so a full filesystem only
        costs the next run a re-hash (the images already staged stay usable)."""
        if self.reconciler.check_mode:
            return
        record.update(fresh)
        try:
            self.store.write_record(record)
        except OSError as exc:
            if not is_no_space(exc):
                raise
            self.store.warnings.append("could not record that %s was verified: the filesystem of pool '%s' is full "
                                       "(%s); the next run hashes it again"
                                       % (record["volume"], self.store.name, exc.strerror))

    def verify(self, records, field="state"):
        """Re-hash each record's file whatever its mtime. Returns one ``{volume, status, detail}`` per
        record; raises naming every volume that changed or is missing (nothing is removed: the site decides)."""
        results, bad = [], []
        for record in records:
            path = self.store.volume_path(record["volume"])
            status, detail, fresh = integrity.check(path, record, force=True)
            if fresh:  # only an OK re-hash gives one
                self._refresh_record(record, fresh)
            results.append({"volume": record["volume"], "status": status, "detail": detail})
            if status in (integrity.CHANGED, integrity.MISSING):
                bad.append("%s (%s)" % (record["volume"], detail))
        if bad:
            raise FabricError("%d staged image(s) of VO %s in pool %s are not what was staged: %s. Stop their VMs, "
                              "remove them (state: absent) and stage them again"
                              % (len(bad), self.vo, self.store.name, "; ".join(bad)), field=field, verified=results)
        return results

    def _check_download_fits(self, item):
        """Fail before downloading an image the pool's filesystem clearly cannot hold (its declared size,
        less what an interrupted download already wrote)."""
        partial = self.store.partial_path(item["volume"], item["sha512"])
        done = os.path.getsize(partial) if partial and os.path.isfile(partial) else 0
        self.store.check_space(max(item["size"] - done, 0), "image %s version %s (%d bytes declared%s)" % (
            item["image_id"], item["version"], item["size"], ", %d already downloaded" % done if done else ""))

    def _stage(self, item):
        store = self.store
        store.ensure_dirs()
        for stale in store.partials(item["volume"]):  # left by an earlier version of this image
            if stale != store.partial_path(item["volume"], item["sha512"]):
                unlink_if_present(stale)
        partial = store.partial_path(item["volume"], item["sha512"])
        converted = os.path.join(store.staging, item["volume"] + ".tmp")
        try:
            download(item["uri"], partial, item["size"], item["sha512"], item["field"], self.timeout,
                     self.validate_certs, declared=LISTED if item["list"] else PINNED)
        except OSError as exc:  # only a full filesystem (download removed the partial); other errors are FabricErrors
            if is_no_space(exc):
                raise store.no_space(exc, "downloading image %s from %s" % (item["image_id"], item["uri"]),
                                     item["size"]) from exc
            raise
        try:
            found = inspect(partial, item["format"], item["uri"], item["field"], self.max_virtual_size)
            ready = partial
            if found["format"] == "raw":
                store.check_space(qcow2_bytes(partial, item["uri"], item["field"]),
                                  "converting raw image %s to qcow2" % item["image_id"],
                                  "The downloaded raw image was removed and nothing was published")
                convert_to_qcow2(partial, converted, item["uri"], item["field"])
                unlink_if_present(partial)  # before the fsync below: its unwritten pages are dropped, not written
                ready = converted
            os.chmod(ready, 0o444)
            fsync_path(ready)
            record = self.record_for(item, found["format"], os.path.getsize(ready))
            record["staged_at"] = image_list.format_time(self.clock())
            # What VM starts and verify runs compare the published file with (images/integrity.py).
            record["volume_sha512"] = integrity.file_sha512(ready) if ready == converted else item["sha512"]
            record.update(integrity.fingerprint(ready))
            final = store.volume_path(item["volume"])
            if os.path.exists(final):
                self._replace(ready, final, record, item)
            else:  # a volume never exists without its record
                store.write_record(record)
                os.rename(ready, final)
                fsync_path(store.path)
        except Exception as exc:
            unlink_if_present(converted)
            unlink_if_present(partial)
            if is_no_space(exc):
                raise store.no_space(exc, "publishing image %s" % item["image_id"]) from exc
            raise
        unlink_if_present(partial)
        with libvirt_errors("refreshing storage pool '%s'" % store.name, "pool"):
            self.pool.refresh(0)
        if storage.volume(self.pool, item["volume"]) is None:
            raise FabricError("published %s, but libvirt does not list it in pool '%s' after a refresh"
                              % (item["volume"], store.name), field="pool")
        self.log("staged", record)
        return record

    def _replace(self, ready, final, record, item):
        """Rename the new bytes over a staged volume, checking it is unused at that moment: the download took
        a while, and a VM may have started on the old bytes meanwhile (no overlay is made while we hold this)."""
        with self.store.volume_use():
            users = users_of(self.conn, self.store, item["volume"])
            if users:
                raise FabricError("volume '%s' came into use by %s while its new bytes were downloaded; it is not "
                                  "replaced. Stop those VMs and run again" % (item["volume"], ", ".join(users)),
                                  field=item["field"])
            os.rename(ready, final)
            fsync_path(self.store.path)
            self.store.write_record(record)  # after the rename: a record never vouches for bytes not in place

    # ------------------------------------------------------------ absent and prune

    def vo_records(self):
        return [record for record in self.store.records() if record.get("vo") == self.vo]

    def matching_records(self, selectors):
        """Records of this VO matching any ``{"image", "version"}`` (identifier or title)."""
        found = []
        for record in self.vo_records():
            for selector in selectors:
                if selector["image"] in (record.get("image_id"), record.get("image_title")) and \
                        selector.get("version") in (None, record.get("image_version")):
                    found.append(record)
                    break
        return found

    def remove(self, records, event="removed", field="image"):
        """Remove the volumes of ``records``; refuses (removing nothing) when any is in use. No overlay is
        created on them between the check and the removal (the volume-use lock)."""
        if not records:
            return []
        with self.store.volume_use():
            return self._remove_unused(records, event, field)

    def _remove_unused(self, records, event, field):
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
            unlink_if_present(partial)
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

    def _legacy_volume(self, item):
        """The volume an earlier release staged this very image under (``<vo>-<id>[-<version>].qcow2``): its
        record names this VO, image, version and sha512. It stays in use (VMs have overlays on it) until the
        image leaves the list and is pruned; new images get the unambiguous names."""
        legacy = "-".join(part for part in (self.vo, item["image_id"], item["version"]) if part) + ".qcow2"
        record = self.store.read_record(legacy)
        if record and self._same_image(record, item) and self._volume(legacy) is not None:
            return legacy
        return None

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
