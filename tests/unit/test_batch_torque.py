"""Unit tests of module_utils/batch/torque.py: parsing pbsnodes/qmgr output recorded from the live TORQUE 6.1.3
test bed (tests/fixtures/torque/, recorded by its record.sh) and the exact command lines the backend runs,
against a transcript of expected calls. The same behaviour is tested live in
tests/integration/test_batch_modules_torque.py; here are the cases the test bed cannot show on demand (an
unreachable server, a Torque 4 node) and the retry and error paths, without waiting."""

from __future__ import annotations

import os

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils.batch import get_backend
from ansible_collections.skygrid.fabric.plugins.module_utils.batch.base import CommandError
from ansible_collections.skygrid.fabric.plugins.module_utils.batch.manage import ensure_node, ensure_queue, node_spec, queue_spec
from ansible_collections.skygrid.fabric.plugins.module_utils.batch.torque import (
    TorqueBackend, parse_jobs, parse_pbsnodes_xml, parse_qmgr_print, queue_from_attrs)
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.reconcile import Reconciler
from doubles.transcript import FakeClock, Transcript

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(TESTS, "fixtures", "torque")
SRV = "torque.example.org"


def fixture(name, node=None):
    with open(os.path.join(FIXTURES, name)) as handle:
        text = handle.read()
    return text.replace("%s", node) if node else text


def node_xml(name, state="free", np=2, props="atlas,vm", jobs=None, note=None):
    parts = "<name>%s</name><state>%s</state><power_state>Running</power_state><np>%d</np>" % (name, state, np)
    if props:
        parts += "<properties>%s</properties>" % props
    parts += "<ntype>cluster</ntype>"
    if jobs:
        parts += "<jobs>%s</jobs>" % jobs
    if note:
        parts += "<note>%s</note>" % note
    return "<Data><Node>%s</Node></Data>\n" % parts


def backend(steps, clock=None):
    clock = clock or FakeClock()
    runner = Transcript(steps)
    return TorqueBackend(runner, clock=clock, sleep=clock.sleep, poll_interval=5), runner


def spec(**params):
    return node_spec(dict(params))


# ------------------------------------------------------------------------------------------ parsing


def test_pbsnodes_all_nodes_and_their_states():
    nodes = parse_pbsnodes_xml(fixture("pbsnodes_x_all.xml"))
    assert sorted(nodes) == ["sgtrq-vm1", "sgtrq-vm2", "sgtrq-vm3", "vm"]
    status = {name: node.status for name, node in nodes.items()}
    # vm3 was just created: the server's own offline until it sends the MOM list out is not a drain
    assert status == {"vm": "online", "sgtrq-vm1": "draining", "sgtrq-vm2": "drained", "sgtrq-vm3": "down"}
    assert nodes["sgtrq-vm2"].down and nodes["sgtrq-vm2"].unschedulable
    assert nodes["sgtrq-vm3"].raw_state == "down,offline,MOM-list-not-sent" and not nodes["sgtrq-vm3"].unschedulable


def test_pbsnodes_node_details():
    nodes = parse_pbsnodes_xml(fixture("pbsnodes_x_all.xml"))
    host = nodes["vm"]
    assert (host.cores, host.properties, host.jobs, host.note) == (2, [], [], None)
    assert host.memory_mb == 24684092 // 1024
    vm1 = nodes["sgtrq-vm1"]
    assert (vm1.cores, vm1.properties, vm1.jobs) == (1, ["atlas", "vm"], ["18.vm"])
    assert vm1.raw_state == "offline,job-exclusive" and vm1.note == "drained by skygrid.fabric"
    assert nodes["sgtrq-vm2"].note == "image revoked by the VO" and nodes["sgtrq-vm2"].memory_mb is None  # down: no status
    assert parse_pbsnodes_xml(fixture("pbsnodes_x_vm1.xml"))["sgtrq-vm1"].as_dict() == vm1.as_dict()


def test_pbsnodes_new_node():
    node = parse_pbsnodes_xml(fixture("pbsnodes_x_new_node.xml"))["sgtrq-vm1"]
    assert node.status == "down" and node.properties == ["atlas", "vm"] and node.cores == 1


