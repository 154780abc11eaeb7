"""The torque and slurm roles through ansible-playbook: the controller-side slurm.conf block (on a copy), the
Torque server side live against the TORQUE 6.1.3 test bed (see torque_live.py), and the VM-side
contextualisation each builds - the cloud-init user-data the vm module's cloud_init.user_data takes - checked
for content, file modes, the munge key kept out of the output, and shell scripts that parse. The VM side is booted for real later, by the end-to-end test."""

from __future__ import annotations

import base64
import json
import os
import pwd
import shutil
import subprocess
import sys

import pytest

import torque_live
from torque_live import torque

__all__ = ["torque"]  # the fixture, used by name

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.dirname(sys.executable)


def playbook(tmp_path, plays, extra_env=None, check=False, verbose=True):
    """Run ``plays`` (a list of plays) on localhost with the checkout's ansible.cfg; return (rc, output)."""
    path = tmp_path / "play.yml"
    path.write_text(json.dumps(plays))
    argv = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", "localhost,", "-c", "local",
            "-e", "ansible_python_interpreter=%s" % sys.executable, str(path)]
    if verbose:
        argv.append("-v")
    if check:
        argv.append("--check")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_RETRY_FILES_ENABLED="0", PATH=os.pathsep.join([VENV_BIN, os.environ.get("PATH", "")]))
    env.update(extra_env or {})
    proc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          env=env, check=False)
    return proc.returncode, proc.stdout


def recap_changed(output):
    line = [line for line in output.splitlines() if line.startswith("localhost") and "ok=" in line][-1]
    return int(line.split("changed=")[1].split()[0])


def by_path(user_data):
    return {entry["path"]: entry for entry in user_data["write_files"]}


# ------------------------------------------------------------------------------------------ slurm


SLURM_CONF = "ClusterName=site\nSlurmctldHost=ctl\nNodeName=wn[001-100] CPUs=8 State=UNKNOWN\nPartitionName=grid Nodes=ALL Default=YES\n"


def test_slurm_controller_block_is_idempotent(tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text(SLURM_CONF)
    play = [{"hosts": "localhost", "gather_facts": False, "roles": [{"role": "skygrid.fabric.slurm", "vars": {
        "slurm_conf_path": str(conf), "slurm_reconfigure": False, "slurm_max_node_count": 300,
        "slurm_vos": [{"name": "atlas", "groups": ["atlas", "atlasprd"]},
                      {"name": "lhcb", "accounts": ["lhcb"], "partition_options": "MaxTime=2-00:00:00"}]}}]}]
    rc, out = playbook(tmp_path, play, check=True)
    assert rc == 0, out
    assert conf.read_text() == SLURM_CONF
    rc, out = playbook(tmp_path, play)
    assert rc == 0, out
    text = conf.read_text()
    assert text.startswith(SLURM_CONF)
    block = text[len(SLURM_CONF):].splitlines()
    assert block[0] == "# BEGIN skygrid.fabric slurm role" and block[-1] == "# END skygrid.fabric slurm role"
    assert block[2:-1] == [
        "MaxNodeCount=300",
        "TreeWidth=65533",
        "SlurmctldParameters=enable_configless",
        "NodeSet=vo_atlas Feature=atlas",
        "PartitionName=atlas Nodes=vo_atlas AllowGroups=atlas,atlasprd State=UP",
        "NodeSet=vo_lhcb Feature=lhcb",
        "PartitionName=lhcb Nodes=vo_lhcb AllowAccounts=lhcb State=UP MaxTime=2-00:00:00",
    ]
    rc, out = playbook(tmp_path, play)
    assert rc == 0 and recap_changed(out) == 0, out


def test_slurm_controller_rejects_bad_vo(tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text(SLURM_CONF)
    play = [{"hosts": "localhost", "gather_facts": False, "roles": [{"role": "skygrid.fabric.slurm", "vars": {
        "slurm_conf_path": str(conf), "slurm_reconfigure": False, "slurm_vos": [{"name": "at las"}]}}]}]
    rc, out = playbook(tmp_path, play)
    assert rc != 0 and "slurm_vos items need a name" in out
    assert conf.read_text() == SLURM_CONF


@pytest.fixture
def munge_key(tmp_path):
    key = os.urandom(128)
    path = tmp_path / "munge.key"
    path.write_bytes(key)
    path.chmod(0o400)
    return path, key


@pytest.fixture
def vo_domain(tmp_path):
    """The atlas VO's own cluster as the controller keeps it: its slurm.conf (port, munge socket) and key."""
    conf_dir, key_dir = tmp_path / "slurm-vo", tmp_path / "munge-vo"
    (conf_dir / "atlas").mkdir(parents=True)
    (conf_dir / "atlas" / "slurm.conf").write_text(
        "ClusterName=atlasvms\nSlurmctldPort=6821\nAuthType=auth/munge\n"
        "AuthInfo=socket=/run/munge-vo/atlas/munge.socket.2\nPartitionName=atlas Nodes=ALL Default=YES\n")
    key_dir.mkdir()
    key = os.urandom(128)
    (key_dir / "atlas.key").write_bytes(key)
    return {"slurm_vo_conf_dir": str(conf_dir), "slurm_vo_munge_key_dir": str(key_dir)}, key


def slurm_vm_context(tmp_path, munge_key_path, vms, **more):
    out = tmp_path / "user_data.json"
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "VM contextualisation", "ansible.builtin.include_role": {"name": "skygrid.fabric.slurm", "tasks_from": "vm_context"},
         "vars": dict({"slurm_munge_key_path": str(munge_key_path), "slurm_controller_address": "10.20.0.1",
                       "slurm_vms": vms}, **more)},
        {"name": "Keep it for the test", "ansible.builtin.copy": {"content": "{{ slurm_vm_user_data | to_json }}", "dest": str(out),
                                                                  "mode": "0600"}, "no_log": True},
    ]}]
    rc, output = playbook(tmp_path, play)
    return rc, output, (json.loads(out.read_text()) if out.exists() else None)


