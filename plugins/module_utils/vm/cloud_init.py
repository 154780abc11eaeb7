# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A cloud-init NoCloud seed: an ISO 9660 volume labelled ``cidata`` holding user-data,
meta-data and (optionally) network-config, built with the host's mkisofs-compatible tool."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

ISO_TOOLS = (
    ("genisoimage", []),
    ("mkisofs", []),
    ("xorrisofs", []),
    ("xorriso", ["-as", "mkisofs"]),
)
SEED_FILES = (("user_data", "user-data"), ("meta_data", "meta-data"), ("network_config", "network-config"))


def iso_tool():
    for name, prefix in ISO_TOOLS:
        path = shutil.which(name)
        if path:
            return [path] + prefix
    raise FabricError("no ISO 9660 tool found on the hypervisor to build the NoCloud seed; install "
                      "genisoimage (Debian/Ubuntu) or xorriso (EL) — the skygrid.fabric.hypervisor role does",
                      field="cloud_init")


def build_seed(content):
    """Return the bytes of a NoCloud seed ISO for ``content`` (keys user_data, meta_data, network_config)."""
    command = iso_tool()
    with tempfile.TemporaryDirectory(prefix="skygrid-seed-") as workdir:
        files = []
        for key, filename in SEED_FILES:
            if content.get(key) is None:
                continue
            path = os.path.join(workdir, filename)
            with open(path, "w") as handle:
                handle.write(content[key])
            files.append(path)
        iso_path = os.path.join(workdir, "seed.iso")
        proc = subprocess.run(command + ["-output", iso_path, "-volid", "cidata", "-joliet", "-rock", "-quiet"] + files,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        if proc.returncode != 0:
            raise FabricError("building the NoCloud seed with %s failed: %s"
                              % (command[0], proc.stderr.decode(errors="replace").strip()), field="cloud_init")
        with open(iso_path, "rb") as handle:
            return handle.read()
