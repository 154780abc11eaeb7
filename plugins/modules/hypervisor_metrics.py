#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: hypervisor_metrics
short_description: Write a hypervisor's VMs, slots, images and last converge as a Prometheus textfile
version_added: "0.1.0"
description:
  - Writes, for node_exporter's textfile collector, the VMs per VO and run state, the slots planned and free
    per VO, when each staged VO image was published (its age), and the time and result of the last converge,
    staging and verification - atomically (a temporary file renamed over O(textfile)).
  - The text holds no time of its own, so a run on an unchanged host changes nothing; node_exporter
    exports the file's modification time (C(node_textfile_mtime_seconds)) for a staleness alert.
  - Events (O(event)) and the last slot plan (O(slots)) are kept in O(state_file), so a periodic run
    (from cron) keeps reporting them. Metrics and alert rules are in C(docs/OPERATIONS.md).
author:
  - skygrid.fabric contributors (@skygrid)
extends_documentation_fragment:
  - skygrid.fabric.libvirt
attributes:
  check_mode:
    support: full
    description: Reports whether the textfile would change; writes nothing.
  diff_mode:
    support: full
    description: The textfile before and after.
options:
  textfile:
    description: The textfile to write (absolute path, in node_exporter's C(--collector.textfile.directory), ending in C(.prom)).
    type: path
    default: /var/lib/prometheus/node-exporter/skygrid.prom
  state_file:
    description: Where the recorded events and the last slot plan are kept (absolute path).
    type: path
    default: /var/lib/skygrid/metrics-state.json
  hypervisor:
    description: The C(hypervisor) label. Defaults to the host's FQDN.
    type: str
  slots:
    description: This host's slot plan (the C(vm_slots_plan) of the C(skygrid.fabric.vm_slots) role, items with C(name) and C(vo)); kept for later runs.
    type: list
    elements: dict
  image_pools:
    description: Directory pools holding staged VO images, whose provenance records give each image's publication time.
    type: list
    elements: str
    default: [vo-images]
  event:
    description: Record an event before writing the textfile.
    type: dict
    suboptions:
      name:
        description: What happened.
        type: str
        required: true
        choices: [converge, staging, verification]
      result:
        description: How it ended.
        type: str
        required: true
        choices: [success, failure]
      vo:
        description: The VO it concerns (staging, verification), if any.
        type: str
      reason:
        description: Why it failed (returned, kept in O(state_file); not a metric).
        type: str
seealso:
  - module: skygrid.fabric.vm_info
  - module: skygrid.fabric.vm_accounting
"""

EXAMPLES = r"""
- name: Refresh this hypervisor's metrics (from cron)
  skygrid.fabric.hypervisor_metrics:

- name: Record a successful converge with the slot plan
  skygrid.fabric.hypervisor_metrics:
    slots: "{{ vm_slots_plan }}"
    event: {name: converge, result: success}
"""

RETURN = r"""
textfile:
  description: The textfile's path.
  returned: always
  type: str
events:
  description: The recorded events (last run, result, success and failure times, failure reason) by name and VO.
  returned: always
  type: dict
"""

import os
import socket
import time

from ansible_collections.skygrid.fabric.plugins.module_utils.images.pool_store import PoolStore
from ansible_collections.skygrid.fabric.plugins.module_utils.files import write_atomic
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.connection import connection, lookup
from ansible_collections.skygrid.fabric.plugins.module_utils.module_base import FabricModule
from ansible_collections.skygrid.fabric.plugins.module_utils.operations import metrics
from ansible_collections.skygrid.fabric.plugins.module_utils.vm.report import describe_all


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, text)


class HypervisorMetricsModule(FabricModule):
    supports_check_mode = True
    argument_spec = dict(
        uri=dict(type="str", default="qemu:///system"),
        textfile=dict(type="path", default="/var/lib/prometheus/node-exporter/skygrid.prom"),
        state_file=dict(type="path", default="/var/lib/skygrid/metrics-state.json"),
        hypervisor=dict(type="str"),
        slots=dict(type="list", elements="dict"),
        image_pools=dict(type="list", elements="str", default=["vo-images"]),
        event=dict(type="dict", options=dict(
            name=dict(type="str", required=True, choices=list(metrics.EVENTS)),
            result=dict(type="str", required=True, choices=list(metrics.RESULTS)),
            vo=dict(type="str"),
            reason=dict(type="str"),
        )),
    )

    def _images(self, conn):
        records = []
        for index, name in enumerate(self.params["image_pools"]):
            pool = lookup(conn.storagePoolLookupByName, name)
            if pool is None or not pool.isActive():
                self.reconciler.warn("image_pools[%d]: storage pool '%s' is not there or not active; its images "
                                     "are not in the metrics" % (index, name))
                continue
            store = PoolStore(pool, field="image_pools[%d]" % index)
            records.extend(store.records())
            for warning in store.warnings:
                self.reconciler.warn(warning)
        return records

    def run(self):
        textfile = metrics.check_path(self.params["textfile"], "textfile")
        state_file = metrics.check_path(self.params["state_file"], "state_file")
        event = metrics.check_event(self.params["event"])
        slots = metrics.check_slots(self.params["slots"])
        state = metrics.read_state(state_file)
        new_state = dict(state)
        if slots is not None:
            new_state["slots"] = slots
        if event is not None:
            new_state = metrics.record_event(new_state, event, int(time.time()))
        with connection(self.params["uri"], readonly=True) as conn:
            text = metrics.render(describe_all(conn), self._images(conn), new_state,
                                  self.params["hypervisor"] or socket.getfqdn())
        if new_state != state:
            parts = [("slot plan", new_state.get("slots") != state.get("slots")),
                     ("%s event" % (event or {}).get("name"), event is not None)]
            what = " and ".join(part for part, given in parts if given)
            self.reconciler.act("record the %s in %s" % (what, state_file), _write, state_file,
                                metrics.state_text(new_state))
        before = metrics.read_textfile(textfile)
        if text != before:
            self.reconciler.act("write %s" % textfile, _write, textfile, text)
            self.reconciler.record_diff(textfile, before or "", text)
        return {"textfile": textfile, "events": new_state.get("events", {})}


def main():
    HypervisorMetricsModule().execute()


if __name__ == "__main__":
    main()
