# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Storage volumes through libvirt: look-ups with actionable errors, qcow2 overlays, uploads."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ansible_collections.skygrid.fabric.plugins.module_utils import locks
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.connection import (
    libvirt, libvirt_errors, lookup)

GIB = 1024 ** 3
# Volumes this collection creates are readable by their owner only (libvirt hands them to QEMU).
PRIVATE_MODE = "0600"


def pool_by_name(conn, name, field, missing_ok=False):
    """The active pool ``name``; with ``missing_ok``, None when it does not exist (an inactive one is an error)."""
    pool = lookup(conn.storagePoolLookupByName, name)
    if pool is None and missing_ok:
        return None
    if pool is None:
        names = sorted(conn.listStoragePools() + conn.listDefinedStoragePools())
        raise FabricError("storage pool '%s' does not exist (pools: %s); create it with "
                          "skygrid.fabric.libvirt_pool or correct the name" % (name, ", ".join(names) or "none"),
                          field=field)
    if not pool.isActive():
        raise FabricError("storage pool '%s' is not active; start it (skygrid.fabric.libvirt_pool "
                          "state=active)" % name, field=field)
    return pool


def volume(pool, name):
    return lookup(pool.storageVolLookupByName, name)


def volume_info(vol):
    """(path, format, capacity in bytes) of a volume."""
    root = ET.fromstring(vol.XMLDesc(0))
    fmt = root.find("target/format")
    return vol.path(), (fmt.get("type") if fmt is not None else "raw"), int(root.find("capacity").text)


def _volume_xml(name, capacity, backing=None):
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(capacity)
    target = ET.SubElement(vol, "target")
    ET.SubElement(target, "format", type="qcow2")
    perms = ET.SubElement(target, "permissions")
    ET.SubElement(perms, "mode").text = PRIVATE_MODE
    if backing:
        path, fmt = backing
        store = ET.SubElement(vol, "backingStore")
        ET.SubElement(store, "path").text = path
        ET.SubElement(store, "format", type=fmt)
    return ET.tostring(vol, encoding="unicode")


def create_qcow2(pool, name, capacity, backing=None, field=None):
    """A qcow2 volume; with ``backing`` (path, format) a copy-on-write overlay on it, created while vo_image
    cannot remove or replace base volumes of the pool (locks.volume_use), and only if the base is still there."""
    if backing is None:
        return _create(pool, name, capacity, None, field)
    with locks.volume_use(pool.name(), field, shared=True):
        # Asked of libvirt, not of this host's file system: a migration creates overlays on another host.
        if lookup(pool.connect().storageVolLookupByPath, backing[0]) is None:
            raise FabricError("the base volume %s was removed (pruned?) before the overlay %s could be created on it; "
                              "stage the image again or choose a staged one" % (backing[0], name), field=field)
        return _create(pool, name, capacity, backing, field)


def _create(pool, name, capacity, backing, field):
    with libvirt_errors("creating volume '%s' in pool '%s'" % (name, pool.name()), field):
        return pool.createXML(_volume_xml(name, capacity, backing), 0)


def volume_mode(vol):
    """The volume's permission bits as libvirt reports them (an octal string), or None."""
    mode = ET.fromstring(vol.XMLDesc(0)).find("target/permissions/mode")
    return mode.text.strip() if mode is not None and mode.text else None


def is_private(vol):
    """True when no one but the volume's owner may read it."""
    return not int(volume_mode(vol) or "0644", 8) & 0o077


def _private_raw_xml(name, capacity):
    return ("<volume><name>%s</name><capacity unit='bytes'>%d</capacity><target><format type='raw'/>"
            "<permissions><mode>%s</mode></permissions></target></volume>" % (name, capacity, PRIVATE_MODE))


def upload(conn, pool, name, data, field=None):
    """Write ``data`` into a private (0600) raw volume, created or resized as needed, through a libvirt
    stream so it works for remote hypervisors too. A seed carries credentials: a volume left readable
    by others (an older run made them 0644) is remade rather than written into."""
    with libvirt_errors("uploading volume '%s' to pool '%s'" % (name, pool.name()), field):
        vol = volume(pool, name)
        if vol is not None and not is_private(vol):
            vol.delete(0)
            vol = None
        if vol is None:
            vol = pool.createXML(_private_raw_xml(name, len(data)), 0)
        elif vol.info()[1] < len(data):
            vol.resize(len(data), 0)
        stream = conn.newStream(0)
        vol.upload(stream, 0, len(data), 0)
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            offset += stream.send(bytes(view[offset:offset + 1024 * 1024]))
        stream.finish()
        return vol


def delete(vol, field=None):
    with libvirt_errors("deleting volume '%s'" % vol.name(), field):
        try:
            vol.delete(0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                raise
