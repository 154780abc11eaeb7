"""Unit tests of module_utils/batch/clusters.py and batch_node's ``nodes`` across clusters: one run manages
nodes of several Slurm clusters (the site's and each VO's own), each node's commands going to its cluster's
backend, with the exact scontrol lines per cluster (a Transcript per cluster states every command)."""

from __future__ import annotations

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils.batch.clusters import Clusters, check_environment, describe
from ansible_collections.skygrid.fabric.plugins.module_utils.batch.manage import ensure_nodes, node_specs
from ansible_collections.skygrid.fabric.plugins.module_utils.batch.runner import AnsibleRunner
from ansible_collections.skygrid.fabric.plugins.module_utils.batch.slurm import SlurmBackend
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.reconcile import Reconciler
from doubles.transcript import Transcript

ATLAS = {"SLURM_CONF": "/etc/slurm/vo/atlas/slurm.conf"}
LHCB = {"SLURM_CONF": "/etc/slurm/vo/lhcb/slurm.conf"}


def show(name):
    return ["scontrol", "-o", "-F", "show", "node", name]


def future(name, features):
    return ("NodeName=%s CPUTot=1 AvailableFeatures=%s ActiveFeatures=%s NodeAddr=%s RealMemory=1 "
            "State=FUTURE+DYNAMIC_NORM\n" % (name, features, features, name))


def not_found(name):
    return (show(name), 1, "", "Node %s not found\n" % name)


def create(name, features):
    return (["scontrol", "create", "nodename=%s" % name, "cpus=1", "feature=%s" % features, "state=future"],)


class Site:
    """A Transcript per cluster, and the environments backends were made for (in order)."""

    def __init__(self, transcripts):
        self.transcripts = {tuple(sorted(env.items())): Transcript(steps) for env, steps in transcripts}
        self.made = []

    def make_backend(self, env):
        self.made.append(env)
        return SlurmBackend(self.transcripts[tuple(sorted(env.items()))])

    def assert_done(self):
        for transcript in self.transcripts.values():
            transcript.assert_done()


def item(name, features, env=None):
    node = {"name": name, "cores": 1, "properties": features.split(",")}
    if env is not None:
        node["environment"] = env
    return node


NODES = [item("wn1-atlas-1", "atlas,vm", ATLAS), item("wn1-site-1", "site,vm"), item("wn1-lhcb-1", "lhcb,vm", LHCB),
         item("wn1-atlas-2", "atlas,vm", ATLAS)]


def specs(nodes=None):
    return node_specs({"state": "present", "wait_drained": True, "timeout": 60, "force": False,
                       "nodes": NODES if nodes is None else nodes})


def test_each_node_is_managed_in_its_cluster_in_one_run_and_reported_in_the_given_order():
    site = Site([
        (ATLAS, [(show("wn1-atlas-1"), 0, future("wn1-atlas-1", "atlas,vm")),
                 (show("wn1-atlas-2"), 0, future("wn1-atlas-2", "atlas,vm"))]),
        ({}, [not_found("wn1-site-1"), create("wn1-site-1", "site,vm"),
              (show("wn1-site-1"), 0, future("wn1-site-1", "site,vm"))]),
        (LHCB, [not_found("wn1-lhcb-1"), create("wn1-lhcb-1", "lhcb,vm"),
                (show("wn1-lhcb-1"), 0, future("wn1-lhcb-1", "lhcb,vm"))]),
    ])
    reconciler = Reconciler()
    results = ensure_nodes(Clusters(site.make_backend), specs(), reconciler)
    site.assert_done()
    assert site.made == [ATLAS, {}, LHCB]  # one backend per cluster, not per node
    assert [result["name"] for result in results] == ["wn1-atlas-1", "wn1-site-1", "wn1-lhcb-1", "wn1-atlas-2"]
    assert [result["node"]["properties"] for result in results] == [
        ["atlas", "vm"], ["site", "vm"], ["lhcb", "vm"], ["atlas", "vm"]]
    assert reconciler.actions == ["add node wn1-site-1 (1 cores, properties site,vm)",
                                  "add node wn1-lhcb-1 (1 cores, properties lhcb,vm)"]
    assert sorted(reconciler.diff()["after"]) == ["wn1-atlas-1", "wn1-atlas-2", "wn1-lhcb-1", "wn1-site-1"]


def test_check_mode_reads_each_cluster_and_changes_nothing():
    site = Site([
        (ATLAS, [not_found("wn1-atlas-1"), not_found("wn1-atlas-2")]),
        ({}, [(show("wn1-site-1"), 0, future("wn1-site-1", "site,vm"))]),
        (LHCB, [(show("wn1-lhcb-1"), 0, future("wn1-lhcb-1", "lhcb"))]),
    ])
    reconciler = Reconciler(check_mode=True)
    results = ensure_nodes(Clusters(site.make_backend), specs(), reconciler)
    site.assert_done()
    assert reconciler.changed and reconciler.actions == [
        "add node wn1-atlas-1 (1 cores, properties atlas,vm)", "set the properties of node wn1-lhcb-1 to lhcb,vm",
        "add node wn1-atlas-2 (1 cores, properties atlas,vm)"]
    assert reconciler.diff()["before"]["wn1-lhcb-1"]["properties"] == ["lhcb"]
    assert reconciler.diff()["after"]["wn1-lhcb-1"]["properties"] == ["lhcb", "vm"]
    assert [result["node"]["status"] for result in results] == ["online", "future", "future", "online"]


