"""Usage records: one per VM life, CPU across restarts, and exactly-once export across re-runs and kills."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils.operations import apel, usage
from ansible_collections.skygrid.fabric.plugins.module_utils.operations.usage_store import UsageStore

SHA = "ab" * 64
GIB_NS = 10 ** 9


def vm(uuid, cpu_s=None, running=True, name=None, vo="atlas"):
    return {"uuid": uuid, "name": name or "wn1-%s-%s" % (vo, uuid), "running": running,
            "cpu_ns": cpu_s * GIB_NS if cpu_s is not None else None, "cores": 4, "memory_mb": 8192, "disk_gb": 20,
            "metadata": {"vo": vo, "trust_class": "2", "image_id": "img-" + vo, "image_sha512": SHA}}


@pytest.fixture
def store(tmp_path):
    opened = UsageStore(str(tmp_path / "acc.sqlite"))
    yield opened
    opened.close()


def test_a_life_opens_updates_and_closes_at_the_last_time_seen(store):
    assert store.collect("wn1", [vm("u1", cpu_s=5, running=True)], now=1000)["opened"] == ["u1/wn1/1000"]
    again = store.collect("wn1", [vm("u1", cpu_s=65)], now=1600)
    assert again == {"opened": [], "closed": [], "updated": 1}
    assert store.collect("wn1", [], now=2200)["closed"] == ["u1/wn1/1000"]
    (record,) = store.records()
    assert record["status"] == "completed" and record["start"] == 1000 and record["end"] == 1600
    assert record["wall_s"] == 600 and record["cpu_s"] == 65
    assert (record["vo"], record["trust_class"], record["image_id"], record["image_sha512"]) == ("atlas", "2", "img-atlas", SHA)
    assert (record["cores"], record["memory_mb"], record["disk_gb"], record["hypervisor"]) == (4, 8192, 20, "wn1")
    assert store.collect("wn1", [], now=2800) == {"opened": [], "closed": [], "updated": 0}  # closed once


def test_cpu_time_is_kept_across_a_stop_and_a_restart(store):
    store.collect("wn1", [vm("u1", cpu_s=100)], now=0)
    store.collect("wn1", [vm("u1", cpu_s=130)], now=60)
    store.collect("wn1", [vm("u1", running=False)], now=120)   # stopped: 130 s banked
    store.collect("wn1", [vm("u1", cpu_s=10)], now=180)        # a new QEMU process
    store.collect("wn1", [vm("u1", cpu_s=5)], now=240)         # and another (restarted between samples)
    store.collect("wn1", [vm("u1", cpu_s=25)], now=300)
    assert store.records()[0]["cpu_s"] == 130 + 10 + 25


def test_a_vm_seen_only_stopped_opens_nothing_and_other_hypervisors_are_untouched(store):
    assert store.collect("wn1", [vm("u1", running=False)], now=0)["opened"] == []
    store.collect("wn2", [vm("u2", cpu_s=1)], now=0)
    assert store.collect("wn1", [], now=10)["closed"] == []
    assert [r["status"] for r in store.records()] == ["started"]


def test_the_same_vm_back_on_a_hypervisor_is_a_new_life(store):
    store.collect("wn1", [vm("u1", cpu_s=1)], now=0)
    store.collect("wn1", [], now=10)          # migrated away
    store.collect("wn1", [vm("u1", cpu_s=1)], now=20)  # and back
    assert [r["key"] for r in store.records()] == ["u1/wn1/0", "u1/wn1/20"]


def test_check_mode_changes_nothing(store):
    assert store.collect("wn1", [vm("u1", cpu_s=1)], now=0, commit=False)["opened"] == ["u1/wn1/0"]
    assert store.records() == []


def params(tmp_path, **extra):
    return dict({"hypervisor": "wn1", "site_name": "TEST-SITE", "apel_dir": str(tmp_path / "apel"),
                 "jsonl": str(tmp_path / "usage.jsonl")}, **extra)


def exported_keys(tmp_path):
    lines = (tmp_path / "usage.jsonl").read_text().splitlines()
    keys = [json.loads(line)["key"] for line in lines]
    apel_keys = [line.split(": ", 1)[1] for path in apel_messages(tmp_path)
                 for line in open(path).read().splitlines() if line.startswith("VMUUID: ")]
    return keys, apel_keys


def apel_messages(tmp_path):
    """The messages of the APEL outgoing directory queue (dirq QueueSimple: <8 hex>/<14 hex>)."""
    found = []
    for directory in sorted(os.listdir(tmp_path / "apel")):
        assert re.match(r"^[0-9a-f]{8}$", directory), directory
        for name in sorted(os.listdir(tmp_path / "apel" / directory)):
            assert re.match(r"^[0-9a-f]{14}$", name), name  # no temporary file left either
            found.append(str(tmp_path / "apel" / directory / name))
    return found


def test_each_closed_record_is_exported_once_across_re_runs(tmp_path, store):
    store.collect("wn1", [vm("u1", cpu_s=1), vm("u2", cpu_s=1)], now=0)
    store.collect("wn1", [vm("u2", cpu_s=2)], now=60)
    assert usage.export(store, params(tmp_path), now=60) == ["u1/wn1/0"]
    assert usage.export(store, params(tmp_path), now=70) == []
    store.collect("wn1", [], now=120)
    assert usage.export(store, params(tmp_path), now=120) == ["u2/wn1/0"]
    assert exported_keys(tmp_path) == (["u1/wn1/0", "u2/wn1/0"], ["u1/wn1/0", "u2/wn1/0"])


KILLED_EXPORT = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.skygrid.fabric.plugins.module_utils.operations import usage
from ansible_collections.skygrid.fabric.plugins.module_utils.operations.usage_store import UsageStore
store = UsageStore(sys.argv[2])
store.finish_batch = lambda batch_id, now: os.kill(os.getpid(), signal.SIGKILL)  # killed before the mark
usage.export(store, {"hypervisor": "wn1", "site_name": "TEST-SITE", "apel_dir": sys.argv[3], "jsonl": sys.argv[4]}, 60)
"""


