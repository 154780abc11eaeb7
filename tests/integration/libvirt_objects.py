"""Removing the libvirt objects an integration test made for itself (by exact name, stopped first)."""

from __future__ import annotations

import libvirt


def remove(conn, domains=(), networks=(), pools=()):
    for lookup, names in ((conn.lookupByName, domains), (conn.networkLookupByName, networks),
                          (conn.storagePoolLookupByName, pools)):
        for name in names:
            try:
                obj = lookup(name)
            except libvirt.libvirtError:
                continue
            if obj.isActive():
                obj.destroy()
            obj.undefine()
