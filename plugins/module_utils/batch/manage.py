# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What batch_node and batch_queue do, independent of the batch system: read the current state, compare
it with the one asked for, and make only the changes needed, each through ``reconciler.act`` (so check
mode, ``actions`` and the diff work). Nothing is run when the node or queue already matches."""

from __future__ import annotations

from ansible_collections.skygrid.fabric.plugins.module_utils.batch.base import check_address, check_name, check_properties, same_members
from ansible_collections.skygrid.fabric.plugins.module_utils.batch.clusters import check_environment, in_cluster
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

NODE_STATES = ("present", "online", "offline", "drained", "absent")
DEFAULT_NOTE = "drained by skygrid.fabric"


def node_spec(params):
    """Validate batch_node parameters into a spec dict."""
    spec = {
        "name": check_name(params.get("name"), "name"),
        "state": params.get("state") or "present",
        "cores": params.get("cores"),
        "memory_mb": params.get("memory_mb"),
        "properties": None if params.get("properties") is None else check_properties(params["properties"]),
        "address": None if params.get("address") is None else check_address(params["address"]),
        "note": params.get("note"),
        "wait_drained": params.get("wait_drained", True),
        "timeout": params.get("timeout", 3600),
        "force": bool(params.get("force")),
    }
    if spec["state"] not in NODE_STATES:
        raise FabricError("must be one of %s" % ", ".join(NODE_STATES), field="state")
    for field in ("cores", "memory_mb"):
        if spec[field] is not None and spec[field] < 1:
            raise FabricError("must be at least 1", field=field)
    if spec["timeout"] is not None and spec["timeout"] < 0:
        raise FabricError("must not be negative", field="timeout")
    if spec["note"] is not None and ("\n" in spec["note"] or len(spec["note"]) > 255):
        raise FabricError("a note is one line of at most 255 characters", field="note")
    return spec


def _view(backend, state, spec=None):
    """The node attributes the diff shows (only what the backend manages)."""
    if state is None:
        return None
    view = {"name": state.name, "cores": state.cores, "properties": sorted(state.properties),
            "schedulable": not state.unschedulable, "note": state.note}
    if backend.uses_memory:
        view["memory_mb"] = state.memory_mb
        view["address"] = state.address
    return view


def _expected(backend, before, spec):
    """What the node will look like after the changes (for check mode and the diff)."""
    view = dict(before or {"name": spec["name"], "cores": 1, "properties": [], "schedulable": True, "note": None})
    if backend.uses_memory:
        view.setdefault("memory_mb", None)
        view.setdefault("address", None)
    if spec["cores"] is not None:
        view["cores"] = spec["cores"]
    if spec["properties"] is not None:
        view["properties"] = sorted(spec["properties"])
    if backend.uses_memory:
        if spec["memory_mb"] is not None:
            view["memory_mb"] = spec["memory_mb"]
        if spec["address"] is not None:
            view["address"] = spec["address"]
    if spec["state"] == "online":
        was_online = before is not None and before["schedulable"]
        if backend.keeps_online_note and spec["note"] is not None:
            view["note"] = spec["note"]
        elif not was_online:
            view["note"] = None  # bringing a node back clears its drain note
        view["schedulable"] = True
    elif spec["state"] in ("offline", "drained"):
        view["schedulable"] = False
        view["note"] = spec["note"] or (before or {}).get("note") or DEFAULT_NOTE
    return view


def ensure_node(backend, spec, reconciler):
    """Make the node match ``spec``; returns the module result for it."""
    name = spec["name"]
    current = backend.node(name)
    before = _view(backend, current)
    result = {"name": name, "backend": backend.name, "waited": False}

    if spec["state"] == "absent":
        if current is not None:
            if current.jobs and not spec["force"]:
                if not current.unschedulable:
                    reconciler.act("drain node %s (%s) before removing it" % (name, spec["note"] or DEFAULT_NOTE),
                                   backend.drain, name, spec["note"] or DEFAULT_NOTE)
                if not reconciler.check_mode:
                    backend.wait_drained(name, spec["timeout"])
                    result["waited"] = True
            reconciler.act("remove node %s" % name, backend.remove, name)
        reconciler.record_diff(name, before, None)
        result["node"] = None
        return result

    if current is None:
        cores = spec["cores"] or 1
        properties = spec["properties"] or []
        address = spec["address"] if backend.uses_memory else None
        reconciler.act("add node %s (%d cores%s%s)" % (
            name, cores, ", %d MB" % spec["memory_mb"] if spec["memory_mb"] and backend.uses_memory else "",
            ", properties %s" % ",".join(properties) if properties else ""),
            backend.add_node, name, cores, spec["memory_mb"] if backend.uses_memory else None, properties, address)
        schedulable = True
        note = None
        jobs = []
    else:
        _plan_node_updates(backend, current, spec, reconciler)
        schedulable = not current.unschedulable
        note = current.note
        jobs = current.jobs

    state = spec["state"]
    if state == "online":
        if not schedulable:
            reconciler.act("put node %s back online" % name, backend.online, name, spec["note"] if backend.keeps_online_note else None)
        elif spec["note"] is not None and backend.keeps_online_note and note != spec["note"]:
            reconciler.act("set the note of node %s" % name, backend.set_note, name, spec["note"])
    elif state in ("offline", "drained"):
        wanted_note = spec["note"] or note or DEFAULT_NOTE
        if schedulable:
            reconciler.act("take node %s offline (%s)" % (name, wanted_note), backend.drain, name, wanted_note)
        elif note != wanted_note:
            reconciler.act("set the note of node %s" % name, backend.set_note, name, wanted_note)
        if state == "drained" and spec["wait_drained"] and jobs and not reconciler.check_mode:
            backend.wait_drained(name, spec["timeout"])
            result["waited"] = True

    expected = _expected(backend, before, spec)
    reconciler.record_diff(name, before, expected)
    if reconciler.check_mode or not reconciler.changed and not result["waited"]:
        final = current
    else:
        final = backend.node(name)
        if final is None:
            raise FabricError("node %s is not in the batch system after adding it; check the %s server's log"
                              % (name, backend.name), field="name")
    result["node"] = final.as_dict() if final is not None else dict(expected, status="online" if expected["schedulable"] else "drained")
    return result


NODE_ITEM_KEYS = ("name", "cores", "memory_mb", "properties", "address", "note")


def node_specs(params):
    """Specs for a ``nodes`` list: each item's own keys over the call's state, wait and force, and the
    environment of its cluster (``environment``, {} for the default one); an item's error names it
    (``nodes[2].name``)."""
    specs = []
    for index, item in enumerate(params["nodes"]):
        merged = dict(params, **{key: item.get(key) for key in NODE_ITEM_KEYS})
        try:
            spec = node_spec(merged)
            spec["environment"] = check_environment(item.get("environment"))
        except FabricError as exc:
            field = "nodes[%d].%s" % (index, exc.field) if exc.field in NODE_ITEM_KEYS + ("environment",) else exc.field
            raise FabricError(exc.bare_msg, field=field)
        specs.append(spec)
    names = [spec["name"] for spec in specs]
    repeated = sorted(name for name in set(names) if names.count(name) > 1)
    if repeated:
        raise FabricError("each node once; %s appear more than once" % ", ".join(repeated), field="nodes")
    return specs


def ensure_nodes(clusters, specs, reconciler):
    """Several nodes in one call (one process for all of a host's VM slots, whichever cluster each joins),
    in order, each with the backend of its cluster (``clusters``, a :class:`clusters.Clusters`) and through a
    reconciler of its own so one node's change does not make another look changed. A failure names the
    node and its cluster, and keeps the actions done before it."""
    results = []
    for spec in specs:
        environment = spec.get("environment") or {}
        child = reconciler.child()
        try:
            results.append(ensure_node(clusters.backend(environment), spec, child))
        except FabricError as exc:
            raise in_cluster(exc, spec["name"], environment)
        finally:
            reconciler.merge(child)
    return results


def _plan_node_updates(backend, current, spec, reconciler):
    name = current.name
    resize = spec["cores"] is not None and spec["cores"] != current.cores
    if backend.uses_memory and spec["memory_mb"] is not None and spec["memory_mb"] != current.memory_mb:
        resize = True
    if resize:
        if not backend.can_resize(current):
            raise FabricError("node %s has %s cores and %s MB; %s cannot change the size of a node whose daemon has "
                              "registered: restart it with the new size, or remove the node (state=absent) and add it again"
                              % (name, current.cores, current.memory_mb, backend.name), field="cores", node=current.as_dict())
        reconciler.act("resize node %s to %s cores%s" % (name, spec["cores"] or current.cores,
                                                         ", %s MB" % spec["memory_mb"] if backend.uses_memory and spec["memory_mb"] else ""),
                       backend.set_cores, current, spec["cores"] or current.cores, spec["memory_mb"] if backend.uses_memory else None)
    if spec["properties"] is not None and not same_members(spec["properties"], current.properties):
        reconciler.act("set the properties of node %s to %s" % (name, ",".join(spec["properties"]) or "(none)"),
                       backend.set_properties, name, spec["properties"])
    if backend.uses_memory and spec["address"] is not None and spec["address"] != (current.address or name):
        reconciler.act("set the address of node %s to %s" % (name, spec["address"]), backend.set_address, name, spec["address"])


# ---------------------------------------------------------------------------------------------- queues


def queue_spec(params, backend):
    spec = {
        "name": check_name(params.get("name"), "name"),
        "state": params.get("state") or "present",
        "property": params.get("property") or params.get("name"),
        "groups": check_properties(params.get("groups") or [], field="groups"),
        "accounts": check_properties(params.get("accounts") or [], field="accounts"),
        "enabled": params.get("enabled", True) is not False,
        "started": params.get("started", True) is not False,
        "nodeset": params.get("nodeset"),
    }
    check_properties([spec["property"]], field="property")
    if spec["state"] not in ("present", "absent"):
        raise FabricError("must be present or absent", field="state")
    if spec["accounts"] and not backend.uses_accounts:
        raise FabricError("%s queues have no account ACL; use groups" % backend.name, field="accounts")
    if spec["nodeset"] and backend.name != "slurm":
        raise FabricError("nodeset is a Slurm NodeSet; Torque routes with the property", field="nodeset")
    if spec["nodeset"] is not None:
        check_name(spec["nodeset"], "nodeset")
    return spec


def _queue_expected(backend, spec):
    view = {"name": spec["name"], "groups": list(spec["groups"]), "enabled": spec["enabled"], "started": spec["started"]}
    if backend.name == "slurm":
        view["accounts"] = list(spec["accounts"])
        view["nodeset"] = spec["nodeset"]
        if not spec["nodeset"]:
            view["nodes"] = sorted(n for n in backend.desired_nodes(spec).split(",") if n)
    else:
        view["property"] = spec["property"]
    return view


def _queue_view(backend, current, spec):
    if current is None:
        return None
    view = {"name": current.name, "groups": list(current.groups), "enabled": current.enabled, "started": current.started}
    if backend.name == "slurm":
        view["accounts"] = list(current.accounts)
        view["nodeset"] = current.nodeset
        if not spec["nodeset"]:
            view["nodes"] = sorted(current.nodes)
    else:
        view["property"] = current.node_property
    return view


def _queue_matches(before, expected):
    for key, value in expected.items():
        if key in ("groups", "accounts", "nodes"):
            if sorted(value) != sorted(before.get(key) or []):
                return False
        elif before.get(key) != value:
            return False
    return True


def ensure_queue(backend, spec, reconciler):
    name = spec["name"]
    kind = "partition" if backend.name == "slurm" else "queue"
    current = backend.queue(name)
    if spec["state"] == "absent":
        before = current.as_dict() if current else None
        if current is not None:
            reconciler.act("delete %s %s" % (kind, name), backend.remove_queue, name)
        reconciler.record_diff(name, before, None)
        return {"name": name, "backend": backend.name, "queue": None}

    before = _queue_view(backend, current, spec)
    expected = _queue_expected(backend, spec)
    if current is None:
        reconciler.act("create %s %s for %s" % (kind, name, spec["nodeset"] or spec["property"]), backend.add_queue, spec)
    elif not _queue_matches(before, expected):
        changed = sorted(key for key in expected if key != "name" and not _queue_matches({key: before.get(key)}, {key: expected[key]}))
        reconciler.act("update %s %s (%s)" % (kind, name, ", ".join(changed)), backend.update_queue, current, spec)
    reconciler.record_diff(name, before, expected)
    if reconciler.changed and not reconciler.check_mode:
        final = backend.queue(name)
        if final is None:
            raise FabricError("%s %s is not there after creating it" % (kind, name), field="name")
        return {"name": name, "backend": backend.name, "queue": final.as_dict()}
    return {"name": name, "backend": backend.name, "queue": current.as_dict() if current else dict(expected)}
