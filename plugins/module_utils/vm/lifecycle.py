# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Drives VMs towards their declared state through libvirt.

Two phases per call: ``plan`` validates every VM against the host (names, sizes, pools, base
volumes, networks) before anything changes, then ``apply`` defines, updates, starts, stops or
removes them, recording each change with the Reconciler (which skips it in check mode).
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
import xml.etree.ElementTree as ET

from ansible_collections.skygrid.fabric.plugins.module_utils.images import integrity, pool_store
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt import host, storage
from ansible_collections.skygrid.fabric.plugins.module_utils.vm import spec as vm_spec
from ansible_collections.skygrid.fabric.plugins.module_utils.vm.cloud_init import build_seed
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.connection import (
    libvirt, libvirt_errors, lookup)

STATES = ("present", "running", "paused", "shutdown", "absent")
SHUTDOWN_POLL_S = 0.1
SHUTDOWN_RESEND_S = 5.0  # a guest that booted after the first ACPI event gets another


def run_state(dom):
    """running / paused / shutoff (libvirt's finer states folded into the three a spec can ask for)."""
    code = dom.state()[0]
    if code in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED, libvirt.VIR_DOMAIN_SHUTDOWN):
        return "running"
    if code in (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PMSUSPENDED):
        return "paused"
    return "shutoff"


def owned_volume_pattern(name):
    """Volume names this module creates for VM ``name``: its overlays and its seed."""
    return re.compile(r"^%s-(vd[a-z]+\.qcow2|cidata\.iso)$" % re.escape(name))


def _as_running(spec):
    """What a running VM has to match: its disks by target and volume file name, since a running
    domain may name a disk by its file (after a migration) where the definition names pool/volume."""
    spec = dict(spec)
    spec["disks"] = [(disk["target"], disk["format"], disk["readonly"], os.path.basename(disk["volume"] or ""))
                     for disk in spec["disks"]]
    return spec


class Plan:
    """What one VM needs: its wanted spec (None for absent) and what libvirt has now."""

    def __init__(self, params, dom, current, wanted, seed_content):
        self.params = params
        self.name = params["name"]
        self.state = params["state"]
        self.dom = dom
        self.current = current
        self.wanted = wanted
        self.seed_content = seed_content
        self.result = {"name": self.name, "state": self.state, "changed": False, "restart_required": False}


