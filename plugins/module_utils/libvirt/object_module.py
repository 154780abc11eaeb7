# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The module side shared by libvirt_network and libvirt_pool: the common options and the run."""

from __future__ import annotations

from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.connection import connection
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.objects import OBJECT_STATES, ObjectManager
from ansible_collections.skygrid.fabric.plugins.module_utils.module_base import FabricModule

COMMON_OPTIONS = dict(
    uri=dict(type="str", default="qemu:///system"),
    name=dict(type="str", required=True),
    state=dict(type="str", default="active", choices=list(OBJECT_STATES)),
    autostart=dict(type="bool"),
    allow_restart=dict(type="bool", default=False),
)


class LibvirtObjectModule(FabricModule):
    """Subclasses set ``result_key`` and implement ``normalise(params)`` and ``kind(conn, name)``."""

    result_key = "object"

    def normalise(self, params):
        raise NotImplementedError

    def kind(self, conn, name):
        raise NotImplementedError

    def run(self):
        params = self.params
        state = params["state"]
        wanted = self.normalise(params) if state != "absent" else None
        autostart = params["autostart"]
        if autostart is None and state != "absent":
            autostart = state != "inactive"  # a running object comes back with the host by default
        with connection(params["uri"]) as conn:
            manager = ObjectManager(self.kind(conn, params["name"]), self.reconciler)
            result = manager.ensure(params["name"], state, wanted, autostart=autostart,
                                    allow_restart=params["allow_restart"], params=params)
        if wanted is not None:
            result["spec"] = wanted
        return {self.result_key: result}
