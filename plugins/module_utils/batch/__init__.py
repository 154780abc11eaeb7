# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Batch systems behind one interface (:class:`base.BatchBackend`): Torque (qmgr, pbsnodes) and Slurm
(scontrol, sinfo, squeue). Every backend runs its commands through an injectable runner, so the logic is
tested against a command double or a recorded transcript as well as a live system."""

from __future__ import annotations

from ansible_collections.skygrid.fabric.plugins.module_utils.batch.runner import AnsibleRunner
from ansible_collections.skygrid.fabric.plugins.module_utils.batch.slurm import SlurmBackend
from ansible_collections.skygrid.fabric.plugins.module_utils.batch.torque import TorqueBackend
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

BACKENDS = {"torque": TorqueBackend, "slurm": SlurmBackend}
# The options every batch module takes (batch_node, batch_queue, vo_demand); documented once in
# plugins/doc_fragments/batch.py.
BATCH_OPTIONS = dict(
    backend=dict(type="str", required=True, choices=list(BACKENDS)),
    bin_dir=dict(type="path"),
)


def get_backend(name, runner, **options):
    """The backend called ``name`` ('torque' or 'slurm'), running its commands with ``runner``."""
    try:
        cls = BACKENDS[name]
    except KeyError:
        raise FabricError("unknown batch backend %r; use one of %s" % (name, ", ".join(sorted(BACKENDS))), field="backend")
    return cls(runner, **options)


def module_backend(module, env=None, **options):
    """The backend a batch module's ``backend`` and ``bin_dir`` name, running its commands through ``module``
    (an AnsibleModule), with ``env`` added to their environment."""
    return get_backend(module.params["backend"], AnsibleRunner(module, module.params["bin_dir"], env), **options)
