# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Live migration of a running VM to another hypervisor, copying its non-shared storage.

A VM's own volumes (overlays, seed) are in pools that both hosts name alike. Where the destination
already has a volume of that name, storage counts as shared; otherwise the overlay is created there on
the same base image (which must be staged on both hosts), its blocks are copied during the migration,
the read-only seed is copied ahead over a libvirt stream, and the source's copies are deleted after.
"""

from __future__ import annotations

import contextlib
import threading
import time
import xml.etree.ElementTree as ET

from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt import storage
from ansible_collections.skygrid.fabric.plugins.module_utils.vm import spec as vm_spec
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.connection import libvirt, lookup

COPY_MODES = ("auto", "always", "never")


def migrate_over_tls(dst_uri, migrate_tls=None):
    """Whether the migration stream itself (the VM's RAM, with its keys and proxies) goes through QEMU's
    TLS: as asked, or, left unset, whenever the destination is reached over TLS (``qemu+tls://``) - a
    TLS control connection alone would still send the RAM in clear."""
    if migrate_tls is not None:
        return bool(migrate_tls)
    scheme = (dst_uri or "").split(":", 1)[0]
    return scheme.endswith("+tls")


def _copy_stream(src_conn, src_vol, dst_conn, dst_pool, name):
    """Copy a (small, raw) volume between hosts through libvirt streams."""
    size = src_vol.info()[1]
    stream = src_conn.newStream(0)
    src_vol.download(stream, 0, size, 0)
    chunks = []
    while True:
        chunk = stream.recv(1024 * 1024)
        if not chunk:
            break
        chunks.append(chunk)
    stream.finish()
    storage.upload(dst_conn, dst_pool, name, b"".join(chunks), "migrate_to")


class Migration:
    def __init__(self, src_conn, dst_conn, dst_uri, params, reconciler):
        self.src_conn, self.dst_conn, self.dst_uri = src_conn, dst_conn, dst_uri
        self.params = params
        self.reconciler = reconciler
        self.copy_mode = params.get("migrate_copy_storage") or "auto"

    def run(self, name):
        """Ensure VM ``name`` runs on the destination. Returns the result dict."""
        result = {"name": name, "migrated": False, "destination": self.dst_uri}
        there = lookup(self.dst_conn.lookupByName, name)
        here = lookup(self.src_conn.lookupByName, name)
        if there is not None and there.isActive() and (here is None or not here.isActive()):
            result["already_there"] = True
            return result
        if here is None:
            raise FabricError("VM %s runs neither here nor on %s" % (name, self.dst_uri), field="name")
        if not here.isActive():
            raise FabricError("VM %s is not running; live migration moves running VMs (start it, or "
                              "define it on the destination instead)" % name, field="migrate_to")
        if there is not None:
            raise FabricError("a VM named %s is already defined on %s; remove it there first" % (name, self.dst_uri),
                              field="migrate_to")
        spec = self._running_spec(here)
        copy_targets, precreate, seed_copy = self._storage_plan(spec)
        for disk, backing, capacity in precreate:
            dst_pool = self._dst_pool(disk["pool"])
            self.reconciler.act("create volume %s/%s at the destination" % (disk["pool"], disk["volume"]),
                                storage.create_qcow2, dst_pool, disk["volume"], capacity, backing, "migrate_to")
        if seed_copy:
            pool_name, volume = seed_copy
            src_vol = storage.volume(self.src_conn.storagePoolLookupByName(pool_name), volume)
            self.reconciler.act("copy seed %s/%s to the destination" % (pool_name, volume),
                                _copy_stream, self.src_conn, src_vol, self.dst_conn, self._dst_pool(pool_name), volume)
        verb = "live-migrate VM %s to %s" % (name, self.dst_uri)
        if copy_targets:
            verb += " copying %s" % ", ".join(copy_targets)
        started = time.monotonic()
        try:
            self.reconciler.act(verb, self._migrate, here, spec, copy_targets)
        except FabricError:
            self._remove_destination_copies(precreate, seed_copy)
            raise
        result["seconds"] = round(time.monotonic() - started, 2)
        result["migrated"] = True
        result["copied_disks"] = copy_targets
        if copy_targets or seed_copy:
            self._remove_source_copies(spec, copy_targets, seed_copy)
        return result

    @staticmethod
    def _running_spec(dom):
        """The running VM's disks (what must move), named by pool/volume: a running domain names a
        disk by its file after an earlier migration, its definition still by pool/volume."""
        spec = vm_spec.from_xml(dom.XMLDesc(0))
        defined = {disk["target"]: disk for disk in vm_spec.from_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))["disks"]}
        disks = []
        for disk in spec["disks"]:
            record = defined.get(disk["target"])
            if disk["pool"] is None and record is not None and record["pool"]:
                disk = dict(record, readonly=disk["readonly"])
            disks.append(disk)
        spec["disks"] = disks
        return spec

    def _dst_pool(self, name):
        return storage.pool_by_name(self.dst_conn, name, "migrate_to")

    def _storage_plan(self, spec):
        copy_targets, precreate = [], []
        for disk in spec["disks"]:
            if not disk["pool"]:
                continue  # a file disk defined outside this collection: must be shared
            dst_pool = self._dst_pool(disk["pool"])
            exists = storage.volume(dst_pool, disk["volume"]) is not None
            if self.copy_mode == "never" or (self.copy_mode == "auto" and exists) or disk["readonly"]:
                if not exists:
                    raise FabricError("volume %s/%s is missing on %s and migrate_copy_storage is never"
                                      % (disk["pool"], disk["volume"], self.dst_uri), field="migrate_copy_storage")
                continue
            if not disk["owned"]:
                raise FabricError("volume %s/%s is not the VM's own and is missing on %s; share the pool or "
                                  "copy it there first" % (disk["pool"], disk["volume"], self.dst_uri), field="migrate_to")
            if exists:
                raise FabricError("volume %s/%s already exists on %s; with migrate_copy_storage always it "
                                  "would be overwritten — delete it there first" % (disk["pool"], disk["volume"], self.dst_uri),
                                  field="migrate_copy_storage")
            src_vol = storage.volume(self.src_conn.storagePoolLookupByName(disk["pool"]), disk["volume"])
            capacity = storage.volume_info(src_vol)[2]
            if disk["base_volume"]:
                base = storage.volume(dst_pool, disk["base_volume"])
                if base is None:
                    raise FabricError("the base image %s is not staged in pool %s on %s; stage it there first "
                                      "(skygrid.fabric.vo_image)" % (disk["base_volume"], disk["pool"], self.dst_uri),
                                      field="migrate_to")
                base_path, base_format, _capacity = storage.volume_info(base)
                precreate.append((disk, (base_path, base_format), capacity))
            else:
                precreate.append((disk, None, capacity))
            copy_targets.append(disk["target"])
        seed_copy = None
        if spec["seed"]:
            dst_pool = self._dst_pool(spec["seed"]["pool"])
            if storage.volume(dst_pool, spec["seed"]["volume"]) is None:
                seed_copy = (spec["seed"]["pool"], spec["seed"]["volume"])
        return copy_targets, precreate, seed_copy

    def _migrate(self, dom, spec, copy_targets):
        flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST
                 | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE | libvirt.VIR_MIGRATE_ABORT_ON_ERROR)
        if migrate_over_tls(self.dst_uri, self.params.get("migrate_tls")):
            flags |= libvirt.VIR_MIGRATE_TLS
        params = {libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)}
        if copy_targets:
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
            params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = copy_targets
            params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = self._destination_xml(dom, spec, copy_targets)
        if self.params.get("migrate_uri"):
            params[libvirt.VIR_MIGRATE_PARAM_URI] = self.params["migrate_uri"]
        timeout = int(self.params.get("migrate_timeout") or 600)
        outcome = {}

        def work():
            try:
                dom.migrate3(self.dst_conn, params, flags)
            except libvirt.libvirtError as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            with contextlib.suppress(libvirt.libvirtError):
                dom.abortJob()
            worker.join(60)
            raise FabricError("live migration of %s to %s did not finish within %ds and was aborted; the VM "
                              "still runs on the source. Raise migrate_timeout, or migrate when the guest "
                              "writes less memory" % (dom.name(), self.dst_uri, timeout), field="migrate_timeout")
        if "error" in outcome:
            exc = outcome["error"]
            message = exc.get_error_message()
            hint = ""
            if exc.get_error_code() == libvirt.VIR_ERR_CPU_INCOMPATIBLE or "CPU" in message:
                hint = (" The destination cannot provide this VM's CPU: give the VMs a CPU model both hosts "
                        "support (cpu_mode), or pick another host.")
            raise FabricError("live migration of %s to %s failed: %s.%s The VM still runs on the source."
                              % (dom.name(), self.dst_uri, message, hint), field="migrate_to")

    def _destination_xml(self, dom, spec, copy_targets):
        """The running VM's XML with each copied disk pointing at the destination's file.

        libvirt (up to at least 9.x) refuses an incremental storage copy of a pool/volume disk: it
        checks that the target exists before it resolves the volume. Naming the destination file
        avoids that; the persistent definition (PERSIST_XML) keeps the pool/volume form.
        """
        root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE))
        volumes = {disk["target"]: disk for disk in spec["disks"]}
        for disk in root.findall("devices/disk"):
            target = disk.find("target").get("dev")
            if target not in copy_targets:
                continue
            record = volumes[target]
            path = storage.volume(self._dst_pool(record["pool"]), record["volume"]).path()
            disk.set("type", "file")
            for child in list(disk):
                if child.tag in ("source", "backingStore"):
                    disk.remove(child)
            source = ET.Element("source", file=path)
            disk.insert(1, source)
        return ET.tostring(root, encoding="unicode")

    def _remove_destination_copies(self, precreate, seed_copy):
        """After a failed migration: what was created at the destination for it goes again."""
        made = [(disk["pool"], disk["volume"]) for disk, _backing, _capacity in precreate]
        if seed_copy:
            made.append(seed_copy)
        for pool_name, volume in made:
            pool = lookup(self.dst_conn.storagePoolLookupByName, pool_name)
            vol = storage.volume(pool, volume) if pool is not None else None
            if vol is not None:
                with contextlib.suppress(FabricError):
                    storage.delete(vol)

    def _remove_source_copies(self, spec, copy_targets, seed_copy):
        stale = [(d["pool"], d["volume"]) for d in spec["disks"] if d["target"] in copy_targets]
        if seed_copy:
            stale.append(seed_copy)
        for pool_name, volume in stale:
            pool = lookup(self.src_conn.storagePoolLookupByName, pool_name)
            vol = storage.volume(pool, volume) if pool is not None else None
            if vol is not None:
                self.reconciler.act("delete the source's copy of %s/%s" % (pool_name, volume), storage.delete, vol)
