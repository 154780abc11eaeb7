# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Usage records as an APEL cloud message, v0.4 (the format EGI's accounting takes from sites).

Times are epoch seconds, durations seconds, Memory MB, Disk GB. VMUUID is the record key (libvirt
UUID, hypervisor, start), so each part of a migrated VM's life is its own APEL record and none
replaces another on the APEL server, which keeps the latest record per VMUUID."""

from __future__ import annotations

HEADER = "APEL-cloud-message: v0.4"
END_OF_RECORD = "%%"


def _value(value):
    if value is None or value == "":
        return "None"
    return str(value).replace("\n", " ")


def apel_fields(record, site_name, cloud_compute_service, cloud_type="skygrid.fabric (libvirt)",
                benchmark_type=None, benchmark=None):
    """The v0.4 fields of one usage record, in the order the format lists them."""
    vo = record.get("vo")
    return [
        ("VMUUID", record["key"]),
        ("SiteName", site_name),
        ("CloudComputeService", cloud_compute_service),
        ("MachineName", record["vm_name"]),
        ("LocalUserId", None),
        ("LocalGroupId", vo),
        ("GlobalUserName", None),
        ("FQAN", "/%s" % vo if vo else None),
        ("Status", record["status"]),
        ("StartTime", record["start"]),
        ("EndTime", record["end"]),
        ("SuspendDuration", None),
        ("WallDuration", record["wall_s"]),
        ("CpuDuration", record["cpu_s"]),
        ("CpuCount", record["cores"]),
        ("NetworkType", None),
        ("NetworkInbound", None),
        ("NetworkOutbound", None),
        ("PublicIPCount", None),
        ("Memory", record["memory_mb"]),
        ("Disk", record["disk_gb"]),
        ("BenchmarkType", benchmark_type),
        ("Benchmark", benchmark),
        ("StorageRecordId", None),
        ("ImageId", record["image_id"]),
        ("CloudType", cloud_type),
    ]


def message(records, **options):
    """One APEL message (one file for the APEL SSM's outgoing directory) holding ``records``."""
    lines = [HEADER]
    for record in records:
        lines.extend("%s: %s" % (key, _value(value)) for key, value in apel_fields(record, **options))
        lines.append(END_OF_RECORD)
    return "\n".join(lines) + "\n"