def test_pbsnodes_torque4_node_with_comma_space_job_list():
    # Torque 4 cannot run here (it does not build on Debian 12): this fixture is reconstructed, see the README
    node = parse_pbsnodes_xml(fixture("pbsnodes_x_wn006_torque4.xml"))["wn006.example.org"]
    assert node.jobs == ["1301.%s" % SRV, "1302.%s" % SRV]
    assert node.status == "online" and node.properties == ["batch", "highmem"]


@pytest.mark.parametrize("value,jobs", [
    ("", []),
    ("0/12.srv", ["12.srv"]),
    ("0/12.srv,1/12.srv,2/13.srv", ["12.srv", "13.srv"]),
    ("0/12.srv, 1/13.srv", ["12.srv", "13.srv"]),
    ("0-3/14[2].srv,4-7/15.srv", ["14[2].srv", "15.srv"]),
])
def test_parse_jobs(value, jobs):
    assert parse_jobs(value) == jobs


def test_pbsnodes_garbage_is_an_error():
    with pytest.raises(FabricError, match="cannot parse pbsnodes"):
        parse_pbsnodes_xml("<Data><Node>")


def test_print_queue_keeps_list_order():
    attrs = parse_qmgr_print(fixture("qmgr_print_queue_atlas.txt"))["sgtrq-atlas"]
    assert attrs["acl_groups"] == ["sgtrq-atlas", "sgtrq-prd", "sgtorque"]
    assert attrs["resources_default.neednodes"] == ["1:atlas"] and attrs["acl_group_sloppy"] == ["True"]
    queue = queue_from_attrs("sgtrq-atlas", attrs)
    assert queue.as_dict() == {"name": "sgtrq-atlas", "property": "atlas", "groups": ["sgtrq-atlas", "sgtrq-prd", "sgtorque"],
                               "accounts": [], "enabled": True, "started": True, "nodes": [], "nodeset": None}


def test_list_queue_joins_the_groups():
    lines = fixture("qmgr_list_queue_atlas.txt").splitlines()
    assert lines[0] == "Queue sgtrq-atlas" and "\tacl_groups = sgtrq-atlas,sgtrq-prd,sgtorque" in lines


def test_print_queue_acl_disabled_means_open_queue():
    queue = queue_from_attrs("sgtrq-lhcb", parse_qmgr_print(fixture("qmgr_print_queue_lhcb_disabled.txt"))["sgtrq-lhcb"])
    assert queue.groups == [] and queue.enabled is False and queue.started is True and queue.node_property == "lhcb"


@pytest.mark.parametrize("attrs,prop", [
    ({"resources_default.neednodes": ["1:atlas"]}, "atlas"),
    ({"resources_default.neednodes": ["atlas"]}, "atlas"),  # written by earlier versions (pbs_sched: a host name)
    ({"resources_default.nodes": ["2:ppn=4:lhcb"]}, "lhcb"),
    ({"resources_default.neednodes": ["1"]}, None),
    ({}, None),
])
def test_routed_property(attrs, prop):
    assert queue_from_attrs("q", attrs).node_property == prop


def test_print_node():
    attrs = parse_qmgr_print(fixture("qmgr_print_node_vm1.txt"))["sgtrq-vm1"]
    assert attrs["state"] == ["offline", "job-exclusive"]
    assert attrs["np"] == ["1"] and attrs["note"] == ["drained by skygrid.fabric"]
    assert attrs["properties"] == ["atlas", "vm"]


# ------------------------------------------------------------------------------------------ commands


def test_unknown_node_reads_as_none():
    torque, runner = backend([(["pbsnodes", "-x", "wn9"], 1, "", fixture("pbsnodes_x_unknown_node.stderr"))])
    assert torque.node("wn9") is None
    runner.assert_done()


def test_unreachable_server_is_an_error_not_absent():
    torque, runner = backend([(["pbsnodes", "-x", "wn9"], 1, "", fixture("pbsnodes_cannot_connect.stderr"))])
    with pytest.raises(CommandError, match="cannot connect"):
        torque.node("wn9")


def test_missing_command_names_the_fix():
    torque, runner = backend([(["pbsnodes", "-x", "wn9"], 127, "", "pbsnodes: command not found")])
    with pytest.raises(CommandError, match="delegate_to"):
        torque.node("wn9")


