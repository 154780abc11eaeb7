# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt storage pools (dir, logical) as a declarative spec and an ObjectKind."""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET

from ansible_collections.skygrid.fabric.plugins.module_utils.vm import spec as vm_spec
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.connection import libvirt, lookup
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.objects import ObjectKind

POOL_TYPES = ("dir", "logical")

# Directories no pool may be (a pool is listed as volumes, and purge empties it).
SYSTEM_DIRS = frozenset(("/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc", "/root",
                         "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/usr/bin", "/usr/lib", "/usr/local",
                         "/usr/sbin", "/usr/share", "/var", "/var/lib", "/var/lib/libvirt", "/var/log", "/var/tmp"))


def normalise(params):
    name = params.get("name")
    if not name or not vm_spec.NAME_RE.match(str(name)):
        raise FabricError("%r is not a valid pool name (letters, digits, '-', '_', '.')" % (name,), field="name")
    pool_type = params.get("type") or "dir"
    if pool_type not in POOL_TYPES:
        raise FabricError("must be one of %s" % ", ".join(POOL_TYPES), field="type")
    spec = {"type": pool_type, "path": None, "source_devices": [], "vg_name": None,
            "mode": None, "owner": None, "group": None}
    if pool_type == "dir":
        path = params.get("path")
        if not path or not os.path.isabs(path):
            raise FabricError("is required for a dir pool and must be absolute, got %r" % (path,), field="path")
        if ".." in path.split("/"):
            raise FabricError("%r holds '..': write the pool's directory without '..' (purge empties whatever it "
                              "really names)" % (path,), field="path")
        spec["path"] = os.path.normpath(path)
        if spec["path"] in SYSTEM_DIRS:
            raise FabricError("%s is a system directory; a pool needs a directory of its own, such as "
                              "/var/lib/skygrid/images (purge would empty it)" % spec["path"], field="path")
        if params.get("source_devices"):
            raise FabricError("is only for logical pools", field="source_devices")
    else:
        vg_name = params.get("vg_name") or name
        spec["vg_name"] = vg_name
        spec["path"] = "/dev/" + vg_name
        spec["source_devices"] = sorted(params.get("source_devices") or [])
    mode = params.get("mode")
    if mode is not None:
        try:
            spec["mode"] = "%04o" % int(str(mode), 8)
        except ValueError:
            raise FabricError("'%s' is not an octal mode like 0711" % mode, field="mode")
    for key in ("owner", "group"):
        if params.get(key) is not None:
            spec[key] = str(params[key])
    return spec


def to_xml(name, spec, uuid=None):
    pool = ET.Element("pool", type=spec["type"])
    ET.SubElement(pool, "name").text = name
    if uuid:
        ET.SubElement(pool, "uuid").text = uuid
    if spec["type"] == "logical":
        source = ET.SubElement(pool, "source")
        for device in spec["source_devices"]:
            ET.SubElement(source, "device", path=device)
        ET.SubElement(source, "name").text = spec["vg_name"]
        ET.SubElement(source, "format", type="lvm2")
    target = ET.SubElement(pool, "target")
    ET.SubElement(target, "path").text = spec["path"]
    if any(spec[key] is not None for key in ("mode", "owner", "group")):
        perms = ET.SubElement(target, "permissions")
        for key in ("mode", "owner", "group"):
            if spec[key] is not None:
                ET.SubElement(perms, key).text = spec[key]
    return ET.tostring(pool, encoding="unicode")


def from_xml(xml):
    root = ET.fromstring(xml)
    source = root.find("source")
    perms = root.find("target/permissions")
    spec = {"type": root.get("type"), "path": root.findtext("target/path"), "source_devices": [],
            "vg_name": None, "mode": None, "owner": None, "group": None}
    if spec["type"] == "logical" and source is not None:
        spec["source_devices"] = sorted(dev.get("path") for dev in source.findall("device"))
        spec["vg_name"] = source.findtext("name")
    if perms is not None:
        for key in ("mode", "owner", "group"):
            text = perms.findtext(key)
            if text is not None:
                spec[key] = "%04o" % int(text, 8) if key == "mode" else text
    return spec