def test_a_kill_between_writing_and_marking_exports_nothing_twice(tmp_path):
    db = str(tmp_path / "acc.sqlite")
    store = UsageStore(db)
    store.collect("wn1", [vm("u1", cpu_s=1)], now=0)
    store.collect("wn1", [], now=60)
    store.close()
    collections = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                               "collections")
    proc = subprocess.run([sys.executable, "-c", KILLED_EXPORT, collections, db, str(tmp_path / "apel"),
                           str(tmp_path / "usage.jsonl")], check=False)
    assert proc.returncode == -signal.SIGKILL
    assert exported_keys(tmp_path) == (["u1/wn1/0"], ["u1/wn1/0"])  # written, not marked
    store = UsageStore(db)
    store.collect("wn1", [vm("u2", cpu_s=1)], now=100)
    store.collect("wn1", [], now=160)
    # The re-run redoes the unfinished batch (same file, lines cut back and rewritten), then the new one.
    assert usage.export(store, params(tmp_path), now=200) == ["u1/wn1/0", "u2/wn1/100"]
    assert usage.export(store, params(tmp_path), now=300) == []
    store.close()
    assert exported_keys(tmp_path) == (["u1/wn1/0", "u2/wn1/100"], ["u1/wn1/0", "u2/wn1/100"])
    assert len(apel_messages(tmp_path)) == 2


def test_a_kill_in_the_middle_of_the_append_leaves_no_partial_line(tmp_path, store):
    (tmp_path / "usage.jsonl").write_text('{"key": "earlier"}\n')
    store.collect("wn1", [vm("u1", cpu_s=1)], now=0)
    store.collect("wn1", [], now=60)
    store.begin_batch(60, str(tmp_path / "usage.jsonl"))
    with open(tmp_path / "usage.jsonl", "a") as handle:  # what a killed append leaves
        handle.write('{"key": "u1/wn1/0", "vo": "at')
    assert usage.export(store, params(tmp_path), now=70) == ["u1/wn1/0"]
    assert exported_keys(tmp_path) == (["earlier", "u1/wn1/0"], ["u1/wn1/0"])


