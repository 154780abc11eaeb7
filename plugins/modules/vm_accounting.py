#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vm_accounting
short_description: Keep one usage record per VM life and export them as APEL cloud records and JSON lines
version_added: "0.1.0"
description:
  - Samples the VMs of the hypervisor (CPU time from libvirt's domain stats, cores, memory, disk) and keeps
    one usage record per VM life in an SQLite database O(db) - VM UUID, name, VO, trust class, image id
    and sha512 from the VM's provenance metadata, start, end, wall time, CPU time, cores, memory, disk and
    hypervisor.
  - A life opens the first time the module sees the VM running and closes at the first run that no longer
    finds it; its end is the last time it was seen. Run it periodically (cron or a timer, for running VMs)
    and right before and right after removing VMs (the M(skygrid.fabric.vm) removals of the
    C(skygrid.fabric.vm_slots) role do this), so the end is exact to seconds.
  - Exports the closed records once each, as APEL cloud usage messages (C(APEL-cloud-message) v0.4, one
    message per batch in O(apel_dir), the APEL SSM's outgoing directory queue) and/or as lines of O(jsonl). A record
    is never lost or exported twice across re-runs and kills (a batch protocol with the database, see
    C(docs/OPERATIONS.md)).
author:
  - skygrid.fabric contributors (@skygrid)
extends_documentation_fragment:
  - skygrid.fabric.libvirt
attributes:
  check_mode:
    support: full
    description: Reports the records it would open, close and export; changes neither database nor files.
  diff_mode:
    support: none
    description: The records opened, closed and exported are returned instead.
options:
  db:
    description: The SQLite database of usage records (absolute path; created with its directory).
    type: path
    default: /var/lib/skygrid/accounting.sqlite
  hypervisor:
    description: This host's name in the records. Defaults to the host's FQDN.
    type: str
  managed_only:
    description: Account only VMs that M(skygrid.fabric.vm) manages.
    type: bool
    default: true
  apel_dir:
    description:
      - The APEL SSM's outgoing directory (C(ssmsend)'s C(path)); one APEL cloud v0.4 message per export batch is
        written into it in the layout of the directory queue ssmsend reads (dirq QueueSimple). Needs O(site_name).
    type: path
  apel_running:
    description:
      - Also publish the running VMs' records as APEL C(started) records, every O(apel_running_interval)
        seconds, so a VM that runs for months is accounted before it ends (the APEL server keeps the latest
        record per VMUUID; the C(completed) record replaces them). Needs O(apel_dir).
    type: bool
    default: false
  apel_running_interval:
    description: Seconds between two publications of the started records (at least 60).
    type: int
    default: 86400
  site_name:
    description: The site's GOCDB name (C(SiteName) of the APEL records).
    type: str
  cloud_compute_service:
    description: C(CloudComputeService) of the APEL records. Defaults to O(hypervisor).
    type: str
  benchmark_type:
    description: C(BenchmarkType) of the APEL records, such as C(HEPSPEC06).
    type: str
  benchmark:
    description: C(Benchmark) of the APEL records (the benchmark value of a VM core).
    type: float
  jsonl:
    description: File to append one JSON line per exported record to (absolute path).
    type: path
seealso:
  - module: skygrid.fabric.vm_info
"""

EXAMPLES = r"""
- name: Collect usage and export the records of VMs gone (run from cron every 10 minutes)
  skygrid.fabric.vm_accounting:
    site_name: NIKHEF-ELPROD
    apel_dir: /var/spool/apel/outgoing
    jsonl: /var/log/skygrid/usage.jsonl
    benchmark_type: HEPSPEC06
    benchmark: 10.5
  register: usage

- name: Show the records closed by this run
  ansible.builtin.debug:
    var: usage.closed
"""

RETURN = r"""
opened:
  description: Keys (C(<VM UUID>/<hypervisor>/<start>)) of the records this run opened.
  returned: always
  type: list
  elements: str
closed:
  description: Keys of the records this run closed (their VMs are gone).
  returned: always
  type: list
  elements: str
exported:
  description: Keys of the records this run exported (in check mode, would export).
  returned: always
  type: list
  elements: str
running_exported:
  description: Keys of the running VMs' records this run published as APEL C(started) records (O(apel_running)).
  returned: always
  type: list
  elements: str
updated:
  description: How many open records got a new CPU time and last-seen time.
  returned: always
  type: int
running:
  description: The open records of this hypervisor, as exported (status C(started), C(end) null).
  returned: always
  type: list
  elements: dict
  sample:
    - key: 0b7c2f7e-8d7a-4b1e-9a41-2f1e5f3c9d10/wn042.example.org/1764592012
      vm_name: wn042-atlas-1
      vo: atlas
      trust_class: "2"
      image_id: skygrid-demo-atlas-worker
      status: started
      start: 1764592012
      wall_s: 3600
      cpu_s: 27400
      cores: 8
      memory_mb: 16384
      disk_gb: 20
"""

import socket
import time

from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.connection import connection
from ansible_collections.skygrid.fabric.plugins.module_utils.module_base import FabricModule
from ansible_collections.skygrid.fabric.plugins.module_utils.operations.usage import account


class VmAccountingModule(FabricModule):
    supports_check_mode = True
    argument_spec = dict(
        uri=dict(type="str", default="qemu:///system"),
        db=dict(type="path", default="/var/lib/skygrid/accounting.sqlite"),
        hypervisor=dict(type="str"),
        managed_only=dict(type="bool", default=True),
        apel_dir=dict(type="path"),
        apel_running=dict(type="bool", default=False),
        apel_running_interval=dict(type="int", default=86400),
        site_name=dict(type="str"),
        cloud_compute_service=dict(type="str"),
        benchmark_type=dict(type="str"),
        benchmark=dict(type="float"),
        jsonl=dict(type="path"),
    )

    def run(self):
        params = dict(self.params, hypervisor=self.params["hypervisor"] or socket.getfqdn())
        with connection(params["uri"], readonly=True) as conn:
            result = account(conn, params, int(time.time()), check_mode=self.module.check_mode)
        if result["opened"] or result["closed"] or result["exported"] or result["running_exported"]:
            self.reconciler.act("accounting: %d opened, %d closed, %d exported, %d published as started"
                                % (len(result["opened"]), len(result["closed"]), len(result["exported"]),
                                   len(result["running_exported"])))
        return result


def main():
    VmAccountingModule().execute()


if __name__ == "__main__":
    main()