def test_a_failure_names_the_node_and_its_cluster_and_keeps_the_actions_done_before_it():
    site = Site([
        (ATLAS, [(show("wn1-atlas-1"), 0, future("wn1-atlas-1", "atlas,vm"))]),
        ({}, [not_found("wn1-site-1"), create("wn1-site-1", "site,vm"),
              (show("wn1-site-1"), 0, future("wn1-site-1", "site,vm"))]),
        (LHCB, [(show("wn1-lhcb-1"), 1, "", "slurm_load_node error: Unable to contact slurm controller\n")]),
    ])
    reconciler = Reconciler()
    with pytest.raises(FabricError) as err:
        ensure_nodes(Clusters(site.make_backend), specs(), reconciler)
    message = str(err.value)
    assert message.startswith("node wn1-lhcb-1 in the cluster of SLURM_CONF=/etc/slurm/vo/lhcb/slurm.conf: ")
    assert "Unable to contact slurm controller" in message
    assert err.value.details["cmd"] == show("wn1-lhcb-1")
    assert reconciler.changed and reconciler.actions == ["add node wn1-site-1 (1 cores, properties site,vm)"]


def test_a_field_error_keeps_its_field_and_names_the_cluster():
    idle = future("wn1-lhcb-1", "lhcb,vm").replace("State=FUTURE+DYNAMIC_NORM", "State=IDLE+DYNAMIC_NORM")
    jobs = ["squeue", "-h", "-w", "wn1-lhcb-1", "-t", "CF,R,S,CG,SO", "-o", "%i"]
    site = Site([(LHCB, [(show("wn1-lhcb-1"), 0, idle), (jobs,)])])
    with pytest.raises(FabricError) as err:  # a registered Slurm node cannot be resized
        ensure_nodes(Clusters(site.make_backend), specs([dict(item("wn1-lhcb-1", "lhcb,vm", LHCB), cores=2)]),
                     Reconciler())
    assert err.value.field == "cores" and err.value.details["node"]["name"] == "wn1-lhcb-1"
    assert str(err.value).startswith("cores: node wn1-lhcb-1 in the cluster of SLURM_CONF=/etc/slurm/vo/lhcb/slurm.conf: ")


@pytest.mark.parametrize("environment, text", [
    ({"BAD NAME": "x"}, "not an environment variable name"),
    ({"1ST": "x"}, "not an environment variable name"),
    ({"SLURM_CONF": None}, "must be a string"),
    ({"SLURM_CONF": "a\0b"}, "must be a string"),
    ("SLURM_CONF=/etc/slurm/vo/atlas/slurm.conf", "must be a dict"),
])
def test_a_bad_environment_names_the_item(environment, text):
    with pytest.raises(FabricError) as err:
        specs([item("ok-1", "vm"), item("ok-2", "vm", environment)])
    assert err.value.field == "nodes[1].environment" and text in str(err.value)


def test_environments_are_normalised_and_one_key_per_cluster():
    assert [spec["environment"] for spec in specs()] == [ATLAS, {}, LHCB, ATLAS]
    assert check_environment({"SLURM_CONF": "/x", "N": 3}) == {"SLURM_CONF": "/x", "N": "3"}
    made = []
    clusters = Clusters(lambda env: made.append(env) or len(made))
    assert clusters.backend({"A": "1", "B": "2"}) == clusters.backend({"B": "2", "A": "1"}) == 1
    assert clusters.backend(None) == clusters.backend({}) == 2
    assert made == [{"A": "1", "B": "2"}, {}]
    assert describe({}) == "the default cluster"


class FakeModule:
    def __init__(self):
        self.calls = []

    def get_bin_path(self, name, required=False, opt_dirs=None):
        return "/usr/bin/" + name

    def run_command(self, argv, check_rc=False, environ_update=None):
        self.calls.append((argv, environ_update))
        return 0, "", ""


def test_the_ansible_runner_runs_commands_with_the_clusters_environment():
    module = FakeModule()
    AnsibleRunner(module, env=ATLAS)(["scontrol", "ping"])
    AnsibleRunner(module)(["scontrol", "ping"])
    assert module.calls == [(["/usr/bin/scontrol", "ping"], dict(ATLAS, LC_ALL="C", LANG="C")),
                            (["/usr/bin/scontrol", "ping"], {"LC_ALL": "C", "LANG": "C"})]