def test_running_vms_are_published_as_started_records_once_per_interval(tmp_path, store):
    options = params(tmp_path, apel_running=True, apel_running_interval=3600)
    store.collect("wn1", [vm("u1", cpu_s=100)], now=1000)
    assert usage.running_due(store, options, 1000)
    assert usage.export_running(store, options, 1000) == ["u1/wn1/1000"]
    assert not usage.running_due(store, options, 1000 + 3599) and usage.running_due(store, options, 1000 + 3600)
    assert not usage.running_due(store, params(tmp_path), 1000 + 3600)  # off by default
    (path,) = apel_messages(tmp_path)
    fields = dict(line.split(": ", 1) for line in open(path).read().splitlines()[1:-1])
    assert fields["Status"] == "started" and fields["EndTime"] == "None" and fields["VMUUID"] == "u1/wn1/1000"
    # The completed record of the same life carries the same VMUUID: it replaces the started one at APEL.
    store.collect("wn1", [], now=5000)
    assert usage.export(store, options, 5000) == ["u1/wn1/1000"]
    texts = [open(p).read() for p in apel_messages(tmp_path)]
    assert sum("VMUUID: u1/wn1/1000\n" in t for t in texts) == 2 and sum("Status: completed" in t for t in texts) == 1
    assert usage.export_running(store, options, 9000) == [] and len(apel_messages(tmp_path)) == 2  # nothing running


@pytest.mark.parametrize("bad, field", [({"hypervisor": ""}, "hypervisor"), ({"site_name": None}, "site_name"),
                                        ({"jsonl": "usage.jsonl"}, "jsonl"),
                                        ({"apel_running": True, "apel_dir": None}, "apel_running"),
                                        ({"apel_running_interval": 5}, "apel_running_interval")])
def test_bad_parameters_name_the_field(tmp_path, bad, field):
    from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
    with pytest.raises(FabricError) as err:
        usage.check_params(params(tmp_path, db=str(tmp_path / "acc.sqlite"), **bad))
    assert err.value.field == field


def test_apel_message_has_the_v0_4_header_fields_and_record_ends():
    record = {"key": "u1/wn1/0", "vm_name": "wn1-atlas-1", "vo": "atlas", "status": "completed", "start": 0,
              "end": 600, "wall_s": 600, "cpu_s": 2300, "cores": 4, "memory_mb": 8192, "disk_gb": 20,
              "image_id": "img-atlas"}
    text = apel.message([record, dict(record, key="u2/wn1/0")], site_name="TEST-SITE", cloud_compute_service="wn1",
                        benchmark_type="HEPSPEC06", benchmark=10.5)
    lines = text.splitlines()
    assert lines[0] == "APEL-cloud-message: v0.4" and lines.count("%%") == 2 and lines[-1] == "%%"
    fields = dict(line.split(": ", 1) for line in lines[1:lines.index("%%")])
    assert fields["VMUUID"] == "u1/wn1/0" and fields["SiteName"] == "TEST-SITE" and fields["FQAN"] == "/atlas"
    assert (fields["StartTime"], fields["EndTime"], fields["WallDuration"], fields["CpuDuration"]) == ("0", "600", "600", "2300")
    assert (fields["CpuCount"], fields["Memory"], fields["Disk"], fields["ImageId"]) == ("4", "8192", "20", "img-atlas")
    assert fields["Status"] == "completed" and fields["Benchmark"] == "10.5" and fields["LocalUserId"] == "None"


def test_check_mode_creates_no_database(tmp_path):
    class NoVms:
        def getAllDomainStats(self, _stats):
            return []

        def listAllDomains(self):
            return []

    result = usage.account(NoVms(), params(tmp_path, db=str(tmp_path / "sub" / "acc.sqlite")), now=0, check_mode=True)
    assert result["exported"] == [] and not os.path.exists(tmp_path / "sub")
