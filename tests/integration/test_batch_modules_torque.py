"""skygrid.fabric.batch_node and batch_queue with the torque backend, as real module processes, against the
Torque command double (tests/doubles/torque_double.py, linked as qmgr and pbsnodes first on PATH).

Not a live Torque: no registry ships it. The double answers in the recorded formats of tests/fixtures/torque/
and logs every command line, so these tests check the exact commands the modules run, and that they run
none when the node or queue already matches. The sequence mirrors the Slurm live test: drain the physical
worker node waiting for its jobs, register VO VMs, route a VO queue to them, drain and remove them,
bring the physical node back."""

from __future__ import annotations

import json
import os
import sys

import pytest

from modrun import run_module

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOUBLE = os.path.join(TESTS, "doubles", "torque_double.py")
SRV = "torque.example.org"


class Torque:
    """A fake Torque server: its state file, command log, and the environment that puts it on PATH."""

    def __init__(self, tmp_path):
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        for command in ("qmgr", "pbsnodes"):
            os.symlink(DOUBLE, str(self.bin / command))
        self.state_path = tmp_path / "torque.json"
        self.log_path = tmp_path / "commands.log"
        path = os.pathsep.join([str(self.bin), os.path.dirname(sys.executable), os.environ.get("PATH", "")])
        self.env = {"PATH": path, "TORQUE_DOUBLE_STATE": str(self.state_path), "TORQUE_DOUBLE_LOG": str(self.log_path)}
        self.write({"nodes": {}, "queues": {}})

    def write(self, state):
        self.state_path.write_text(json.dumps(state))

    def read(self):
        return json.loads(self.state_path.read_text())

    def commands(self):
        """Command lines run since the last call (each as one string), and forget them."""
        if not self.log_path.exists():
            return []
        lines = [json.loads(line)["argv"] for line in self.log_path.read_text().splitlines()]
        self.log_path.unlink()
        return [" ".join(argv) for argv in lines]

    def changes(self):
        return [command for command in self.commands() if not command.startswith(("pbsnodes -x", "qmgr -a -c print"))]

    def node(self, check=False, diff=False, **args):
        return run_module("batch_node", dict(args, backend="torque", poll_interval=0.05), check=check, diff=diff, env=self.env)

    def queue(self, check=False, diff=False, **args):
        return run_module("batch_queue", dict(args, backend="torque"), check=check, diff=diff, env=self.env)


@pytest.fixture
def torque(tmp_path):
    return Torque(tmp_path)


def ok(result):
    assert result["rc"] == 0 and not result.failed, result.get("msg")
    return result


def worker_node(jobs=()):
    return {"np": 4, "properties": ["batch"], "states": ["free"], "note": None,
            "jobs": [{"id": "%s.%s" % (job, SRV), "cores": 1, "polls": polls} for job, polls in jobs]}


