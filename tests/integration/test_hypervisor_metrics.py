"""hypervisor_metrics against the live qemu:///system: a defined VM with provenance and a directory pool
holding a staged image's provenance record. Objects are named ``sgops-met-*`` and removed afterwards."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils.vm import spec as vm_spec
from libvirt_objects import remove
from modrun import run_module

libvirt = pytest.importorskip("libvirt")

URI = "qemu:///system"
VM_NAME = "sgops-met-atlas-1"
POOL = "sgops-met-pool"
POOL_DIR = "/var/lib/skygrid-test/sgops-met-pool"


def _remove(conn):
    remove(conn, domains=[VM_NAME], pools=[POOL])
    shutil.rmtree(POOL_DIR, ignore_errors=True)


@pytest.fixture
def host():
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    conn = libvirt.open(URI)
    _remove(conn)
    spec, _seed = vm_spec.normalise({"name": VM_NAME, "virt_type": "qemu", "memory_mb": 64,
                                     "metadata": {"vo": "atlas", "trust_class": 2, "slot_host": "sgops"}})
    conn.defineXML(vm_spec.to_xml(spec))
    provenance = os.path.join(POOL_DIR, ".skygrid", "provenance")
    os.makedirs(provenance)
    with open(os.path.join(provenance, "atlas-cernvm-4.8.qcow2.provenance.json"), "w") as handle:
        json.dump({"vo": "atlas", "image_id": "cernvm", "image_version": "4.8", "volume": "atlas-cernvm-4.8.qcow2",
                   "staged_at": "2026-11-27T10:00:00Z"}, handle)
    pool = conn.storagePoolDefineXML("<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>"
                                     % (POOL, POOL_DIR), 0)
    pool.create(0)
    yield conn
    _remove(conn)
    conn.close()


def test_textfile_written_atomically_idempotent_and_events_recorded(tmp_path, host):
    args = {"textfile": str(tmp_path / "prom" / "skygrid.prom"), "state_file": str(tmp_path / "state.json"),
            "hypervisor": "sgops-hv", "image_pools": [POOL], "slots": [{"name": VM_NAME, "vo": "atlas"}, {"name": "sgops-met-lhcb-1", "vo": "lhcb"}]}
    checked = run_module("hypervisor_metrics", args, check=True, diff=True)
    assert checked["changed"] and not os.path.exists(tmp_path / "prom") and not os.path.exists(tmp_path / "state.json")
    assert 'skygrid_vms{hypervisor="sgops-hv",state="shutoff",vo="atlas"}' in checked["diff"]["after"][args["textfile"]]

    first = run_module("hypervisor_metrics", args)
    assert first["changed"] and not first.failed, first
    text = (tmp_path / "prom" / "skygrid.prom").read_text()
    assert 'skygrid_vms{hypervisor="sgops-hv",state="shutoff",vo="atlas"} ' in text
    assert 'skygrid_slots_free{hypervisor="sgops-hv",vo="atlas"} 1' in text  # its VM is not running
    assert 'skygrid_slots_free{hypervisor="sgops-hv",vo="lhcb"} 1' in text
    assert ('skygrid_image_staged_timestamp_seconds{hypervisor="sgops-hv",image_id="cernvm",version="4.8",vo="atlas",'
            'volume="atlas-cernvm-4.8.qcow2"} 1795773600') in text
    assert os.listdir(tmp_path / "prom") == ["skygrid.prom"]  # no temporary file left

    again = run_module("hypervisor_metrics", dict(args, slots=None))  # the plan is remembered
    assert not again["changed"], again["actions"]

    failed = run_module("hypervisor_metrics", dict(args, event={"name": "converge", "result": "failure",
                                                                "reason": "drain timed out"}))
    assert failed["changed"] and failed["events"]["converge"]["last_failure_reason"] == "drain timed out"
    assert 'skygrid_last_result_success{event="converge",hypervisor="sgops-hv",vo=""} 0' in (
        tmp_path / "prom" / "skygrid.prom").read_text()


def test_bad_input_names_the_field(tmp_path):
    result = run_module("hypervisor_metrics", {"textfile": "skygrid.prom", "state_file": str(tmp_path / "s.json")})
    assert result.failed and result["field"] == "textfile"
