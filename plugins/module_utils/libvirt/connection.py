# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The single place that opens libvirt connections and turns libvirt errors into FabricError."""

from __future__ import annotations

import contextlib

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

try:
    import libvirt
    HAS_LIBVIRT = True
    LIBVIRT_IMPORT_ERROR = None
except ImportError as exc:  # reported by the module with missing_required_lib
    libvirt = None
    HAS_LIBVIRT = False
    LIBVIRT_IMPORT_ERROR = exc


def _silence_libvirt_stderr():
    # libvirt prints every error to stderr by default; we report them ourselves.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def require_libvirt():
    if not HAS_LIBVIRT:
        raise FabricError(
            "the Python bindings for libvirt are not importable on this host (%s); install "
            "libvirt-python (pip) or python3-libvirt (Debian/Ubuntu) / python3-libvirt (EL)" % LIBVIRT_IMPORT_ERROR,
            field="uri")


def open_connection(uri, readonly=False):
    require_libvirt()
    _silence_libvirt_stderr()
    try:
        return libvirt.openReadOnly(uri) if readonly else libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise FabricError(
            "cannot connect to libvirtd at '%s': %s. Start libvirtd on the host (the "
            "skygrid.fabric.hypervisor role does this) or correct the URI" % (uri, exc.get_error_message()),
            field="uri")


@contextlib.contextmanager
def connection(uri, readonly=False):
    conn = open_connection(uri, readonly=readonly)
    try:
        yield conn
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def is_no_such(exc, *codes):
    """True when a libvirtError means 'that object does not exist'."""
    wanted = codes or (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_NETWORK,
                       libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_ERR_NO_STORAGE_VOL)
    return exc.get_error_code() in wanted


def lookup(func, name, *codes):
    """Call a libvirt lookup; None when the object does not exist, other errors propagate."""
    try:
        return func(name)
    except libvirt.libvirtError as exc:
        if is_no_such(exc, *codes):
            return None
        raise


@contextlib.contextmanager
def libvirt_errors(what, field=None):
    """Turn a libvirtError raised while doing ``what`` into a FabricError that says so."""
    try:
        yield
    except libvirt.libvirtError as exc:
        raise FabricError("%s failed: %s" % (what, exc.get_error_message()), field=field)
