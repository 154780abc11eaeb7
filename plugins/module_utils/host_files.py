# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read several files of a host in one pass (the read side of host_config): a converge that builds the
VMs' contextualisation from a batch server's files asks once, not once per file."""

from __future__ import annotations

import base64

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

# A contextualisation file (a key, a slurm.conf) is small; a larger one is a wrong path, not an input.
MAX_BYTES = 1 << 20


def read(paths, missing_ok=False, max_bytes=MAX_BYTES):
    """{path: {"exists": bool, "content": base64 str (empty when missing)}} for each path, in order.
    A missing file is an error naming it unless ``missing_ok``; a directory or an oversized file always is."""
    found = {}
    for path in paths:
        try:
            with open(path, "rb") as handle:
                data = handle.read(max_bytes + 1)
        except FileNotFoundError:
            if not missing_ok:
                raise FabricError("%s does not exist: create it, or correct the path" % path, field="paths")
            found[path] = {"exists": False, "content": ""}
            continue
        except IsADirectoryError:
            raise FabricError("%s is a directory, not a file: name the file" % path, field="paths")
        except PermissionError:
            raise FabricError("%s cannot be read by this user: run as root (become: true)" % path, field="paths")
        if len(data) > max_bytes:
            raise FabricError("%s is larger than %d bytes: this reads small configuration files and keys; "
                              "check the path" % (path, max_bytes), field="paths")
        found[path] = {"exists": True, "content": base64.b64encode(data).decode("ascii")}
    return found