def check_script(tmp_path, text):
    script_path = tmp_path / "join.sh"
    script_path.write_text(text)
    assert subprocess.run(["sh", "-n", str(script_path)], check=False).returncode == 0
    if shutil.which("shellcheck"):
        check = subprocess.run(["shellcheck", "-s", "sh", str(script_path)], stdout=subprocess.PIPE, universal_newlines=True, check=False)
        assert check.returncode == 0, check.stdout


def test_slurm_vm_user_data(tmp_path, munge_key, vo_domain):
    """A VO-built VM gets its VO cluster's key, port and socket and declares nothing; only a VM of a
    site-built image (slurm_site_vos) gets the site's key."""
    key_path, key = munge_key
    domain, vo_key = vo_domain
    rc, output, data = slurm_vm_context(tmp_path, key_path, [
        {"name": "wn042-atlas-1", "vo": "atlas", "features": ["atlas", "vm"], "conf": "NodeAddr=10.20.0.17"},
        {"name": "wn042-site-1", "vo": "site", "features": ["site"], "conf": "RealMemory=3000"}],
        slurm_site_vos=["site"], **domain)
    assert rc == 0, output
    assert sorted(data) == ["wn042-atlas-1", "wn042-site-1"]
    atlas = data["wn042-atlas-1"]
    files = by_path(atlas)
    assert sorted(files) == ["/etc/munge/munge.key", "/etc/systemd/system/slurmd.service.d/skygrid-dynamic.conf",
                             "/etc/tmpfiles.d/skygrid-munge-vo.conf", "/usr/local/sbin/skygrid-slurm-join",
                             "/var/lib/cloud/scripts/per-boot/skygrid-slurm-join"]
    munge = files["/etc/munge/munge.key"]
    assert (munge["encoding"], munge["owner"], munge["permissions"]) == ("b64", "munge:munge", "0400")
    assert base64.b64decode(munge["content"]) == vo_key  # the VO's key, never the site's
    # Joined at every boot, the first included (cloud-init's per-boot scripts), never only once by runcmd:
    # a VM started again after its host rebooted must rejoin.
    assert "runcmd" not in atlas
    hook = files["/var/lib/cloud/scripts/per-boot/skygrid-slurm-join"]
    assert hook["permissions"] == "0755"
    assert hook["content"].startswith("#!/bin/sh\n") and hook["content"].endswith("\nexec /usr/local/sbin/skygrid-slurm-join\n")
    dropin = files["/etc/systemd/system/slurmd.service.d/skygrid-dynamic.conf"]["content"].splitlines()
    assert "ConditionPathExists=" in dropin and "ExecStart=" in dropin
    assert "ExecStart=/usr/sbin/slurmd -D -s -Z -N wn042-atlas-1 --conf-server 10.20.0.1:6821" in dropin
    # configless slurmd exits when its cluster does not answer yet: systemd starts it again, without limit
    assert "Restart=on-failure" in dropin and "StartLimitIntervalSec=0" in dropin
    tmpfiles = files["/etc/tmpfiles.d/skygrid-munge-vo.conf"]["content"]
    assert "L+ /run/munge-vo/atlas/munge.socket.2 - - - - /run/munge/munge.socket.2" in tmpfiles
    text = files["/usr/local/sbin/skygrid-slurm-join"]["content"]
    assert files["/usr/local/sbin/skygrid-slurm-join"]["permissions"] == "0755"
    assert text.startswith("#!/bin/sh\n") and "NODE='wn042-atlas-1'" in text and "SERVER='10.20.0.1:6821'" in text
    assert "CONF=''" in text and "AUTH_SOCKET='/run/munge-vo/atlas/munge.socket.2'" in text
    check_script(tmp_path, text)
    check_script(tmp_path, hook["content"])
    # Run at every boot: without systemd, a slurmd that already runs has joined (nothing started twice).
    no_systemd = text[text.index("# No systemd"):]
    assert no_systemd.index("if pidof slurmd") < no_systemd.index('"$SLURMD" -Z')
    # ... and one that cannot join yet is retried in the background (tests/e2e: a slot that cannot reach its cluster)
    assert "while sleep 10; ! start_slurmd; do :; done" in no_systemd

    site = by_path(data["wn042-site-1"])
    assert base64.b64decode(site["/etc/munge/munge.key"]["content"]) == key
    assert "/etc/tmpfiles.d/skygrid-munge-vo.conf" not in site
    assert ('--conf-server 10.20.0.1:6817 --conf "Feature=site RealMemory=3000"'
            in site["/etc/systemd/system/slurmd.service.d/skygrid-dynamic.conf"]["content"])
    check_script(tmp_path, site["/usr/local/sbin/skygrid-slurm-join"]["content"])

    # neither key shows in the output, even with -v, in any form
    for secret in (key, vo_key):
        assert base64.b64encode(secret).decode() not in output and secret.hex() not in output
    assert "censored" in output


