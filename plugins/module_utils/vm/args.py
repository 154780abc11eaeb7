# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The argument spec of one VM, shared by the top level of the vm module and each ``vms`` item."""

from __future__ import annotations

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.vm.lifecycle import STATES

VM_OPTIONS = dict(
    name=dict(type="str"),
    state=dict(type="str", default="present", choices=list(STATES)),
    vcpus=dict(type="int", default=1),
    memory_mb=dict(type="int", default=1024),
    virt_type=dict(type="str", default="auto", choices=["auto", "kvm", "qemu"]),
    cpu_mode=dict(type="str"),
    machine=dict(type="str", default="pc"),
    disks=dict(type="list", elements="dict", default=[], options=dict(
        pool=dict(type="str"),
        base_volume=dict(type="str"),
        volume=dict(type="str"),
        size_gb=dict(type="int"),
        format=dict(type="str", choices=["qcow2", "raw"]),
        readonly=dict(type="bool", default=False),
    )),
    default_pool=dict(type="str", default="default"),
    nics=dict(type="list", elements="dict", default=[], options=dict(
        network=dict(type="str"),
        bridge=dict(type="str"),
        user=dict(type="bool", default=False),
        mac=dict(type="str"),
        ip=dict(type="str"),
        filter=dict(type="str"),
        model=dict(type="str", default="virtio"),
    )),
    allow_address_spoofing=dict(type="bool", default=False),
    cloud_init=dict(type="dict", options=dict(
        user_data=dict(type="raw", no_log=True),  # may carry credentials (munge key, tokens)
        meta_data=dict(type="raw"),
        network_config=dict(type="raw"),
    )),
    seed_pool=dict(type="str"),
    kernel=dict(type="str"),
    initrd=dict(type="str"),
    cmdline=dict(type="str"),
    metadata=dict(type="dict", default={}),
    autostart=dict(type="bool", default=False),
    console_log=dict(type="str"),
    shutdown_timeout=dict(type="int", default=120),
    force=dict(type="bool", default=False),
)


def _without_defaults(options):
    """The options of a ``vms`` item: the same keys (so Ansible masks their no_log values at every
    level), without defaults of their own, since a key an item leaves out takes the top-level value."""
    return {key: {attr: value for attr, value in spec.items() if attr != "default"} for key, spec in options.items()}


VM_ITEM_OPTIONS = _without_defaults(VM_OPTIONS)

# Top-level values are the defaults of every ``vms`` item: an item is validated against this.
_ITEM_VALIDATOR = ArgumentSpecValidator(VM_OPTIONS)


def _drop_none(value):
    """Validated parameters carry None for every unset suboption; validating them again needs them gone."""
    if isinstance(value, dict):
        return {key: _drop_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_drop_none(item) for item in value]
    return value


def vm_items(params):
    """The list of per-VM parameter dicts the module was asked for (one, or the ``vms`` list)."""
    shared = {key: params.get(key) for key in VM_OPTIONS if key != "name"}
    if not params.get("vms"):
        if not params.get("name"):
            raise FabricError("give 'name' for one VM, or 'vms' for several", field="name")
        return [dict(shared, name=params["name"])]
    items, seen = [], set()
    for index, item in enumerate(params["vms"]):
        merged = _drop_none(shared)
        merged.update(_drop_none(item))
        result = _ITEM_VALIDATOR.validate(merged)
        if result.error_messages:
            raise FabricError("; ".join(result.error_messages), field="vms[%d]" % index)
        validated = result.validated_parameters
        if not validated.get("name"):
            raise FabricError("every item needs a name", field="vms[%d].name" % index)
        if validated["name"] in seen:
            raise FabricError("VM '%s' is listed twice" % validated["name"], field="vms[%d].name" % index)
        seen.add(validated["name"])
        items.append(validated)
    return items
