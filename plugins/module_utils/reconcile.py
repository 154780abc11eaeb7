# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Check mode, diff and ``changed`` bookkeeping shared by every module.

The logic in module_utils never asks "am I in check mode?" itself: it describes each change
to a :class:`Reconciler`, which records it for the diff and the ``actions`` list and runs it
only outside check mode.  Plain Python, so the logic stays testable without Ansible.
"""

from __future__ import annotations

import copy


class Reconciler:
    def __init__(self, check_mode=False):
        self.check_mode = check_mode
        self.changed = False
        self.actions = []
        self.before = {}
        self.after = {}
        self.warnings = []

    def act(self, description, func=None, *args, **kwargs):
        """Record a change; run ``func`` unless in check mode. Returns func's result (None in check mode)."""
        self.changed = True
        self.actions.append(description)
        if func is None or self.check_mode:
            return None
        return func(*args, **kwargs)

    def record_diff(self, key, before, after):
        """Keep the before/after state of one object (keyed, so one call can manage many)."""
        if before is not None:
            self.before[key] = copy.deepcopy(before)
        if after is not None:
            self.after[key] = copy.deepcopy(after)

    def child(self):
        """A Reconciler for one object of many, to be merged back (in a stable order) with ``merge``;
        lets objects be changed concurrently without interleaving their records."""
        return Reconciler(check_mode=self.check_mode)

    def warn(self, message):
        self.warnings.append(message)

    def merge(self, child, key_prefix=""):
        """Take in a child's records; ``key_prefix`` keeps apart objects of different kinds with one name."""
        self.warnings.extend(child.warnings)
        self.changed = self.changed or child.changed
        self.actions.extend(child.actions)
        self.before.update((key_prefix + key, value) for key, value in child.before.items())
        self.after.update((key_prefix + key, value) for key, value in child.after.items())

    def diff(self):
        return {"before": self.before, "after": self.after}