class VmLifecycle:
    def __init__(self, conn, uri, reconciler):
        self.conn = conn
        self.uri = uri
        self.reconciler = reconciler
        self._virt_type = None
        self._host_limits = None
        self._planned_objects = set()  # pools and networks a check run found missing (warned once each)

    # ------------------------------------------------------------ planning

    def plan(self, params):
        name = params.get("name")
        if not name or not vm_spec.NAME_RE.match(str(name)):
            vm_spec.normalise({"name": name})  # raises the actionable name error
        state = params.get("state") or "present"
        if state not in STATES:
            raise FabricError("must be one of %s" % ", ".join(STATES), field="state")
        dom = lookup(self.conn.lookupByName, name)
        current = vm_spec.from_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) if dom else None
        if current is not None:
            current["autostart"] = bool(dom.autostart())
        if state == "absent":
            return Plan(dict(params, state=state), dom, current, None, None)
        wanted, seed = vm_spec.normalise(dict(params, virt_type=self._resolve_virt_type(params)), existing=current)
        wanted["autostart"] = bool(params.get("autostart", False))
        self._check_against_host(wanted)
        return Plan(dict(params, state=state), dom, current, wanted, seed)

    def _resolve_virt_type(self, params):
        wanted = params.get("virt_type") or "auto"
        if wanted != "auto":
            return wanted
        if self._virt_type is None:
            self._virt_type = host.resolve_virt_type(self.conn, self.uri, "auto")
        return self._virt_type

    def _pool(self, name, field):
        """The pool ``name``; in check mode None when it does not exist yet (a play's check run creates nothing,
        so the pool an earlier task defines is not there), with a warning: the real run fails without it."""
        pool = storage.pool_by_name(self.conn, name, field, missing_ok=self.reconciler.check_mode)
        if pool is None:
            self._warn_planned("%s: storage pool '%s'" % (field, name), name, "creates")
        return pool

    def _warn_planned(self, what, name, verb):
        """Once per missing pool or network of a check run: the real run needs an earlier task to make it."""
        if name not in self._planned_objects:
            self._planned_objects.add(name)
            self.reconciler.warn("%s does not exist (yet); the real run fails unless an earlier task %s it" % (what, verb))

    def _check_against_host(self, spec):
        if self._host_limits is None:
            self._host_limits = host.host_limits(self.conn, self.uri)
        cpus, memory_mb = self._host_limits
        if spec["vcpus"] > cpus:
            raise FabricError("%d vCPUs asked, but this host has %d logical CPUs; lower vcpus (the "
                              "slot plan should leave cores for the host)" % (spec["vcpus"], cpus), field="vcpus")
        if spec["memory_mb"] > memory_mb:
            raise FabricError("%d MiB asked, but this host has %d MiB; lower memory_mb"
                              % (spec["memory_mb"], memory_mb), field="memory_mb")
        for index, disk in enumerate(spec["disks"]):
            field = "disks[%d]" % index
            pool = self._pool(disk["pool"], field + ".pool")
            if pool is None:
                continue
            if disk["base_volume"] and storage.volume(pool, disk["base_volume"]) is None:
                if self.reconciler.check_mode:
                    # A play's check run stages nothing, so the image a later task uses is not there yet.
                    self.reconciler.warn("disks[%d].base_volume: volume '%s' is not in pool '%s' (yet); the "
                                         "real run fails unless it is staged first" % (index, disk["base_volume"], disk["pool"]))
                    continue
                raise FabricError("volume '%s' not found in pool '%s'; stage the image first "
                                  "(skygrid.fabric.vo_image) or correct the name"
                                  % (disk["base_volume"], disk["pool"]), field=field + ".base_volume")
            if not disk["owned"] and storage.volume(pool, disk["volume"]) is None:
                raise FabricError("volume '%s' not found in pool '%s'" % (disk["volume"], disk["pool"]),
                                  field=field + ".volume")
        if spec["seed"]:
            self._pool(spec["seed"]["pool"], "seed_pool")
        for index, nic in enumerate(spec["nics"]):
            if nic["network"] and lookup(self.conn.networkLookupByName, nic["network"]) is None:
                if self.reconciler.check_mode:
                    self._warn_planned("nics[%d].network: libvirt network '%s'" % (index, nic["network"]),
                                       nic["network"], "defines")
                    continue
                names = sorted(self.conn.listNetworks() + self.conn.listDefinedNetworks())
                raise FabricError("libvirt network '%s' does not exist (networks: %s); define it with "
                                  "skygrid.fabric.libvirt_network or correct the name"
                                  % (nic["network"], ", ".join(names) or "none"),
                                  field="nics[%d].network" % index)

    # ------------------------------------------------------------ applying

    def apply_all(self, plans, workers=1):
        """Apply every plan, ``workers`` VMs at a time (libvirt connections are thread-safe and
        QEMU start-up dominates), merging the records in the plans' order. When some VMs fail,
        the others still finish and are reported; then the first error is raised."""
        children = [self.reconciler.child() for _plan in plans]

        def apply_one(index):
            try:
                return self.apply(plans[index], children[index]), None
            except FabricError as exc:
                return None, exc

        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(plans)))) as pool:
            outcomes = list(pool.map(apply_one, range(len(plans))))
        for child in children:
            self.reconciler.merge(child)
        errors = [error for _result, error in outcomes if error is not None]
        if errors:
            raise errors[0]
        return [result for result, _error in outcomes]

    def apply(self, plan, reconciler):
        """Drive one VM to its plan, recording its changes with its own ``reconciler``."""
        if plan.state == "absent":
            self._remove(plan, reconciler)
        else:
            self._converge_definition(plan, reconciler)
            self._converge_autostart(plan, reconciler)
            self._converge_run_state(plan, reconciler)
            plan.result["restart_required"] = self._restart_required(plan)
            plan.result["uuid"] = plan.dom.UUIDString() if plan.dom else None
            plan.result["spec"] = plan.wanted
        plan.result["changed"] = reconciler.changed
        plan.result["actions"] = list(reconciler.actions)
        reconciler.record_diff(plan.name, plan.current, plan.wanted)
        return plan.result

    def _converge_definition(self, plan, reconciler):
        wanted, current = plan.wanted, plan.current
        if current is not None:
            self._refuse_rebase(wanted, current)
            changed_keys = vm_spec.differences(wanted, current)
        else:
            changed_keys = list(wanted)
        self._ensure_volumes(plan, reconciler)
        definition_keys = [key for key in changed_keys if key != "autostart"]
        if not definition_keys:
            return
        uuid = plan.dom.UUIDString() if plan.dom else None
        verb = "update definition of VM %s (%s)" % (plan.name, ", ".join(definition_keys)) if plan.dom \
            else "define VM %s" % plan.name
        dom = reconciler.act(verb, self._define, vm_spec.to_xml(wanted, uuid=uuid))
        if dom is not None:
            plan.dom = dom
        if "metadata" in definition_keys and plan.dom is not None and not reconciler.check_mode \
                and plan.dom.isActive():
            # Metadata is bookkeeping, not hardware: update the running VM too, so no restart is needed.
            self._set_live_metadata(plan.dom, wanted)

    def _define(self, xml):
        with libvirt_errors("defining the domain"):
            return self.conn.defineXML(xml)

    @staticmethod
    def _set_live_metadata(dom, spec):
        element = ET.tostring(vm_spec.metadata_element(spec, namespaced=False), encoding="unicode")
        with libvirt_errors("updating the running VM's metadata", "metadata"):
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, element, vm_spec.METADATA_PREFIX,
                            vm_spec.METADATA_NS, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    @staticmethod
    def _refuse_rebase(wanted, current):
        old = {disk["target"]: disk for disk in current["disks"]}
        for index, disk in enumerate(wanted["disks"]):
            before = old.get(disk["target"])
            if before and before["owned"] and disk["owned"] and before["base_volume"] != disk["base_volume"]:
                raise FabricError(
                    "the overlay %s sits on '%s'; it cannot be moved onto '%s' in place. Remove the VM "
                    "(state: absent) and create it again to switch images"
                    % (disk["volume"], before["base_volume"], disk["base_volume"]),
                    field="disks[%d].base_volume" % index)

    def _ensure_volumes(self, plan, reconciler):
        for index, disk in enumerate(plan.wanted["disks"]):
            if not disk["owned"]:
                continue
            field = "disks[%d]" % index
            pool = self._pool(disk["pool"], field + ".pool")
            if pool is None:  # check mode, the pool not there yet
                reconciler.act("create volume %s/%s" % (disk["pool"], disk["volume"])
                               + (" on %s" % disk["base_volume"] if disk["base_volume"] else ""), lambda: None)
                continue
            if storage.volume(pool, disk["volume"]) is not None:
                continue
            backing, capacity = None, (disk["size_gb"] or 0) * storage.GIB
            base = storage.volume(pool, disk["base_volume"]) if disk["base_volume"] else None
            if base is not None:
                path, fmt, base_capacity = storage.volume_info(base)
                backing, capacity = (path, fmt), max(capacity, base_capacity)
            reconciler.act("create volume %s/%s" % (disk["pool"], disk["volume"])
                           + (" on %s" % disk["base_volume"] if backing else ""),
                           storage.create_qcow2, pool, disk["volume"], capacity, backing, field)
        seed = plan.wanted["seed"]
        if seed:
            pool = self._pool(seed["pool"], "seed_pool")
            old_seed = plan.current["seed"] if plan.current else None
            present = storage.volume(pool, seed["volume"]) if pool is not None else None
            if present is None or old_seed != seed or not storage.is_private(present):
                reconciler.act("write NoCloud seed %s/%s" % (seed["pool"], seed["volume"]),
                               lambda: storage.upload(self.conn, pool, seed["volume"],
                                                      build_seed(plan.seed_content), "cloud_init"))

    def _converge_autostart(self, plan, reconciler):
        want = plan.wanted["autostart"]
        have = plan.current["autostart"] if plan.current else False
        if want != have:
            reconciler.act("%s autostart of VM %s" % ("enable" if want else "disable", plan.name),
                           lambda: plan.dom.setAutostart(int(want)))  # plan.dom is set by then

    def _converge_run_state(self, plan, reconciler):
        if plan.state == "present":
            return
        # In check mode a VM that would be defined has no domain yet: it counts as shut off.
        now = run_state(plan.dom) if plan.dom is not None else "shutoff"
        name = plan.name

        def domain_call(method, *args):
            # Looked up when run: in check mode a VM that would be defined has no domain object.
            return lambda: getattr(plan.dom, method)(*args)

        if now == "shutoff" and plan.state in ("running", "paused"):
            self._verify_base_images(plan)
        with libvirt_errors("changing the run state of VM %s" % name, "state"):
            if plan.state == "running":
                if now == "shutoff":
                    reconciler.act("start VM %s" % name, domain_call("create"))
                elif now == "paused":
                    reconciler.act("resume VM %s" % name, domain_call("resume"))
            elif plan.state == "paused":
                if now == "shutoff":
                    reconciler.act("start VM %s paused" % name,
                                   domain_call("createWithFlags", libvirt.VIR_DOMAIN_START_PAUSED))
                elif now == "running":
                    reconciler.act("pause VM %s" % name, domain_call("suspend"))
            elif plan.state == "shutdown" and now != "shutoff":
                reconciler.act("shut down VM %s" % name, self._shutdown, plan)

    def _verify_base_images(self, plan):
        """Before a VM starts on a staged image: the image's file is still the bytes its provenance record
        vouches for (re-hashed only when its size or mtime moved; images/integrity.py)."""
        for index, disk in enumerate(plan.wanted["disks"]):
            if not disk["base_volume"]:
                continue
            field = "disks[%d].base_volume" % index
            pool = self._pool(disk["pool"], field)
            staged = pool_store.staged_record(pool, disk["base_volume"]) if pool is not None else None
            if staged is None:
                continue  # not staged by vo_image (or not yet, in a check run): no record to hold it to
            path, record = staged
            integrity.require_unchanged(path, record, field, self.reconciler.warn)

    def _shutdown(self, plan):
        dom, params = plan.dom, plan.params
        timeout = float(params.get("shutdown_timeout", 120))
        if run_state(dom) == "paused":
            dom.resume()  # a paused guest cannot see the ACPI event
        deadline = time.monotonic() + timeout
        next_request = 0.0
        while time.monotonic() < deadline:
            if not dom.isActive():
                plan.result["shutdown"] = "graceful"
                return
            if time.monotonic() >= next_request:
                try:
                    dom.shutdown()
                except libvirt.libvirtError:
                    if not dom.isActive():
                        continue
                    raise
                next_request = time.monotonic() + SHUTDOWN_RESEND_S
            time.sleep(SHUTDOWN_POLL_S)
        if not dom.isActive():
            plan.result["shutdown"] = "graceful"
            return
        if params.get("force"):
            dom.destroy()
            plan.result["shutdown"] = "forced"
            return
        raise FabricError("VM %s did not shut down within %ss; raise shutdown_timeout, check that the guest "
                          "handles ACPI power-button events, or set force: true to power it off"
                          % (plan.name, params.get("shutdown_timeout", 120)), field="shutdown_timeout")

    def _restart_required(self, plan):
        if plan.dom is None or not plan.dom.isActive():
            return False
        live = _as_running(vm_spec.from_xml(plan.dom.XMLDesc(0)))
        wanted = _as_running(plan.wanted)
        return bool([key for key in vm_spec.differences(wanted, live) if key not in ("metadata", "autostart")])

    # ------------------------------------------------------------ removing

    def _remove(self, plan, reconciler):
        name = plan.name
        owned = set()
        if plan.current is not None:
            for disk in plan.current["disks"]:
                if disk["owned"]:
                    owned.add((disk["pool"], disk["volume"]))
            if plan.current["seed"]:
                owned.add((plan.current["seed"]["pool"], plan.current["seed"]["volume"]))
        if plan.dom is not None:
            with libvirt_errors("removing VM %s" % name, "state"):
                if plan.dom.isActive():
                    reconciler.act("power off VM %s" % name, plan.dom.destroy)
                flags = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                         | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
                reconciler.act("undefine VM %s" % name, plan.dom.undefineFlags, flags)
        # Also volumes left by an earlier run that stopped half-way (the domain already gone).
        owned.update(self._orphaned_volumes(name))
        for pool_name, vol_name in sorted(owned):
            pool = lookup(self.conn.storagePoolLookupByName, pool_name)
            if pool is None or not pool.isActive():
                continue
            vol = storage.volume(pool, vol_name)
            if vol is not None:
                reconciler.act("delete volume %s/%s" % (pool_name, vol_name), storage.delete, vol, "state")

    def _orphaned_volumes(self, name):
        pattern = owned_volume_pattern(name)
        found = set()
        for pool in self.conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
            for vol_name in pool.listVolumes():
                if pattern.match(vol_name):
                    found.add((pool.name(), vol_name))
        return found
