"""The slurm role's VM contextualisation: the user-data is exactly what the role built before it moved to
Python (the known-good files under data/ came from the templated tasks), trust domains are kept apart,
and no error ever holds a key."""

import base64
import json
import pathlib

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.contextualisation.slurm import (
    domain_errors, plan_domains, vm_user_data)

KNOWN_GOOD = pathlib.Path(__file__).parent / "data" / "slurm_vm_user_data"
# Not real keys: the bytes the known-good files were built with.
ATLAS_KEY, LHCB_KEY, SITE_KEY = bytes(range(128)), bytes(range(128, 256)), bytes(range(255, 127, -1))
ATLAS_CONF = ("ClusterName=atlasvms\nSlurmctldPort=6821\nAuthType=auth/munge\n"
              "AuthInfo=socket=/run/munge-vo/atlas/munge.socket.2\nPartitionName=atlas Nodes=ALL Default=YES\n")
# No SlurmctldPort (slurmd's default), the socket among other AuthInfo options.
LHCB_CONF = "ClusterName=lhcbvms\nAuthInfo=cred_expire=60,socket=/run/munge-vo/lhcb/munge.socket.2,ttl=3\n"
VMS = [{"name": "wn042-atlas-1", "vo": "atlas", "features": ["atlas", "vm"], "conf": "NodeAddr=10.20.0.17"},
       {"name": "wn042-site-1", "vo": "site", "features": ["site", "vm"], "conf": "RealMemory=3000"},
       {"name": "wn042-site-2", "vo": "site"},
       {"name": "wn042-lhcb-1", "vo": "lhcb"}]


def read(content):
    """A file as the read_files module returns it."""
    if content is None:
        return {"exists": False, "content": ""}
    return {"exists": True, "content": base64.b64encode(content if isinstance(content, bytes) else content.encode()).decode()}


def controller_files(**missing):
    files = {"/c/atlas/slurm.conf": ATLAS_CONF, "/c/lhcb/slurm.conf": LHCB_CONF, "/k/atlas.key": ATLAS_KEY,
             "/k/lhcb.key": LHCB_KEY, "/site.key": SITE_KEY}
    files.update(missing)
    return {path: read(content) for path, content in files.items()}


def plan(vms=None, **more):
    args = dict(site_vos=["site"], conf_dir="/c", key_dir="/k", site_key="/site.key", controller="ctl",
                server="10.20.0.1")
    args.update(more)
    return plan_domains(VMS if vms is None else vms, **args)


def known_good(name):
    return json.loads((KNOWN_GOOD / (name + ".json")).read_text())


def test_vo_and_site_domains_as_before():
    domains = plan()
    assert domains["vo_conf"] == {"atlas": "/c/atlas/slurm.conf", "lhcb": "/c/lhcb/slurm.conf"}
    assert domains["paths"] == ["/c/atlas/slurm.conf", "/c/lhcb/slurm.conf", "/k/atlas.key", "/k/lhcb.key", "/site.key"]
    built = vm_user_data(VMS, domains, controller_files(), dirs=["/var/spool/slurmd", "/var/log/my slurm"])
    assert built == known_good("vo_and_site_domains")


def test_port_and_join_script_as_before():
    vms = [{"name": "wn1-site-1", "vo": "site", "conf": "RealMemory=3000"}, {"name": "wn1-cms-1", "vo": "cms", "features": ["cms"]}]
    domains = plan(vms, site_vos=["site", "cms"], server="192.168.244.1")
    assert domains["paths"] == ["/site.key"]  # no VO cluster: nothing else read
    built = vm_user_data(vms, domains, controller_files(), port=7000, join_script="/opt/join")
    assert built == known_good("port_and_join_script")


def test_bare_site_vm_as_before():
    vms = [{"name": "wn2-site-1", "vo": "site", "features": []}]
    built = vm_user_data(vms, plan(vms, server="192.168.244.1"), controller_files())
    assert built == known_good("bare_site_vm")


def test_each_domain_gets_its_own_key_only():
    built = vm_user_data(VMS, plan(), controller_files())
    keys = {name: base64.b64decode(data["write_files"][0]["content"]) for name, data in built.items()}
    assert keys == {"wn042-atlas-1": ATLAS_KEY, "wn042-lhcb-1": LHCB_KEY, "wn042-site-1": SITE_KEY, "wn042-site-2": SITE_KEY}


def test_no_site_key_read_without_a_site_vm():
    domains = plan([VMS[0]])
    assert domains["site_key"] is None and "/site.key" not in domains["paths"]
    assert domain_errors(domains, controller_files(**{"/site.key": None})) == []


@pytest.mark.parametrize("missing, problem", [
    ({"/c/lhcb/slurm.conf": None}, "VO lhcb has no trust domain on ctl: /c/lhcb/slurm.conf is missing."),
    ({"/c/lhcb/slurm.conf": "SlurmctldPort=6822\n"}, "/c/lhcb/slurm.conf names no munge socket (AuthInfo=socket=...)"),
    ({"/c/lhcb/slurm.conf": "AuthInfo=socket=/,ttl=3\n"}, "/c/lhcb/slurm.conf names no munge socket"),
    ({"/k/lhcb.key": None}, "VO lhcb has no trust domain on ctl: its munge key /k/lhcb.key is missing."),
])
def test_a_vo_without_a_cluster_gets_nothing(missing, problem):
    files = controller_files(**missing)
    errors = domain_errors(plan(), files)
    assert len(errors) == 1 and problem in errors[0] and "slurm_site_vos" in errors[0]
    with pytest.raises(FabricError) as failed:
        vm_user_data(VMS, plan(), files)
    assert problem in str(failed.value)
    for key in (ATLAS_KEY, LHCB_KEY, SITE_KEY):
        assert base64.b64encode(key).decode() not in str(failed.value)


def test_the_site_key_must_exist():
    errors = domain_errors(plan(), controller_files(**{"/site.key": None}))
    assert errors == ["/site.key does not exist on ctl: VMs of site-built images (site) join the site's cluster "
                      "with its munge key. Set slurm_munge_key_path to the site's key."]


@pytest.mark.parametrize("vms, field, hint", [
    ("wn1", "slurm_vms", "a list of VMs"),
    ([{"name": "wn1"}], "slurm_vms[0]", "needs a name (a host name) and a vo"),
    ([{"name": "wn1 x", "vo": "site"}], "slurm_vms[0].name", "not a host name"),
    ([{"name": "x" * 64, "vo": "site"}], "slurm_vms[0].name", "at most 63"),
    ([{"name": "wn1\n", "vo": "site"}], "slurm_vms[0].name", "not a host name"),
    ([{"name": "wn1", "vo": "-atlas"}], "slurm_vms[0] (wn1).vo", "not a VO name"),
    ([{"name": "wn1", "vo": "site", "features": ["a b"]}], "slurm_vms[0] (wn1).features", "features are names"),
    ([{"name": "wn1", "vo": "site", "conf": 'X="a"; rm -rf /'}], "slurm_vms[0] (wn1).conf",
     "conf holds only slurmd node parameters"),
])
def test_bad_vms_are_named_with_the_fix(vms, field, hint):
    with pytest.raises(FabricError) as failed:
        plan(vms)
    assert failed.value.field == field and hint in str(failed.value)


def test_a_vm_outside_the_plan_is_refused():
    with pytest.raises(FabricError, match="not in the plan"):
        vm_user_data([{"name": "wn9", "vo": "cms"}], plan(), controller_files())