def test_vm_node_lifecycle_commands(torque):
    args = dict(name="wn042-atlas-1", state="present", cores=2, properties=["atlas", "vm"])
    checked = ok(torque.node(check=True, diff=True, **args))
    assert checked["changed"] and checked["actions"] == ["add node wn042-atlas-1 (2 cores, properties atlas,vm)"]
    assert torque.changes() == [] and torque.read()["nodes"] == {}

    created = ok(torque.node(diff=True, **args))
    assert torque.changes() == ["qmgr -a -c create node wn042-atlas-1 np=2",
                                "qmgr -a -c set node wn042-atlas-1 properties = atlas",
                                "qmgr -a -c set node wn042-atlas-1 properties += vm"]
    assert created["node"]["status"] == "down"  # its pbs_mom has not reported yet
    assert created["diff"]["after"]["wn042-atlas-1"]["properties"] == ["atlas", "vm"]

    again = ok(torque.node(**args))
    assert not again["changed"] and torque.commands() == ["pbsnodes -x wn042-atlas-1"]

    # the VM's pbs_mom reports in
    state = torque.read()
    state["nodes"]["wn042-atlas-1"]["states"] = ["free"]
    torque.write(state)
    resized = ok(torque.node(name="wn042-atlas-1", state="online", cores=4, properties=["atlas", "vm", "el9"]))
    assert torque.changes() == ["qmgr -a -c set node wn042-atlas-1 np = 4",
                                "qmgr -a -c set node wn042-atlas-1 properties = atlas",
                                "qmgr -a -c set node wn042-atlas-1 properties += vm",
                                "qmgr -a -c set node wn042-atlas-1 properties += el9"]
    assert resized["node"]["cores"] == 4 and resized["node"]["status"] == "online"

    offline = ok(torque.node(name="wn042-atlas-1", state="offline", note="VM image revoked"))
    assert torque.changes() == ["pbsnodes -o -N VM image revoked wn042-atlas-1"]
    assert offline["node"]["status"] == "drained" and offline["node"]["note"] == "VM image revoked"
    assert not ok(torque.node(name="wn042-atlas-1", state="offline", note="VM image revoked"))["changed"]

    online = ok(torque.node(name="wn042-atlas-1", state="online"))
    assert torque.changes() == ["pbsnodes -c -N n wn042-atlas-1"]
    assert online["node"]["note"] is None and online["node"]["status"] == "online"

    removed = ok(torque.node(name="wn042-atlas-1", state="absent", diff=True))
    assert torque.changes() == ["qmgr -a -c delete node wn042-atlas-1"] and removed["node"] is None
    assert removed["diff"]["after"] == {}
    assert not ok(torque.node(name="wn042-atlas-1", state="absent"))["changed"]


def test_drain_physical_node_waits_for_its_jobs(torque):
    torque.write({"nodes": {"wn042.example.org": worker_node(jobs=[("1201", 3), ("1202", 5)])}, "queues": {}})
    checked = ok(torque.node(check=True, name="wn042.example.org", state="drained", note="converting"))
    assert checked["actions"] == ["take node wn042.example.org offline (converting)"] and not checked["waited"]
    assert torque.changes() == []

    drained = ok(torque.node(name="wn042.example.org", state="drained", note="converting", timeout=30))
    assert drained["waited"] and drained["node"]["status"] == "drained" and drained["node"]["jobs"] == []
    assert torque.changes() == ["pbsnodes -o -N converting wn042.example.org"]

    back = ok(torque.node(name="wn042.example.org", state="online"))
    assert torque.changes() == ["pbsnodes -c -N n wn042.example.org"] and back["node"]["status"] == "online"


def test_drain_timeout_leaves_node_offline(torque):
    torque.write({"nodes": {"wn042.example.org": worker_node(jobs=[("1201", 10 ** 6)])}, "queues": {}})
    result = torque.node(name="wn042.example.org", state="drained", timeout=1)
    assert result.failed and result["field"] == "timeout" and "1201.%s" % SRV in result["msg"]
    assert result["changed"] and result["actions"] == ["take node wn042.example.org offline (drained by skygrid.fabric)"]
    assert "offline" in torque.read()["nodes"]["wn042.example.org"]["states"]


def test_absent_drains_first_unless_forced(torque):
    torque.write({"nodes": {"wn042-lhcb-1": dict(worker_node(jobs=[("77", 2)]), properties=["lhcb", "vm"]),
                            "wn042-lhcb-2": dict(worker_node(jobs=[("78", 10 ** 6)]), properties=["lhcb", "vm"])}, "queues": {}})
    removed = ok(torque.node(name="wn042-lhcb-1", state="absent", note="VM stopping", timeout=30))
    assert removed["waited"] and torque.changes() == ["pbsnodes -o -N VM stopping wn042-lhcb-1",
                                                      "qmgr -a -c delete node wn042-lhcb-1"]
    forced = ok(torque.node(name="wn042-lhcb-2", state="absent", force=True))
    assert not forced["waited"] and torque.changes() == ["qmgr -a -c delete node wn042-lhcb-2"]
    assert torque.read()["nodes"] == {}


