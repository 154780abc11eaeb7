"""vm_accounting against the live qemu:///system: a VM started paused (a real QEMU process with CPU
time, no guest code run) is opened, updated, closed when removed, and exported once.

The VM is named ``sgops-acct-*`` and removed afterwards."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils.vm import spec as vm_spec
from libvirt_objects import remove
from modrun import run_module

libvirt = pytest.importorskip("libvirt")

URI = "qemu:///system"
VM_NAME = "sgops-acct-1"


@pytest.fixture
def paused_vm():
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    conn = libvirt.open(URI)
    remove(conn, domains=[VM_NAME])
    spec, _seed = vm_spec.normalise({"name": VM_NAME, "virt_type": "qemu", "vcpus": 1, "memory_mb": 64,
                                     "console_log": "",
                                     "metadata": {"vo": "lhcb", "trust_class": 2, "image_id": "sgops-image"}})
    dom = conn.defineXML(vm_spec.to_xml(spec))
    dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    yield conn, dom
    remove(conn, domains=[VM_NAME])
    conn.close()


def test_a_vm_life_is_recorded_and_exported_once(tmp_path, paused_vm):
    conn, dom = paused_vm
    uuid = dom.UUIDString()
    args = {"db": str(tmp_path / "acc.sqlite"), "hypervisor": "sgops-hv", "site_name": "SGOPS-TEST",
            "apel_dir": str(tmp_path / "apel"), "jsonl": str(tmp_path / "usage.jsonl")}
    first = run_module("vm_accounting", args)
    assert not first.failed, first
    (key,) = [k for k in first["opened"] if k.startswith(uuid)]
    assert first["changed"]
    (record,) = [r for r in first["running"] if r["key"] == key]
    assert (record["vo"], record["image_id"], record["cores"], record["memory_mb"]) == ("lhcb", "sgops-image", 1, 64)

    again = run_module("vm_accounting", args)
    # Other VMs of this shared host may come and go between runs: only they may make a run change.
    assert key not in again["opened"] + again["closed"] + again["exported"] and again["updated"] >= 1
    assert again["changed"] == bool(again["opened"] or again["closed"] or again["exported"])

    dom.destroy()
    dom.undefine()
    checked = run_module("vm_accounting", args, check=True)
    assert checked["changed"] and key in checked["closed"] and key in checked["exported"]
    assert not os.path.exists(tmp_path / "usage.jsonl")  # check mode wrote nothing

    closing = run_module("vm_accounting", args)
    assert key in closing["closed"] and key in closing["exported"]
    lines = [json.loads(line) for line in (tmp_path / "usage.jsonl").read_text().splitlines()]
    (line,) = [entry for entry in lines if entry["key"] == key]
    assert line["status"] == "completed" and line["end"] >= line["start"] and line["hypervisor"] == "sgops-hv"
    (message,) = os.listdir(tmp_path / "apel")
    text = (tmp_path / "apel" / message).read_text()
    assert text.startswith("APEL-cloud-message: v0.4\n") and "VMUUID: %s\n" % key in text
    assert "SiteName: SGOPS-TEST\n" in text and "FQAN: /lhcb\n" in text

    last = run_module("vm_accounting", args)
    assert key not in last["exported"]
    keys = [json.loads(line)["key"] for line in (tmp_path / "usage.jsonl").read_text().splitlines()]
    assert keys.count(key) == 1


def test_bad_input_names_the_field(tmp_path):
    result = run_module("vm_accounting", {"db": str(tmp_path / "acc.sqlite"), "apel_dir": str(tmp_path)})
    assert result.failed and result["field"] == "site_name"
