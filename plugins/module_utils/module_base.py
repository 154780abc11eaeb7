# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The thin Ansible side every skygrid.fabric module shares: argument handling, one Reconciler,
and the translation of FabricError into an actionable ``fail_json``."""

from __future__ import annotations

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.reconcile import Reconciler


class FabricModule:
    """Subclass, set ``argument_spec`` (and optionally the AnsibleModule keyword arguments in
    ``module_kwargs``), and implement ``run(self) -> dict`` using ``self.reconciler``."""

    argument_spec = {}
    module_kwargs = {}
    # Every module of the collection runs its changes through the Reconciler, which skips them in check mode.
    supports_check_mode = True

    def __init__(self):
        self.module = AnsibleModule(argument_spec=self.argument_spec, supports_check_mode=self.supports_check_mode,
                                    **self.module_kwargs)
        self.params = self.module.params
        self.reconciler = Reconciler(check_mode=self.module.check_mode)

    def run(self):
        raise NotImplementedError

    def execute(self):
        try:
            result = self.run() or {}
        except FabricError as exc:
            self.module.fail_json(msg=str(exc), field=exc.field, changed=self.reconciler.changed,
                                  actions=self.reconciler.actions, **exc.details)
        except Exception as exc:  # an unexpected bug: keep the traceback for the report
            self.module.fail_json(msg="unexpected error: %s" % exc, exception=traceback.format_exc(),
                                  changed=self.reconciler.changed, actions=self.reconciler.actions)
        for warning in self.reconciler.warnings:
            self.module.warn(warning)
        result.setdefault("changed", self.reconciler.changed)
        result.setdefault("actions", self.reconciler.actions)
        if self.module._diff:
            result["diff"] = self.reconciler.diff()
        self.module.exit_json(**result)
