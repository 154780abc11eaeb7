# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VM slot planning for one hypervisor: its cores and memory after the host's reservation, split
between the VOs by their shares and VM sizes. Pure and deterministic: the same host and inputs give
the same slots, named ``<host>-<vo>-<n>``, every run."""

from __future__ import annotations

import ipaddress

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


def existing_slots(host, vms):
    """``{name, vo}`` of the slot VMs ``host`` has now, from vm_info items (``{name, metadata}``) or
    ``{name, vo}`` items: the VMs whose metadata names this host as their slot host."""
    found = []
    for vm in vms or []:
        metadata = vm.get("metadata") or {}
        vo = vm.get("vo") or metadata.get("vo")
        if vo and metadata.get("slot_host", host) == host and str(vm.get("name", "")).startswith(host + "-"):
            found.append({"name": vm["name"], "vo": vo})
    return sorted(found, key=lambda slot: slot["name"])


def plan_slots(host, cores, memory_mb, vos, existing=None):
    """Slots for ``host`` with ``cores``/``memory_mb`` free for VMs, split by ``vos``
    ({name: {share, vm: {vcpus, memory_mb}, max_slots_per_host}}).

    Each VO first gets the whole VMs its share of the cores and of the memory allows; what is left
    goes, one VM at a time, to the VO furthest below its share that still fits (ties: name order).

    ``existing``: the host's slot VMs now (see existing_slots), which may differ from the shares' plan
    after a rebalance moved some to another VO. Those of a VO that still has a share are kept, in name
    order while they fit, and only the room left is split as above, under names not taken; so a convert
    run after a rebalance neither undoes it nor starts the shares' VMs beside the rebalanced ones.
    """
    validate_shares(vos)
    names = sorted(name for name, vo in vos.items() if float(vo.get("share", 0)) > 0)
    sizes = {name: _vo_size(name, vos[name]) for name in names}
    limits = {name: vos[name].get("max_slots_per_host") for name in names}
    counts = dict((name, 0) for name in names)
    free = [int(cores), int(memory_mb)]
    slots = []

    def fits(name):
        return sizes[name][0] <= free[0] and sizes[name][1] <= free[1] and \
            (limits[name] is None or counts[name] < int(limits[name]))

    def add(name, slot_name=None):
        taken = set(slot["name"] for slot in slots)
        index = _slot_index(host, name, slot_name) if slot_name else \
            next(n for n in range(1, len(taken) + 2) if "%s-%s-%d" % (host, name, n) not in taken)
        slots.append({"name": slot_name or "%s-%s-%d" % (host, name, index), "host": host, "vo": name,
                      "index": index, "vcpus": sizes[name][0], "memory_mb": sizes[name][1]})
        counts[name] += 1
        free[0] -= sizes[name][0]
        free[1] -= sizes[name][1]

    for slot in existing_slots(host, existing):
        if slot["vo"] in sizes and fits(slot["vo"]):
            add(slot["vo"], slot["name"])
    for name in names:
        share = float(vos[name]["share"]) / 100.0
        vcpus, vm_memory = sizes[name]
        wanted = min(int(cores * share // vcpus), int(memory_mb * share // vm_memory))
        while counts[name] < wanted and fits(name):
            add(name)

    def deficit(name):
        return float(vos[name]["share"]) / 100.0 * cores - counts[name] * sizes[name][0]

    while True:
        fitting = [name for name in names if fits(name) and deficit(name) > 0]
        if not fitting:
            break
        add(max(fitting, key=lambda name: (deficit(name), -names.index(name))))
    return sorted(slots, key=lambda slot: (slot["vo"], slot["index"], slot["name"]))


def _slot_index(host, vo, name):
    """The number at the end of a slot's name (``<host>-<vo>-<n>``); 0 for a name of another shape."""
    tail = name[len("%s-%s-" % (host, vo)):] if name.startswith("%s-%s-" % (host, vo)) else ""
    return int(tail) if tail.isdigit() else 0


def ip_pool_size(pool):
    """How many VM addresses an ip_lease pool definition ({cidr, range, gateway, reserved}) holds."""
    try:
        network = ipaddress.ip_network(pool["cidr"], strict=False)
    except (KeyError, ValueError) as exc:
        raise FabricError("needs a valid cidr (%s)" % exc, field="fabric_ip_pools")
    span = pool.get("range") or {}
    first = ipaddress.ip_address(span["start"]) if span.get("start") else network.network_address + 1
    last = ipaddress.ip_address(span["end"]) if span.get("end") else network.broadcast_address - 1
    taken = {ipaddress.ip_address(addr) for addr in (pool.get("reserved") or [])}
    if pool.get("gateway"):
        taken.add(ipaddress.ip_address(pool["gateway"]))
    size = int(last) - int(first) + 1
    return max(0, size - sum(1 for addr in taken if first <= addr <= last))


def _slot_name(slot):
    return slot["name"] if isinstance(slot, dict) else str(slot)


def lease_requests(slots, pool, state="present"):
    """ip_lease ``leases:`` items for slots (plan items or names)."""
    return [{"owner": _slot_name(slot), "pool": pool, "state": state} for slot in slots]