def test_slurm_vo_vm_never_gets_the_site_key(tmp_path, munge_key, vo_domain):
    """Without a cluster of its own on the controller, a VO-built VM gets no contextualisation at all."""
    key_path, key = munge_key
    domain, _vo_key = vo_domain
    rc, output, data = slurm_vm_context(tmp_path, key_path, [{"name": "wn1-lhcb-1", "vo": "lhcb", "features": ["lhcb"]}],
                                        **domain)
    assert rc != 0 and data is None
    assert "VO lhcb has no trust domain" in output and "slurm_site_vos" in output
    assert base64.b64encode(key).decode() not in output


def test_slurm_vm_user_data_rejects_unsafe_conf(tmp_path, munge_key):
    key_path, key = munge_key
    rc, output, data = slurm_vm_context(tmp_path, key_path, [{"name": "wn1", "vo": "site", "features": ["atlas"],
                                                              "conf": "X=\"a\"; rm -rf /"}], slurm_site_vos=["site"])
    assert rc != 0 and "conf holds only slurmd node parameters" in output and data is None


def test_slurm_vo_domains_feed_the_vm_side(tmp_path, munge_key):
    """The controller side makes each VO's cluster (key once, 0400 munge; slurm.conf with its socket and
    port); the VM side then gives a VM of that VO exactly that key, port and socket."""
    key_path, site_key = munge_key
    dirs = {"slurm_vo_conf_dir": str(tmp_path / "slurm-vo"), "slurm_vo_munge_key_dir": str(tmp_path / "munge-vo"),
            "slurm_vo_state_dir": str(tmp_path / "state"), "slurm_vo_start": False}
    domains = [{"name": "atlas", "port": 6821, "groups": ["atlas"]}, {"name": "lhcb", "port": 6822}]
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "VO clusters", "ansible.builtin.include_role": {"name": "skygrid.fabric.slurm", "tasks_from": "vo_domains"},
         "vars": dict(dirs, slurm_vo_domains=domains, slurm_vo_controller_host="ctl")}]}]
    rc, out = playbook(tmp_path, play)
    assert rc == 0, out
    key_file = tmp_path / "munge-vo" / "atlas.key"
    stat = key_file.stat()
    assert oct(stat.st_mode & 0o777) == "0o400" and pwd.getpwuid(stat.st_uid).pw_name == "munge"
    atlas_key = key_file.read_bytes()
    assert atlas_key != (tmp_path / "munge-vo" / "lhcb.key").read_bytes() and atlas_key != site_key
    conf = (tmp_path / "slurm-vo" / "atlas" / "slurm.conf").read_text().splitlines()
    for line in ("SlurmctldHost=ctl", "SlurmctldPort=6821", "SlurmUser=slurm", "AuthType=auth/munge",
                 "AuthInfo=socket=/run/munge-vo/atlas/munge.socket.2", "SlurmctldParameters=enable_configless",
                 "PartitionName=atlas Nodes=ALL Default=YES AllowGroups=atlas State=UP"):
        assert line in conf, line
    assert not [line for line in conf if line.startswith("NodeName=")]  # no node is static
    rc, out = playbook(tmp_path, play)
    assert rc == 0 and recap_changed(out) == 0, out
    assert key_file.read_bytes() == atlas_key  # never replaced

    rc, output, data = slurm_vm_context(tmp_path, key_path, [{"name": "wn1-atlas-1", "vo": "atlas"}],
                                        **{k: dirs[k] for k in ("slurm_vo_conf_dir", "slurm_vo_munge_key_dir")})
    assert rc == 0, output
    files = by_path(data["wn1-atlas-1"])
    assert base64.b64decode(files["/etc/munge/munge.key"]["content"]) == atlas_key
    assert "SERVER='10.20.0.1:6821'" in files["/usr/local/sbin/skygrid-slurm-join"]["content"]