def test_add_node_with_properties():
    torque, runner = backend([
        (["qmgr", "-a", "-c", "create node wn042-atlas-1 np=8"],),
        (["qmgr", "-a", "-c", "set node wn042-atlas-1 properties += atlas"],),
        (["qmgr", "-a", "-c", "set node wn042-atlas-1 properties += vm"],),
    ])
    torque.add_node("wn042-atlas-1", 8, 16000, ["atlas", "vm"])
    runner.assert_done()


def test_add_node_whose_name_does_not_resolve_names_the_fix():
    torque, runner = backend([(["qmgr", "-a", "-c", "create node sgtrq-nowhere np=1"], 2, "",
                               fixture("qmgr_create_unresolvable_node.stderr"))])
    with pytest.raises(FabricError) as info:
        torque.add_node("sgtrq-nowhere", 1)
    assert info.value.field == "name" and "cannot resolve" in str(info.value) and "vm_slots_torque_hosts_file" in str(info.value)


def test_qmgr_rejection_fails_even_with_exit_zero():
    # a qmgr error line counts even if some version exited 0
    torque, runner = backend([(["qmgr", "-a", "-c", "delete node sgtrq-nowhere"], 0, "", fixture("qmgr_unknown_node.stderr"))])
    with pytest.raises(CommandError, match="Unknown node"):
        torque.remove("sgtrq-nowhere")


def test_qmgr_rejection_with_its_exit_code():
    torque, runner = backend([(["qmgr", "-a", "-c", "create node sgtrq-vm1 np=1"], 2, "", fixture("qmgr_node_exists.stderr"))])
    with pytest.raises(CommandError) as info:
        torque.add_node("sgtrq-vm1", 1)
    assert info.value.rc == 2 and "Node name already exists" in str(info.value)
    assert info.value.details["cmd"] == ["qmgr", "-a", "-c", "create node sgtrq-vm1 np=1"]


def test_qmgr_cannot_connect():
    torque, runner = backend([(["qmgr", "-a", "-c", "print queue atlas"], 3, "", fixture("qmgr_cannot_connect.stderr"))])
    with pytest.raises(CommandError, match="cannot connect to server") as info:
        torque.queue("atlas")
    assert info.value.rc == 3


def test_pbsnodes_error_line_fails_even_with_exit_zero():
    torque, runner = backend([(["pbsnodes", "-o", "-N", "x", "sgtrq-nowhere"], 0, "", fixture("pbsnodes_mark_unknown_node.stderr"))])
    with pytest.raises(CommandError, match="Error setting note attribute for sgtrq-nowhere - Unknown node"):
        torque.drain("sgtrq-nowhere", "x")


def test_offline_waits_for_the_mom_list_to_be_sent():
    clock = FakeClock()
    not_sent = (["pbsnodes", "-o", "-N", "x", "sgtrq-vm1"], 0, "", fixture("pbsnodes_mark_mom_list_not_sent.stderr"))
    torque, runner = backend([not_sent, not_sent, (["pbsnodes", "-o", "-N", "x", "sgtrq-vm1"],)], clock)
    torque.drain("sgtrq-vm1", "x")
    runner.assert_done()
    assert clock.sleeps == [5, 5]


def test_offline_gives_up_on_the_mom_list_after_the_timeout():
    clock = FakeClock()
    not_sent = (["pbsnodes", "-c", "-N", "n", "sgtrq-vm1"], 0, "", fixture("pbsnodes_mark_mom_list_not_sent.stderr"))
    torque, runner = backend([not_sent] * 30, clock)
    with pytest.raises(CommandError, match="still not sent node sgtrq-vm1's MOM list out after 120s"):
        torque.online("sgtrq-vm1")


def test_drain_online_note_remove_commands():
    torque, runner = backend([
        (["pbsnodes", "-o", "-N", "converting (ticket 1)", "wn1"],),
        (["pbsnodes", "-N", "other", "wn1"],),
        (["pbsnodes", "-c", "-N", "n", "wn1"],),
        (["pbsnodes", "-c", "-N", "kept", "wn1"],),
        (["qmgr", "-a", "-c", "set node wn1 np = 4"],),
        (["qmgr", "-a", "-c", "delete node wn1"],),
    ])
    torque.drain("wn1", "converting (ticket 1)")
    torque.set_note("wn1", "other")
    torque.online("wn1")
    torque.online("wn1", "kept")
    torque.set_cores(parse_pbsnodes_xml(node_xml("wn1"))["wn1"], 4)
    torque.remove("wn1")
    runner.assert_done()


