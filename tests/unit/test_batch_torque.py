"""Unit tests of module_utils/batch/torque.py: parsing recorded pbsnodes/qmgr output (tests/fixtures/torque/)
and the exact command lines the backend runs, against a transcript of expected calls.

Torque itself was not available: the fixtures are reconstructed from its documentation (see their README)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
DOUBLE = os.path.join(TESTS, "doubles", "torque_double.py")
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
    assert sorted(nodes) == sorted(["wn001.example.org", "wn002.example.org", "wn003.example.org", "wn004.example.org",
                                    "wn005.example.org", "wn042-atlas-1", "wn042-lhcb-1", "wn042-atlas-2"])
    status = {name: node.status for name, node in nodes.items()}
    assert status == {
        "wn001.example.org": "online",
        "wn002.example.org": "drained",
        "wn003.example.org": "down",
        "wn004.example.org": "online",
        "wn005.example.org": "draining",
        "wn042-atlas-1": "online",
        "wn042-lhcb-1": "drained",
        "wn042-atlas-2": "down",
    }
    assert nodes["wn042-lhcb-1"].down and nodes["wn042-lhcb-1"].unschedulable


def test_pbsnodes_node_details():
    nodes = parse_pbsnodes_xml(fixture("pbsnodes_x_all.xml"))
    wn001 = nodes["wn001.example.org"]
    assert (wn001.cores, wn001.properties, wn001.jobs, wn001.note) == (8, ["batch", "el7"], [], None)
    assert wn001.memory_mb == 32780636 // 1024
    assert nodes["wn002.example.org"].note == "converting to VO VMs (ticket 4711)"
    assert nodes["wn003.example.org"].memory_mb is None  # down: no status
    assert nodes["wn004.example.org"].jobs == ["1234.%s" % SRV]  # Torque 6 core range 0-7/1234.srv
    assert nodes["wn004.example.org"].raw_state == "job-exclusive"
    wn005 = nodes["wn005.example.org"]
    assert wn005.jobs == ["1201.%s" % SRV, "1202.%s" % SRV, "1203.%s" % SRV]
    assert wn005.raw_state == "offline,job-exclusive" and wn005.note == "drained by skygrid.fabric"
    assert nodes["wn042-atlas-2"].raw_state == "state-unknown,down"


def test_pbsnodes_torque4_node_with_comma_space_job_list():
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
    attrs = parse_qmgr_print(fixture("qmgr_print_queue_atlas.txt"))["atlas"]
    assert attrs["acl_groups"] == ["atlas", "atlasprd", "atlassgm"]
    queue = queue_from_attrs("atlas", attrs)
    assert queue.as_dict() == {"name": "atlas", "property": "atlas", "groups": ["atlas", "atlasprd", "atlassgm"],
                               "accounts": [], "enabled": True, "started": True, "nodes": [], "nodeset": None}


def test_print_queue_acl_disabled_means_open_queue():
    queue = queue_from_attrs("lhcb", parse_qmgr_print(fixture("qmgr_print_queue_lhcb_disabled.txt"))["lhcb"])
    assert queue.groups == [] and queue.enabled is False and queue.started is True


def test_print_node():
    attrs = parse_qmgr_print(fixture("qmgr_print_node_wn005.txt"))["wn005.example.org"]
    assert attrs["state"] == ["offline", "job-exclusive"]
    assert attrs["np"] == ["4"] and attrs["note"] == ["drained by skygrid.fabric"]


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
        (["qmgr", "-a", "-c", "set node wn042-atlas-1 properties = atlas"],),
        (["qmgr", "-a", "-c", "set node wn042-atlas-1 properties += vm"],),
    ])
    torque.add_node("wn042-atlas-1", 8, 16000, ["atlas", "vm"])
    runner.assert_done()


def test_qmgr_rejection_fails_even_with_exit_zero():
    # plain `qmgr -c` exits 0 on a rejected request; the error line is what counts
    torque, runner = backend([(["qmgr", "-a", "-c", "delete node wn9"], 0, "", fixture("qmgr_unknown_node.stderr", "wn9"))])
    with pytest.raises(CommandError, match="Unknown node"):
        torque.remove("wn9")


def test_qmgr_rejection_with_abort_exit_code():
    torque, runner = backend([(["qmgr", "-a", "-c", "create node wn1 np=1"], 2, "", fixture("qmgr_node_exists.stderr", "wn1"))])
    with pytest.raises(CommandError) as info:
        torque.add_node("wn1", 1)
    assert info.value.rc == 2 and "already exists" in str(info.value)
    assert info.value.details["cmd"] == ["qmgr", "-a", "-c", "create node wn1 np=1"]


def test_pbsnodes_error_line_fails_even_with_exit_zero():
    torque, runner = backend([(["pbsnodes", "-o", "-N", "x", "wn9"], 0, "", fixture("pbsnodes_mark_unknown_node.stderr", "wn9"))])
    with pytest.raises(CommandError, match="Error marking node wn9"):
        torque.drain("wn9", "x")


def test_drain_online_note_remove_commands():
    torque, runner = backend([
        (["pbsnodes", "-o", "-N", "converting (ticket 1)", "wn1"],),
        (["pbsnodes", "-N", "other", "wn1"],),
        (["pbsnodes", "-c", "-N", "n", "wn1"],),
        (["pbsnodes", "-c", "-N", "kept", "wn1"],),
        (["qmgr", "-a", "-c", "set node wn1 np = 4"],),
        (["qmgr", "-a", "-c", "unset node wn1 properties"],),
        (["qmgr", "-a", "-c", "delete node wn1"],),
    ])
    torque.drain("wn1", "converting (ticket 1)")
    torque.set_note("wn1", "other")
    torque.online("wn1")
    torque.online("wn1", "kept")
    torque.set_cores(parse_pbsnodes_xml(node_xml("wn1"))["wn1"], 4)
    torque.set_properties("wn1", [])
    torque.remove("wn1")
    runner.assert_done()


def test_unknown_queue_reads_as_none():
    torque, runner = backend([(["qmgr", "-a", "-c", "print queue atlas"], 2, "", fixture("qmgr_unknown_queue.stderr", "atlas"))])
    assert torque.queue("atlas") is None


def test_add_queue_commands_in_order():
    torque, runner = backend([
        (["qmgr", "-a", "-c", "create queue atlas queue_type = Execution"],),
        (["qmgr", "-a", "-c", "set queue atlas resources_default.neednodes = atlas"],),
        (["qmgr", "-a", "-c", "set queue atlas acl_groups = atlas"],),
        (["qmgr", "-a", "-c", "set queue atlas acl_groups += atlasprd"],),
        (["qmgr", "-a", "-c", "set queue atlas acl_group_enable = True"],),
        (["qmgr", "-a", "-c", "set queue atlas enabled = True"],),
        (["qmgr", "-a", "-c", "set queue atlas started = True"],),
    ])
    torque.add_queue({"name": "atlas", "property": "atlas", "groups": ["atlas", "atlasprd"], "enabled": True, "started": True})
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
        (["qmgr", "-a", "-c", "print queue atlas"], 0, current),
        (["qmgr", "-a", "-c", "set queue atlas enabled = False"],),
        (["qmgr", "-a", "-c", "print queue atlas"], 0, current.replace("enabled = True", "enabled = False")),
    ])
    reconciler = Reconciler()
    params = dict(name="atlas", groups=["atlas", "atlasprd", "atlassgm"], enabled=False)
    result = ensure_queue(torque, queue_spec(params, torque), reconciler)
    runner.assert_done()
    assert reconciler.actions == ["update queue atlas (enabled)"]
    assert result["queue"]["enabled"] is False


def test_queue_accounts_are_refused_for_torque():
    torque = get_backend("torque", Transcript())
    with pytest.raises(FabricError) as info:
        queue_spec(dict(name="atlas", accounts=["atlas"]), torque)
    assert info.value.field == "accounts"


def test_unauthorized_user_gets_the_server_message():
    torque, runner = backend([(["qmgr", "-a", "-c", "create queue atlas queue_type = Execution"], 2, "",
                               fixture("qmgr_unauthorized.stderr", "atlas"))])
    with pytest.raises(CommandError, match="Unauthorized Request"):
        torque.add_queue({"name": "atlas", "property": "atlas", "groups": [], "enabled": True, "started": True})


# ------------------------------------------------------------------------------------------ the command double


def double(tmp_path, state, *argv):
    """Run tests/doubles/torque_double.py as ``argv[0]`` on ``state``; (rc, stdout, stderr)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    link = bin_dir / argv[0]
    if not link.exists():
        os.symlink(DOUBLE, str(link))
    state_path = tmp_path / "state.json"
    state_path.write_text(json.dumps(state))
    env = dict(os.environ, TORQUE_DOUBLE_STATE=str(state_path), TORQUE_DOUBLE_LOG=str(tmp_path / "log"))
    proc = subprocess.run([sys.executable, str(link)] + list(argv[1:]), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, env=env, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def test_double_speaks_the_fixtures_formats(tmp_path):
    """The double's answers parse like the recorded ones, so integration tests against it test the real parser."""
    recorded = parse_qmgr_print(fixture("qmgr_print_queue_atlas.txt"))["atlas"]
    attrs = {key: recorded[key] for key in ("queue_type", "resources_default.neednodes", "acl_group_enable", "acl_groups",
                                            "enabled", "started")}
    state = {"nodes": {"wn5": {"np": 2, "properties": ["batch"], "states": ["offline"], "note": "drain",
                               "jobs": [{"id": "1201.srv", "cores": 2, "polls": 5}]}},
             "queues": {"atlas": {"attrs": attrs, "jobs": 0}}}
    rc, out, err = double(tmp_path, state, "qmgr", "-c", "print queue atlas")
    assert rc == 0 and parse_qmgr_print(out)["atlas"] == attrs
    rc, out, err = double(tmp_path, state, "qmgr", "-c", "list queue atlas")
    recorded_lines = fixture("qmgr_list_queue_atlas.txt").splitlines()
    assert out.splitlines()[0] == "Queue atlas" and "\tacl_groups = atlas,atlasprd,atlassgm" in recorded_lines
    assert "\tacl_groups = atlas,atlasprd,atlassgm" in out.splitlines()
    rc, out, err = double(tmp_path, state, "pbsnodes", "-x", "wn5")
    node = parse_pbsnodes_xml(out)["wn5"]
    assert (node.status, node.jobs, node.note, node.raw_state) == ("draining", ["1201.srv"], "drain", "offline,job-exclusive")
    rc, out, err = double(tmp_path, state, "pbsnodes", "-x", "wn9")
    assert (rc, err) == (1, fixture("pbsnodes_x_unknown_node.stderr"))
    rc, out, err = double(tmp_path, state, "qmgr", "-c", "delete node wn9")
    assert (rc, err) == (0, fixture("qmgr_unknown_node.stderr", "wn9"))  # without -a, qmgr exits 0
    log = [json.loads(line)["argv"] for line in (tmp_path / "log").read_text().splitlines()]
    assert log[-1] == ["qmgr", "-c", "delete node wn9"] and len(log) == 5