def test_slurm_vo_domains_refuse_a_shared_port(tmp_path):
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "VO clusters", "ansible.builtin.include_role": {"name": "skygrid.fabric.slurm", "tasks_from": "vo_domains"},
         "vars": {"slurm_vo_domains": [{"name": "atlas", "port": 6817}], "slurm_vo_start": False,
                  "slurm_vo_conf_dir": str(tmp_path / "c"), "slurm_vo_munge_key_dir": str(tmp_path / "k")}}]}]
    rc, out = playbook(tmp_path, play)
    assert rc != 0 and "a port of their own" in out and not (tmp_path / "k").exists()


# ------------------------------------------------------------------------------------------ torque


def test_torque_server_side_live(torque, tmp_path):
    """The torque role's queues and nodes through ansible-playbook against the live TORQUE 6.1.3 test bed: a VO
    queue routed to its property, a VM node with a pbs_mom (sgtrq-vm1) taken offline, one without (sgtrq-vm2)."""
    queue, vm1, vm2 = torque_live.PREFIX + "role", torque_live.VM, torque_live.PREFIX + "vm2"
    play = [{"hosts": "localhost", "gather_facts": False, "roles": [{"role": "skygrid.fabric.torque", "vars": {
        "torque_bin_dir": torque_live.BIN,
        "torque_vos": [{"name": queue, "property": "atlas", "groups": [torque_live.GROUP]}],
        "torque_nodes": [{"name": vm1, "cores": 1, "properties": ["atlas", "vm"], "state": "offline", "note": "converting"},
                         {"name": vm2, "cores": 2, "properties": ["lhcb", "vm"]}]}}]}]
    rc, out = playbook(tmp_path, play)
    assert rc == 0, out
    printed = torque_live.tq("qmgr", "-c", "print queue %s" % queue).stdout
    assert "resources_default.neednodes = 1:atlas" in printed and "acl_groups = %s" % torque_live.GROUP in printed
    assert torque_live.node_field(vm1, "properties") == "atlas,vm" and "offline" in torque_live.node_field(vm1, "state")
    assert torque_live.node_field(vm1, "note") == "converting"
    assert torque_live.node_field(vm2, "properties") == "lhcb,vm" and torque_live.node_field(vm2, "np") == "2"
    rc, out = playbook(tmp_path, play)
    assert rc == 0 and recap_changed(out) == 0, out


