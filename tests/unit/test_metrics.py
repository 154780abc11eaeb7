"""The Prometheus textfile: VMs per VO and state, slots, image age, events; input checks."""

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.operations import metrics


def vm(vo, state="running", name=None):
    return {"name": name or "wn1-%s-1" % vo, "managed": True, "state": state, "metadata": {"vo": vo}}


def samples(text, name):
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line.startswith(name + "{")}


def test_vms_per_vo_and_state_and_free_slots():
    vms = [vm("atlas"), vm("atlas", "shutoff", name="wn1-atlas-2"), vm("lhcb"), vm("lhcb", name="wn9-lhcb-1"),
           {"name": "other", "managed": False, "state": "running", "metadata": {}}]
    plan = metrics.check_slots([{"name": "wn1-atlas-1", "vo": "atlas"}, {"name": "wn1-atlas-2", "vo": "atlas"},
                                {"name": "wn1-lhcb-1", "vo": "lhcb"}, {"name": "wn1-alice-1", "vo": "alice"}])
    text = metrics.render(vms, [], {"slots": plan}, "wn1")
    vm_counts = samples(text, "skygrid_vms")
    assert vm_counts['skygrid_vms{hypervisor="wn1",state="running",vo="atlas"}'] == 1
    assert vm_counts['skygrid_vms{hypervisor="wn1",state="shutoff",vo="atlas"}'] == 1
    assert vm_counts['skygrid_vms{hypervisor="wn1",state="running",vo="lhcb"}'] == 2
    assert vm_counts['skygrid_vms{hypervisor="wn1",state="running",vo="alice"}'] == 0
    assert len(vm_counts) == 3 * 3  # every VO with every state, unmanaged VMs left out
    free = samples(text, "skygrid_slots_free")
    assert free == {'skygrid_slots_free{hypervisor="wn1",vo="alice"}': 1,
                    'skygrid_slots_free{hypervisor="wn1",vo="atlas"}': 1,  # its second VM is stopped
                    'skygrid_slots_free{hypervisor="wn1",vo="lhcb"}': 0}  # the lhcb VM not of the plan counts not


def test_no_slot_metrics_without_a_plan_and_the_text_is_stable():
    text = metrics.render([vm("atlas")], [], {}, "wn1")
    assert "skygrid_slots_free" not in text
    assert text == metrics.render([vm("atlas")], [], {}, "wn1")
    assert text.endswith("\n") and "# TYPE skygrid_vms gauge" in text


def test_image_publication_time():
    images = [{"vo": "atlas", "image_id": "cernvm", "image_version": "4.8", "volume": "atlas-cernvm-4.8.qcow2",
               "staged_at": "2026-11-27T10:00:00Z"}, {"vo": "lhcb", "volume": "x", "staged_at": None}]
    text = metrics.render([], images, {}, "wn1")
    assert samples(text, "skygrid_image_staged_timestamp_seconds") == {
        'skygrid_image_staged_timestamp_seconds{hypervisor="wn1",image_id="cernvm",version="4.8",vo="atlas",'
        'volume="atlas-cernvm-4.8.qcow2"}': 1795773600}  # 2026-11-27T10:00:00Z


def test_events_keep_the_last_success_and_failure():
    state = {}
    state = metrics.record_event(state, metrics.check_event({"name": "converge", "result": "success"}), 100)
    state = metrics.record_event(state, metrics.check_event({"name": "converge", "result": "failure",
                                                             "reason": "drain timed out"}), 200)
    state = metrics.record_event(state, metrics.check_event({"name": "staging", "result": "failure", "vo": "atlas",
                                                             "reason": "sha512 mismatch"}), 150)
    assert state["events"]["converge"]["last_failure_reason"] == "drain timed out"
    text = metrics.render([], [], state, "wn1")
    assert samples(text, "skygrid_last_success_timestamp_seconds") == {
        'skygrid_last_success_timestamp_seconds{event="converge",hypervisor="wn1",vo=""}': 100}
    assert samples(text, "skygrid_last_failure_timestamp_seconds") == {
        'skygrid_last_failure_timestamp_seconds{event="converge",hypervisor="wn1",vo=""}': 200,
        'skygrid_last_failure_timestamp_seconds{event="staging",hypervisor="wn1",vo="atlas"}': 150}
    assert samples(text, "skygrid_last_result_success") == {
        'skygrid_last_result_success{event="converge",hypervisor="wn1",vo=""}': 0,
        'skygrid_last_result_success{event="staging",hypervisor="wn1",vo="atlas"}': 0}


def test_label_values_are_escaped():
    text = metrics.render([vm('a"b\\c')], [], {}, "wn1")
    assert 'vo="a\\"b\\\\c"' in text


@pytest.mark.parametrize("call, field", [
    (lambda: metrics.check_event({"name": "deploy", "result": "success"}), "event.name"),
    (lambda: metrics.check_event({"name": "converge", "result": "ok"}), "event.result"),
    (lambda: metrics.check_slots([{"vo": "atlas", "name": "a"}, {"name": "x"}]), "slots[1]"),
    (lambda: metrics.check_path("metrics.prom", "textfile"), "textfile"),
])
def test_bad_input_names_the_field(call, field):
    with pytest.raises(FabricError) as err:
        call()
    assert err.value.field == field
