# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VM accounting on one hypervisor: sample the VMs through libvirt, keep their usage records, export
the closed ones (APEL cloud v0.4 message files and JSON lines), exactly once (see usage_store)."""

from __future__ import annotations

import os

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.files import write_atomic
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.connection import is_no_such, libvirt
from ansible_collections.skygrid.fabric.plugins.module_utils.operations import apel
from ansible_collections.skygrid.fabric.plugins.module_utils.operations.usage_store import (
    RUNNING_MESSAGE, UsageStore, append_lines_at, dirq_path)
from ansible_collections.skygrid.fabric.plugins.module_utils.vm.report import describe

GIB = 1024 ** 3


def _disk_gb(dom, vm):
    """The capacity of the VM's disks (its seed excluded), rounded up to whole GB."""
    total = 0
    for disk in vm["disks"]:
        try:
            total += dom.blockInfo(disk["target"])[0]
        except libvirt.libvirtError:
            total += (disk.get("size_gb") or 0) * GIB
    return -(-total // GIB)


def sample(conn, managed_only=True):
    """[{uuid, name, running, cpu_ns, cores, memory_mb, disk_gb, metadata}] for the VMs libvirt has now."""
    cpu = {}
    for dom, stats in conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_CPU_TOTAL):
        if "cpu.time" in stats:
            cpu[dom.UUIDString()] = int(stats["cpu.time"])
    samples = []
    for dom in conn.listAllDomains():
        try:
            vm = describe(dom)
            if managed_only and not vm["managed"]:
                continue
            running = vm["state"] != "shutoff"
            samples.append({"uuid": vm["uuid"], "name": vm["name"], "running": running,
                            "cpu_ns": cpu.get(vm["uuid"]) if running else None, "cores": vm["vcpus"],
                            "memory_mb": vm["memory_mb"], "disk_gb": _disk_gb(dom, vm), "metadata": vm["metadata"]})
        except libvirt.libvirtError as exc:
            if not is_no_such(exc, libvirt.VIR_ERR_NO_DOMAIN):
                raise
    return samples


def check_params(params):
    if not params.get("hypervisor"):
        raise FabricError("is required: the name this host has in the records (e.g. its FQDN)", field="hypervisor")
    if params.get("apel_dir") and not params.get("site_name"):
        raise FabricError("is required with apel_dir: the site's GOCDB name goes in every APEL record",
                          field="site_name")
    if params.get("apel_running") and not params.get("apel_dir"):
        raise FabricError("needs apel_dir: the started records go where the completed ones go", field="apel_running")
    if params.get("apel_running_interval", 86400) < 60:
        raise FabricError("must be at least 60 seconds, got %r" % params.get("apel_running_interval"),
                          field="apel_running_interval")
    for field in ("db", "apel_dir", "jsonl"):
        if params.get(field) and not os.path.isabs(params[field]):
            raise FabricError("must be an absolute path, got %r" % params[field], field=field)


def _apel_message(records, params):
    return apel.message(records, site_name=params["site_name"],
                        cloud_compute_service=params.get("cloud_compute_service") or params["hypervisor"],
                        benchmark_type=params.get("benchmark_type"), benchmark=params.get("benchmark"))


def _write_message(params, relative_path, text):
    path = os.path.join(params["apel_dir"], relative_path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, text)


def running_due(store, params, now):
    """Whether the started records of the running VMs are due (``apel_running``, every ``apel_running_interval`` s)."""
    if not (params.get("apel_dir") and params.get("apel_running")):
        return False
    last = store.running_published(params["hypervisor"])
    return last is None or now - last >= params.get("apel_running_interval", 86400)


def export_running(store, params, now):
    """Publish the running VMs' records as APEL ``started`` records (the APEL server keeps the latest
    record per VMUUID, so each message updates the same VMs until their ``completed`` record). Not part
    of the exactly-once batches: a message repeated after a kill only repeats an update."""
    records = store.records("end IS NULL AND hypervisor = ?", (params["hypervisor"],))
    if records:
        _write_message(params, dirq_path(now, RUNNING_MESSAGE), _apel_message(records, params))
    store.mark_running_published(params["hypervisor"], now)
    return [record["key"] for record in records]


def export(store, params, now):
    """Write every pending batch; returns the keys of the records exported."""
    exported = []
    while True:
        batch = store.begin_batch(now, params.get("jsonl"))
        if batch is None:
            return exported
        batch_id, records, offset = batch
        if params.get("apel_dir"):
            _write_message(params, store.batch_message(batch_id), _apel_message(records, params))
        if params.get("jsonl"):
            append_lines_at(params["jsonl"], offset, records)
        store.finish_batch(batch_id, now)
        exported.extend(record["key"] for record in records)


def account(conn, params, now, check_mode=False):
    """Collect this hypervisor's VMs into the records and export the closed ones (not in check mode)."""
    check_params(params)
    # Check mode creates nothing, not even an empty database.
    store = UsageStore(None if check_mode and not os.path.exists(params["db"]) else params["db"])
    try:
        collected = store.collect(params["hypervisor"], sample(conn, params.get("managed_only", True)), now,
                                  commit=not check_mode)
        due = running_due(store, params, now)
        if check_mode:
            pending = [record["key"] for record in store.pending_export()] + collected["closed"]
            exported = pending if (params.get("apel_dir") or params.get("jsonl")) else []
            running_exported = [record["key"] for record in store.records(
                "end IS NULL AND hypervisor = ?", (params["hypervisor"],))] if due else []
        else:
            exported = export(store, params, now) if (params.get("apel_dir") or params.get("jsonl")) else []
            running_exported = export_running(store, params, now) if due else []
        running = store.records("end IS NULL AND hypervisor = ?", (params["hypervisor"],))
    finally:
        store.close()
    return dict(collected, exported=exported, running=running, running_exported=running_exported)