def test_torque_vm_user_data(tmp_path):
    out = tmp_path / "user_data.json"
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "VM contextualisation", "ansible.builtin.include_role": {"name": "skygrid.fabric.torque", "tasks_from": "vm_context"},
         "vars": {"torque_server_name": "torque.example.org", "torque_mom_node_check_script": "/usr/local/sbin/healthcheck",
                  "torque_mom_config_extra": ["$ideal_load 2.0"]}},
        {"name": "Keep it", "ansible.builtin.copy": {"content": "{{ torque_vm_user_data | to_json }}", "dest": str(out), "mode": "0600"}},
    ]}]
    rc, output = playbook(tmp_path, play)
    assert rc == 0, output
    data = json.loads(out.read_text())
    files = by_path(data)
    assert files["/var/spool/torque/server_name"]["content"] == "torque.example.org\n"
    assert files["/var/spool/torque/mom_priv/config"]["content"].splitlines() == [
        "# Generated by the skygrid.fabric torque role (VM contextualisation).",
        "$pbsserver torque.example.org",
        "$usecp *:/home /home",
        "$logevent 255",
        "$node_check_script /usr/local/sbin/healthcheck",
        "$node_check_interval 10",
        "$ideal_load 2.0",
    ]
    join = files["/usr/local/sbin/skygrid-torque-join"]
    assert join["permissions"] == "0755" and "runcmd" not in data
    hook = files["/var/lib/cloud/scripts/per-boot/skygrid-torque-join"]
    assert hook["permissions"] == "0755" and hook["content"].endswith("\nexec /usr/local/sbin/skygrid-torque-join\n")
    script_path = tmp_path / "join.sh"
    script_path.write_text(join["content"])
    assert subprocess.run(["sh", "-n", str(script_path)], check=False).returncode == 0


def test_torque_vm_context_needs_the_server(tmp_path):
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "VM contextualisation", "ansible.builtin.include_role": {"name": "skygrid.fabric.torque", "tasks_from": "vm_context"}}]}]
    rc, output = playbook(tmp_path, play)
    assert rc != 0 and "torque_server_name must name the Torque server" in output


def test_torque_on_demand_scripts(tmp_path):
    spool = tmp_path / "torque"
    (spool / "mom_priv").mkdir(parents=True)
    (spool / "mom_priv" / "epilogue").write_text("#!/bin/sh\n# the site's own epilogue\n")
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "On demand", "ansible.builtin.include_role": {"name": "skygrid.fabric.torque", "tasks_from": "on_demand"},
         "vars": {"torque_vms_on_demand": "{{ on_demand | bool }}", "torque_spool_dir": str(spool),
                  "torque_on_demand_domains": {"atlas": "wn042-atlas-1"}}}]}]
    rc, output = playbook(tmp_path, [dict(play[0], vars={"on_demand": True})])
    assert rc == 0, output
    prologue = spool / "mom_priv" / "prologue"
    assert oct(prologue.stat().st_mode & 0o777) == "0o500"
    text = prologue.read_text()
    assert "atlas) DOMAIN='wn042-atlas-1' ;;" in text and 'QUEUE="${6:-}"' in text
    assert 'QUEUE="${8:-}"' in (spool / "mom_priv" / "epilogue").read_text()
    for name in ("prologue", "epilogue"):
        assert subprocess.run(["sh", "-n", str(spool / "mom_priv" / name)], check=False).returncode == 0

    # switched off: ours are removed, a site's own script is never touched
    (spool / "mom_priv" / "epilogue").write_text("#!/bin/sh\n# the site's own epilogue\n")
    rc, output = playbook(tmp_path, [dict(play[0], vars={"on_demand": False})])
    assert rc == 0, output
    assert not prologue.exists() and (spool / "mom_priv" / "epilogue").read_text().endswith("own epilogue\n")