def test_server_errors_are_reported_with_the_command(torque):
    torque.write({"nodes": {"wn1": worker_node()}, "queues": {}})
    env = dict(torque.env, TORQUE_DOUBLE_DOWN="1")
    result = run_module("batch_node", dict(backend="torque", name="wn1", state="online"), env=env)
    assert result.failed and "cannot connect to server" in result["msg"]
    assert result["cmd"] == ["pbsnodes", "-x", "wn1"]

    missing = run_module("batch_node", dict(backend="torque", name="wn1"), env={"PATH": "/nonexistent"})
    assert missing.failed and "command not found" in missing["msg"] and "delegate_to" in missing["msg"]


def test_vo_queue(torque):
    args = dict(name="atlas", groups=["atlas", "atlasprd"])
    checked = ok(torque.queue(check=True, diff=True, **args))
    assert checked["actions"] == ["create queue atlas for atlas"] and torque.changes() == []
    assert checked["diff"]["after"]["atlas"] == {"name": "atlas", "groups": ["atlas", "atlasprd"], "enabled": True,
                                                 "started": True, "property": "atlas"}

    created = ok(torque.queue(**args))
    assert torque.changes() == ["qmgr -a -c create queue atlas queue_type = Execution",
                                "qmgr -a -c set queue atlas resources_default.neednodes = atlas",
                                "qmgr -a -c set queue atlas acl_groups = atlas",
                                "qmgr -a -c set queue atlas acl_groups += atlasprd",
                                "qmgr -a -c set queue atlas acl_group_enable = True",
                                "qmgr -a -c set queue atlas enabled = True",
                                "qmgr -a -c set queue atlas started = True"]
    assert created["queue"] == {"name": "atlas", "property": "atlas", "groups": ["atlas", "atlasprd"], "accounts": [],
                                "enabled": True, "started": True, "nodes": [], "nodeset": None}

    assert not ok(torque.queue(**args))["changed"] and torque.commands() == ["qmgr -a -c print queue atlas"]

    opened = ok(torque.queue(name="atlas", groups=[], started=False, diff=True))
    assert torque.changes() == ["qmgr -a -c set queue atlas acl_group_enable = False",
                                "qmgr -a -c unset queue atlas acl_groups",
                                "qmgr -a -c set queue atlas started = False"]
    assert opened["queue"]["groups"] == [] and opened["queue"]["started"] is False

    state = torque.read()
    state["queues"]["atlas"]["jobs"] = 3
    torque.write(state)
    busy = torque.queue(name="atlas", state="absent")
    assert busy.failed and "Cannot delete busy queue" in busy["msg"]
    state["queues"]["atlas"]["jobs"] = 0
    torque.write(state)
    assert ok(torque.queue(name="atlas", state="absent"))["changed"] and torque.read()["queues"] == {}


def test_conversion_sequence(torque):
    """The contract the conversion playbooks rely on, in order: drain the worker node, register two VO VMs,
    queue per VO, then back: drain and remove the VMs, delete the queues, worker node online."""
    torque.write({"nodes": {"wn042.example.org": worker_node(jobs=[("1300", 2)])}, "queues": {}})
    ok(torque.node(name="wn042.example.org", state="drained", note="converting to VO VMs", timeout=30))
    for vo in ("atlas", "lhcb"):
        ok(torque.node(name="wn042-%s-1" % vo, state="online", cores=2, properties=[vo, "vm"]))
        ok(torque.queue(name=vo, groups=[vo]))
    state = torque.read()
    assert sorted(state["nodes"]) == ["wn042-atlas-1", "wn042-lhcb-1", "wn042.example.org"]
    assert state["queues"]["lhcb"]["attrs"]["resources_default.neednodes"] == ["lhcb"]
    torque.commands()
    for vo in ("atlas", "lhcb"):
        ok(torque.node(name="wn042-%s-1" % vo, state="absent"))
        ok(torque.queue(name=vo, state="absent"))
    back = ok(torque.node(name="wn042.example.org", state="online"))
    assert back["node"]["status"] == "online" and sorted(torque.read()["nodes"]) == ["wn042.example.org"]
    assert torque.changes() == ["qmgr -a -c delete node wn042-atlas-1", "qmgr -a -c delete queue atlas",
                                "qmgr -a -c delete node wn042-lhcb-1", "qmgr -a -c delete queue lhcb",
                                "pbsnodes -c -N n wn042.example.org"]