def volumes_in_use(conn, pool_name):
    """{volume: [VM names]} for the pool's volumes that domains use (as disks or overlay bases)."""
    used = {}
    for dom in conn.listAllDomains():
        spec = vm_spec.from_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        for disk in spec["disks"]:
            if disk["pool"] == pool_name:
                for volume in filter(None, (disk["volume"], disk["base_volume"])):
                    used.setdefault(volume, []).append(dom.name())
        if spec["seed"] and spec["seed"]["pool"] == pool_name:
            used.setdefault(spec["seed"]["volume"], []).append(dom.name())
    return used


class PoolKind(ObjectKind):
    noun = "storage pool"

    def __init__(self, conn, name, spec=None):
        super().__init__(conn)
        self.name = name
        self.spec = spec

    def lookup(self, name):
        return lookup(self.conn.storagePoolLookupByName, name)

    def define(self, xml):
        return self.conn.storagePoolDefineXML(xml, 0)

    def to_xml(self, spec, uuid=None):
        return to_xml(self.name, spec, uuid=uuid)

    def from_xml(self, xml):
        return from_xml(xml)

    def xml_of(self, obj, inactive):
        return obj.XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE if inactive else 0)

    def adopt_defaults(self, wanted, current):
        for key in ("mode", "owner", "group"):  # not asked for: whatever the pool has is fine
            if wanted[key] is None:
                wanted[key] = current[key]

    def start(self, obj):
        spec = from_xml(obj.XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE))
        if spec["type"] == "dir":
            obj.build(0)  # mkdir -p and the permissions; idempotent
            obj.create(0)
            return
        try:
            obj.create(0)
        except libvirt.libvirtError:
            obj.build(libvirt.VIR_STORAGE_POOL_BUILD_NO_OVERWRITE)  # a new volume group; never overwrites
            obj.create(0)

    def _volume_names(self, obj):
        if obj.isActive():
            obj.refresh(0)
            return sorted(obj.listVolumes())
        spec = from_xml(obj.XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE))
        if spec["type"] == "dir" and os.path.isdir(spec["path"]):
            return sorted(entry for entry in os.listdir(spec["path"])
                          if os.path.isfile(os.path.join(spec["path"], entry)))
        return []

    def check_removable(self, obj, params):
        used = volumes_in_use(self.conn, self.name)
        if used:
            raise FabricError("volumes of storage pool %s are used by VMs (%s); remove those VMs first"
                              % (self.name, ", ".join(sorted({vm for vms in used.values() for vm in vms}))),
                              field="state")
        volumes = self._volume_names(obj)
        if volumes and not params.get("purge"):
            raise FabricError("storage pool %s still holds %d volume(s) (%s); remove them first or set "
                              "purge: true to delete them with the pool"
                              % (self.name, len(volumes), ", ".join(volumes[:5])), field="purge")

    def remove(self, obj, params):
        if params.get("purge"):
            if not obj.isActive():
                self.start(obj)
            for volume in obj.listAllVolumes():
                if volume.info()[0] == libvirt.VIR_STORAGE_VOL_DIR and os.path.isdir(volume.path()):
                    # libvirt only removes empty directories (such as vo_image's .skygrid bookkeeping)
                    shutil.rmtree(volume.path())
                else:
                    volume.delete(0)
            obj.destroy()
            obj.delete(libvirt.VIR_STORAGE_POOL_DELETE_NORMAL)  # removes the (now empty) directory
        obj.undefine()

    def restart_blockers(self, obj):
        used = volumes_in_use(self.conn, self.name)
        running = {dom.name() for dom in self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}
        return sorted("VM %s" % vm for vm in {vm for vms in used.values() for vm in vms} & running)