def test_properties_are_added_before_the_old_ones_go():
    torque, runner = backend([
        (["pbsnodes", "-x", "wn1"], 0, node_xml("wn1", props="atlas,vm")),
        (["qmgr", "-a", "-c", "set node wn1 properties += lhcb"],),
        (["qmgr", "-a", "-c", "set node wn1 properties -= atlas"],),
        (["pbsnodes", "-x", "wn1"], 0, node_xml("wn1", props="vm")),
        (["qmgr", "-a", "-c", "set node wn1 properties -= vm"],),
    ])
    torque.set_properties("wn1", ["lhcb", "vm"])
    torque.set_properties("wn1", [])  # no unset: -= each (Invalid request / no effect otherwise)
    runner.assert_done()


def test_a_node_that_lost_its_last_property_names_the_fix():
    torque, runner = backend([
        (["pbsnodes", "-x", "wn1"], 0, node_xml("wn1", props="")),
        (["qmgr", "-a", "-c", "set node wn1 properties += atlas"], 2, "", fixture("qmgr_remove_last_property_then_add.stderr")),
    ])
    with pytest.raises(FabricError) as info:
        torque.set_properties("wn1", ["atlas"])
    assert info.value.field == "properties" and "restart" in str(info.value) and "state=absent" in str(info.value)


def test_delete_node_that_purged_its_jobs_counts_as_removed():
    purged = ("qmgr obj=wn1 svr=default: The server was unable to communicate with the MOM to requeue or delete the job."
              " The node has been deleted and all jobs on the node have been purged.\n")
    torque, runner = backend([(["qmgr", "-a", "-c", "delete node wn1"], 2, "", purged)])
    torque.remove("wn1")
    runner.assert_done()


def test_unknown_queue_reads_as_none():
    torque, runner = backend([(["qmgr", "-a", "-c", "print queue sgtrq-nowhere"], 2, "", fixture("qmgr_unknown_queue.stderr"))])
    assert torque.queue("sgtrq-nowhere") is None


def test_add_queue_commands_in_order():
    torque, runner = backend([
        (["qmgr", "-a", "-c", "create queue atlas queue_type = Execution"],),
        (["qmgr", "-a", "-c", "set queue atlas resources_default.neednodes = 1:atlas"],),
        (["qmgr", "-a", "-c", "set queue atlas acl_groups = atlas"],),
        (["qmgr", "-a", "-c", "set queue atlas acl_groups += atlasprd"],),
        (["qmgr", "-a", "-c", "set queue atlas acl_group_enable = True"],),
        (["qmgr", "-a", "-c", "set queue atlas acl_group_sloppy = True"],),
        (["qmgr", "-a", "-c", "set queue atlas enabled = True"],),
        (["qmgr", "-a", "-c", "set queue atlas started = True"],),
    ])
    torque.add_queue({"name": "atlas", "property": "atlas", "groups": ["atlas", "atlasprd"], "enabled": True, "started": True})
    runner.assert_done()


def test_remove_queue_purges_completed_jobs_only():
    busy = (["qmgr", "-a", "-c", "delete queue atlas"], 2, "", fixture("qmgr_queue_busy.stderr"))
    torque, runner = backend([
        busy,
        (["qselect", "-q", "atlas"], 0, "18.vm\n19.vm\n"),
        (["qselect", "-q", "atlas", "-s", "C"], 0, "18.vm\n19.vm\n"),
        (["qdel", "-p", "18.vm"],),
        (["qdel", "-p", "19.vm"],),
        (["qmgr", "-a", "-c", "delete queue atlas"],),
    ])
    torque.remove_queue("atlas")
    runner.assert_done()
    torque, runner = backend([
        busy,
        (["qselect", "-q", "atlas"], 0, "18.vm\n20.vm\n"),
        (["qselect", "-q", "atlas", "-s", "C"], 0, "18.vm\n"),
    ])
    with pytest.raises(CommandError, match="still holds 1 job.s. that have not completed: 20.vm"):
        torque.remove_queue("atlas")
    runner.assert_done()


# ------------------------------------------------------------------------------------------ through manage


