# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VM slot planning for one hypervisor: its cores and memory after the host's reservation, split
between the VOs by their shares and VM sizes. Pure and deterministic: the same host and inputs give
the same slots, named ``<host>-<vo>-<n>``, every run."""

from __future__ import annotations

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError


def _vo_size(name, vo):
    vm = vo.get("vm") or {}
    try:
        vcpus, memory_mb = int(vm.get("vcpus", 1)), int(vm.get("memory_mb", 2048))
    except (TypeError, ValueError):
        raise FabricError("vm.vcpus and vm.memory_mb must be whole numbers", field="fabric_vos.%s.vm" % name)
    if vcpus < 1 or memory_mb < 32:
        raise FabricError("a VM needs at least 1 vCPU and 32 MiB", field="fabric_vos.%s.vm" % name)
    return vcpus, memory_mb


def validate_shares(vos):
    total = 0.0
    for name, vo in vos.items():
        share = vo.get("share", 0)
        try:
            share = float(share)
        except (TypeError, ValueError):
            raise FabricError("share must be a number (percent), got %r" % (share,), field="fabric_vos.%s.share" % name)
        if share < 0:
            raise FabricError("share may not be negative", field="fabric_vos.%s.share" % name)
        total += share
    if total > 100.0 + 1e-9:
        raise FabricError("the VO shares add up to %g%%, over 100%%; lower them" % total, field="fabric_vos")
    return total


def plan_slots(host, cores, memory_mb, vos):
    """Slots for ``host`` with ``cores``/``memory_mb`` free for VMs, split by ``vos``
    ({name: {share, vm: {vcpus, memory_mb}, max_slots_per_host}}).

    Each VO first gets the whole VMs its share of the cores and of the memory allows; what is left
    goes, one VM at a time, to the VO furthest below its share that still fits (ties: name order).
    """
    validate_shares(vos)
    names = sorted(name for name, vo in vos.items() if float(vo.get("share", 0)) > 0)
    sizes = {name: _vo_size(name, vos[name]) for name in names}
    limits = {name: vos[name].get("max_slots_per_host") for name in names}
    counts = {}
    free_cores, free_memory = int(cores), int(memory_mb)
    for name in names:
        share = float(vos[name]["share"]) / 100.0
        vcpus, vm_memory = sizes[name]
        count = min(int(cores * share // vcpus), int(memory_mb * share // vm_memory))
        if limits[name] is not None:
            count = min(count, int(limits[name]))
        counts[name] = count
        free_cores -= count * vcpus
        free_memory -= count * vm_memory

    def deficit(name):
        used = counts[name] * sizes[name][0]
        return float(vos[name]["share"]) / 100.0 * cores - used

    while True:
        fitting = [name for name in names
                   if sizes[name][0] <= free_cores and sizes[name][1] <= free_memory
                   and (limits[name] is None or counts[name] < int(limits[name]))
                   and deficit(name) > 0]
        if not fitting:
            break
        chosen = max(fitting, key=lambda name: (deficit(name), -names.index(name)))
        counts[chosen] += 1
        free_cores -= sizes[chosen][0]
        free_memory -= sizes[chosen][1]
    slots = []
    for name in names:
        vcpus, vm_memory = sizes[name]
        for index in range(1, counts[name] + 1):
            slots.append({"name": "%s-%s-%d" % (host, name, index), "host": host, "vo": name,
                          "index": index, "vcpus": vcpus, "memory_mb": vm_memory})
    return slots
