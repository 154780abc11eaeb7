# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Batch trust domains: which cluster a VO's VMs join, and how a batch command reaches it.

VMs of site-built images (trust class 1) join the site's cluster. Under Slurm, VMs of VO-built and
user-built images (classes 2 and 3) join their VO's own cluster - its own munge key and slurmctld -
whose clients read ``<conf_dir>/<vo>/slurm.conf`` (``SLURM_CONF``). Torque has one server: a node's
identity there is its source address, which the anti-spoofing filter makes unforgeable.
"""

from __future__ import annotations

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

DEFAULT_VO_CONF_DIR = "/etc/slurm/vo"
DEFAULT_TRUST_CLASS = 2


def trust_class(vo_config):
    value = (vo_config or {}).get("trust_class", DEFAULT_TRUST_CLASS)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise FabricError("must be 1, 2 or 3, got %r" % (value,), field="trust_class")


def site_built_vos(vos):
    """The VOs whose VMs run site-built images (class 1): they join the site's own cluster."""
    return sorted(name for name, config in (vos or {}).items() if trust_class(config) == 1)


def batch_env(vos, batch_system="slurm", conf_dir=DEFAULT_VO_CONF_DIR):
    """{vo: the environment of batch commands about that VO's nodes and jobs} ({} for the site's cluster)."""
    if batch_system != "slurm":
        return {name: {} for name in vos or {}}
    site = set(site_built_vos(vos))
    return {name: {} if name in site else {"SLURM_CONF": "%s/%s/slurm.conf" % (conf_dir.rstrip("/"), name)}
            for name in vos or {}}
