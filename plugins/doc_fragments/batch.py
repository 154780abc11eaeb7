# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # The batch system every batch module of the collection talks to (batch_node, batch_queue, vo_demand).
    DOCUMENTATION = r"""
options:
  backend:
    description: The batch system.
    type: str
    required: true
    choices: [torque, slurm]
  bin_dir:
    description: Directory holding the batch commands, when they are not on the PATH (for example C(/opt/torque/bin)).
    type: path
"""