def vm_items(slots):
    """skygrid.fabric.vm ``vms:`` items naming slots (plan items or names), for calls that need
    nothing else of them (removal)."""
    return [{"name": _slot_name(slot)} for slot in slots]


def dhcp_hosts(leases):
    """libvirt_network ``hosts:`` (DHCP reservations) from ip_lease results."""
    return sorted(({"mac": lease["mac"], "ip": lease["ip"], "name": lease["owner"]} for lease in leases if lease.get("ip")),
                  key=lambda host: host["mac"])


def newest_image(images):
    """The image a new VM of a VO boots: the newest version staged (list order breaks ties)."""
    if not images:
        return None

    def version_key(image):
        parts = []
        for part in str(image.get("version") or "0").replace("-", ".").split("."):
            parts.append((0, int(part), "") if part.isdigit() else (1, 0, part))
        return parts
    return max(images, key=version_key)


def slot_vms(plan, leases, images, vos, network, pool, user_data=None, shared_user_data=None, existing=None,
             extra_user_data=None):
    """``vms:`` items for skygrid.fabric.vm: one VM per slot, on its VO's newest staged image, with
    its leased MAC and address, its batch system user-data and its provenance metadata.

    ``leases``: {slot name: ip_lease result}; ``images``: {vo: [staged images]}; ``user_data``:
    {slot name: cloud-config dict} (Slurm) and ``shared_user_data`` one dict for every slot (Torque);
    ``extra_user_data`` is merged over both (lists appended); ``existing``: {slot name: current
    metadata}, so a slot keeps the time it last changed (the rebalancer's cool-down).
    """
    vms = []
    for slot in plan:
        name, vo = slot["name"], slot["vo"]
        image = newest_image((images or {}).get(vo) or [])
        if image is None:
            raise FabricError("VO %s has no staged image for slot %s; stage one first (vo_images role)" % (vo, name),
                              field="vo_images_staged.%s" % vo)
        lease = (leases or {}).get(name)
        if lease is None:
            raise FabricError("slot %s has no address lease" % name, field="leases")
        data = dict(shared_user_data or {})
        data.update((user_data or {}).get(name) or {})
        for key, value in (extra_user_data or {}).items():
            data[key] = (data.get(key) or []) + value if isinstance(value, list) else value
        previous = (existing or {}).get(name) or {}
        provenance = image.get("provenance") or {}
        vms.append({
            "name": name,
            "vcpus": slot["vcpus"],
            "memory_mb": slot["memory_mb"],
            "disks": [{"pool": pool, "base_volume": image["volume"]}],
            "nics": [{"network": network, "mac": lease["mac"], "ip": lease["ip"]}],
            "cloud_init": {"user_data": data,
                           "meta_data": {"local-hostname": name, "instance-id": "%s-%s" % (name, image["image_id"])}},
            "metadata": {
                "vo": vo,
                "trust_class": str(image.get("trust_class") or (vos.get(vo) or {}).get("trust_class", 2)),
                "image_id": image["image_id"],
                "image_version": str(image.get("version") or ""),
                "image_sha512": image.get("sha512"),
                "endorser_dn": provenance.get("endorser_dn"),
                "image_list_id": provenance.get("list_id"),
                "slot_host": slot["host"],
                "fqdn": lease.get("fqdn") or name,
                "changed_at": str(previous.get("changed_at") or "0"),
            },
        })
    return vms


def batch_nodes(plan, vos, leases=None):
    """batch_node items for the slots: cores, memory and the VO's properties (Torque), also as
    ``features`` (Slurm), so the list serves the slurm role's ``slurm_vms`` as it is. With ``leases``
    ({slot name: lease}), each node also carries its address (``address``, and ``conf`` for slurmd), so
    the batch server reaches a VM whose name no DNS knows."""
    nodes = []
    for slot in plan:
        batch = (vos.get(slot["vo"]) or {}).get("batch") or {}
        properties = list(batch.get("properties") or [slot["vo"], "vm"])
        node = {"name": slot["name"], "vo": slot["vo"], "cores": slot["vcpus"], "memory_mb": slot["memory_mb"],
                "properties": properties, "features": properties}
        lease = (leases or {}).get(slot["name"])
        if lease and lease.get("ip"):
            node.update(address=lease["ip"], conf="NodeAddr=%s" % lease["ip"])
        nodes.append(node)
    return nodes


def batch_node_items(nodes, backend, environments=None):
    """The items skygrid.fabric.batch_node's ``nodes`` option takes, from :func:`batch_nodes`. Memory goes
    to Torque only: a Slurm VM's slurmd declares its own when it registers. With ``environments`` ({vo:
    environment}, see :func:`domains.batch_env`), each item carries its VO's as ``environment``, so one
    batch_node run reaches every VO's cluster."""
    keys = ("name", "cores", "properties", "address") + (("memory_mb",) if backend == "torque" else ())
    items = [{key: node[key] for key in keys if key in node} for node in nodes]
    if environments is not None:
        for item, node in zip(items, nodes):
            item["environment"] = dict(environments.get(node.get("vo")) or {})
    return items