def test_matching_node_runs_only_the_read():
    torque, runner = backend([(["pbsnodes", "-x", "wn042-atlas-1"], 0, node_xml("wn042-atlas-1", np=2))])
    reconciler = Reconciler()
    result = ensure_node(torque, spec(name="wn042-atlas-1", state="online", cores=2, properties=["vm", "atlas"]), reconciler)
    runner.assert_done()
    assert not reconciler.changed and result["node"]["status"] == "online"


def test_new_vm_node_check_mode_runs_only_the_read():
    torque, runner = backend([(["pbsnodes", "-x", "wn042-atlas-1"], 1, "", fixture("pbsnodes_x_unknown_node.stderr"))])
    reconciler = Reconciler(check_mode=True)
    result = ensure_node(torque, spec(name="wn042-atlas-1", state="online", cores=2, properties=["atlas", "vm"]), reconciler)
    runner.assert_done()
    assert reconciler.actions == ["add node wn042-atlas-1 (2 cores, properties atlas,vm)"]
    assert reconciler.diff()["after"]["wn042-atlas-1"]["properties"] == ["atlas", "vm"]
    assert result["node"]["status"] == "online"


def test_drained_waits_for_running_jobs():
    clock = FakeClock()
    busy = node_xml("wn5", state="job-exclusive", np=2, props="batch", jobs="0/1201.srv,1/1202.srv")
    offline_busy = node_xml("wn5", state="offline,job-exclusive", np=2, props="batch", jobs="0/1201.srv", note="drain")
    offline_idle = node_xml("wn5", state="offline", np=2, props="batch", note="drain")
    torque, runner = backend([
        (["pbsnodes", "-x", "wn5"], 0, busy),
        (["pbsnodes", "-o", "-N", "drain", "wn5"],),
        (["pbsnodes", "-x", "wn5"], 0, offline_busy),
        (["pbsnodes", "-x", "wn5"], 0, offline_busy),
        (["pbsnodes", "-x", "wn5"], 0, offline_idle),
        (["pbsnodes", "-x", "wn5"], 0, offline_idle),  # the final read for the result
    ], clock)
    reconciler = Reconciler()
    result = ensure_node(torque, spec(name="wn5", state="drained", note="drain", timeout=60), reconciler)
    runner.assert_done()
    assert result["waited"] and result["node"]["status"] == "drained"
    assert clock.sleeps == [5, 5]


def test_drained_timeout_names_the_jobs():
    clock = FakeClock()
    busy = node_xml("wn5", state="offline,job-exclusive", np=2, jobs="0/1201.srv", note="drain")
    torque, runner = backend([(["pbsnodes", "-x", "wn5"], 0, busy)] * 5, clock)
    with pytest.raises(FabricError) as info:
        ensure_node(torque, spec(name="wn5", state="drained", note="drain", timeout=12), Reconciler())
    assert info.value.field == "timeout" and "1201.srv" in str(info.value)


def test_queue_update_changes_only_what_differs():
    current = fixture("qmgr_print_queue_atlas.txt")
    torque, runner = backend([
        (["qmgr", "-a", "-c", "print queue sgtrq-atlas"], 0, current),
        (["qmgr", "-a", "-c", "set queue sgtrq-atlas enabled = False"],),
        (["qmgr", "-a", "-c", "print queue sgtrq-atlas"], 0, current.replace("enabled = True", "enabled = False")),
    ])
    reconciler = Reconciler()
    params = dict(name="sgtrq-atlas", property="atlas", groups=["sgtrq-atlas", "sgtrq-prd", "sgtorque"], enabled=False)
    result = ensure_queue(torque, queue_spec(params, torque), reconciler)
    runner.assert_done()
    assert reconciler.actions == ["update queue sgtrq-atlas (enabled)"]
    assert result["queue"]["enabled"] is False


def test_queue_accounts_are_refused_for_torque():
    torque = get_backend("torque", Transcript())
    with pytest.raises(FabricError) as info:
        queue_spec(dict(name="atlas", accounts=["atlas"]), torque)
    assert info.value.field == "accounts"


def test_unauthorized_user_gets_the_server_message():
    torque, runner = backend([(["qmgr", "-a", "-c", "create queue sgtrq-x queue_type = Execution"], 2, "",
                               fixture("qmgr_unauthorized.stderr"))])
    with pytest.raises(CommandError, match="Unauthorized Request"):
        torque.add_queue({"name": "sgtrq-x", "property": "x", "groups": [], "enabled": True, "started": True})
