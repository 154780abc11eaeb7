# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The module side shared by libvirt_network, libvirt_pool and hypervisor_fabric: the options and the run."""

from __future__ import annotations

from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt import network_spec, pools
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.connection import connection
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.objects import OBJECT_STATES, ObjectManager
from ansible_collections.skygrid.fabric.plugins.module_utils.module_base import FabricModule

URI_OPTION = dict(uri=dict(type="str", default="qemu:///system"))

# One object's options, shared by its own module and hypervisor_fabric's lists (without the uri).
OBJECT_OPTIONS = dict(
    name=dict(type="str", required=True),
    state=dict(type="str", default="active", choices=list(OBJECT_STATES)),
    autostart=dict(type="bool"),
    allow_restart=dict(type="bool", default=False),
)

NETWORK_OPTIONS = dict(
    OBJECT_OPTIONS,
    mode=dict(type="str", default="nat", choices=list(network_spec.MODES)),
    bridge=dict(type="str"),
    cidr=dict(type="str"),
    gateway=dict(type="str"),
    dhcp_range=dict(type="dict", options=dict(start=dict(type="str", required=True),
                                              end=dict(type="str", required=True))),
    hosts=dict(type="list", elements="dict", options=dict(
        mac=dict(type="str", required=True),
        ip=dict(type="str", required=True),
        name=dict(type="str"),
    )),
    domain=dict(type="str"),
)

POOL_OPTIONS = dict(
    OBJECT_OPTIONS,
    type=dict(type="str", default="dir", choices=list(pools.POOL_TYPES)),
    path=dict(type="path"),
    vg_name=dict(type="str"),
    source_devices=dict(type="list", elements="str", default=[]),
    mode=dict(type="str"),
    owner=dict(type="str"),
    group=dict(type="str"),
    purge=dict(type="bool", default=False),
)


def converge_object(conn, kind_class, normalise, params, reconciler):
    """One network or pool brought to ``params`` (the module's options without ``uri``); its outcome."""
    state = params["state"]
    wanted = normalise(params) if state != "absent" else None
    autostart = params["autostart"]
    if autostart is None and state != "absent":
        autostart = state != "inactive"  # a running object comes back with the host by default
    manager = ObjectManager(kind_class(conn, params["name"]), reconciler)
    result = manager.ensure(params["name"], state, wanted, autostart=autostart,
                            allow_restart=params["allow_restart"], params=params)
    if wanted is not None:
        result["spec"] = wanted
    return result


class LibvirtObjectModule(FabricModule):
    """Subclasses set ``result_key``, ``kind_class`` (a LibvirtKind) and implement ``normalise(params)``."""

    result_key = "object"
    kind_class = None

    def normalise(self, params):
        raise NotImplementedError

    def run(self):
        with connection(self.params["uri"]) as conn:
            result = converge_object(conn, self.kind_class, self.normalise, self.params, self.reconciler)
        return {self.result_key: result}
