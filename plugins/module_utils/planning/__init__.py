# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure planners: slots per worker node (slots.py), the demand per VO read from a batch backend's output
(demand.py) and the rebalancing moves (rebalance.py). No libvirt, no subprocess, no file I/O: input in,
plan out."""
