"""A hostile VM, live: a VO worker VM whose boot script (tests/vo-image/hostile/probe.py, run as root by
its user-data) holds the atlas cluster's munge key - what root in any atlas VM has - and tries the
attacks of docs/SECURITY.md against the converted site in a box. Every attempt must fail; the controls
(its own cluster, its own slurmctld port) must work, so a probe that reaches nothing proves nothing.
The table is printed (pytest -s shows it) and kept in docs/SECURITY.md."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time

import pytest

from sitebox import ROOT, run_playbook, sh
from modrun import run_module

NAME = "sghostile-atlas"
IP, FORGED_IP = "192.168.244.200", "192.168.244.201"
MAC, FORGED_MAC = "52:54:00:5e:c0:01", "52:54:00:5e:c0:02"
GATEWAY = "192.168.244.1"
NODE = subprocess.run(["hostname", "-s"], stdout=subprocess.PIPE, text=True, check=True).stdout.strip()
CONSOLE = "/var/log/libvirt/qemu/%s-console.log" % NAME
# The host's services on the VM bridge a VM must not reach: sshd, rpcbind, libvirtd (tcp, tls), the
# site's slurmd and dynamic slurmd ports, QEMU's migration ports, and the site's slurmctld.
HOST_PORTS = [22, 111, 16509, 16514, 6818, 6819, 49152]
RESULT = re.compile(r"^SKYGRID-HOSTILE (\S+) (\S+) ?(.*)$", re.M)


def console():
    try:
        with open(CONSOLE, errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


IDENTITY = ("NodeAddr", "AvailableFeatures", "ActiveFeatures", "State", "Reason")


def node_line(vo, name):
    """What the attempts could change about a node: its address, features, state and reason."""
    line = sh("scontrol", "-o", "-F", "show", "node", name, vo=vo, check=False).stdout
    return {key: value for key, value in re.findall(r"(?:^|\s)(\w+)=(\S*)", line) if key in IDENTITY}


@pytest.fixture(scope="module")
def hostile(converted_site):
    rc, out = run_playbook("convert_worker_nodes")  # an earlier module may have reverted the site
    assert rc == 0, out[-4000:]
    slot = run_module("vm_info", {"name": "%s-atlas-1" % "localhost"})["vms"][0]
    with open("/etc/munge/vo/atlas.key", "rb") as handle:  # what every atlas VM holds
        key = base64.b64encode(handle.read()).decode()
    with open(os.path.join(ROOT, "tests", "vo-image", "hostile", "probe.py")) as handle:
        probe = handle.read()
    args = {"gateway": GATEWAY, "controller": NODE, "site_port": 6817, "own_port": 6821, "other_port": 6822,
            "other_vo": "lhcb", "other_node": "localhost-lhcb-1", "physical_node": NODE,
            "own_ip": IP, "forged_ip": FORGED_IP, "forged_mac": FORGED_MAC, "host_ports": HOST_PORTS}
    if os.path.exists(CONSOLE):
        os.unlink(CONSOLE)
    spec = {"name": NAME, "state": "running", "virt_type": "qemu", "memory_mb": 512,
            "kernel": "/var/cache/skygrid/vo-image/vmlinuz", "initrd": "/var/cache/skygrid/vo-image/initrd.img",
            "cmdline": "console=ttyS0 root=/dev/vda rw quiet",
            "disks": [{"pool": slot["disks"][0]["pool"], "base_volume": slot["disks"][0]["base_volume"]}],
            "nics": [{"network": "skygrid-sitevm", "ip": IP, "mac": MAC}],
            "cloud_init": {
                "user_data": {
                    "write_files": [
                        {"path": "/etc/munge/munge.key", "encoding": "b64", "content": key,
                         "owner": "munge:munge", "permissions": "0400"},
                        {"path": "/root/probe.py", "content": probe, "permissions": "0700"}],
                    "runcmd": [["runuser", "-u", "munge", "--", "/usr/sbin/munged"],
                               ["python3", "/root/probe.py", json.dumps(args)]]},
                "network_config": {"version": 2, "ethernets": {"eth0": {
                    "match": {"macaddress": MAC}, "addresses": [IP + "/24"]}}}},
            "metadata": {"vo": "atlas", "trust_class": 2}}
    before = {"lhcb": node_line("lhcb", "localhost-lhcb-1"), "site": node_line(None, NODE)}
    result = run_module("vm", spec)
    assert not result.failed, result.get("msg")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and "SKYGRID-HOSTILE-DONE" not in console():
        time.sleep(2)
    yield {"console": console(), "before": before}
    run_module("vm", {"name": NAME, "state": "absent"})


def test_every_attack_of_a_hostile_vm_fails(hostile):
    text = hostile["console"]
    assert "SKYGRID-HOSTILE-DONE" in text, "the probe did not finish:\n" + text[-3000:]
    results = RESULT.findall(text)
    print("\n%-34s %-9s %s" % ("attempt (root in an atlas VM)", "outcome", "detail"))
    for attempt, outcome, detail in results:
        print("%-34s %-9s %s" % (attempt, outcome, detail[:90]))
    outcomes = {attempt: outcome for attempt, outcome, _detail in results}
    assert outcomes.pop("control-own-cluster") == "allowed" and outcomes.pop("control-own-port") == "allowed"
    assert len(outcomes) == 7 + len(HOST_PORTS)
    assert set(outcomes.values()) == {"blocked"}, outcomes
    # and nothing changed where the credentials were tried
    assert node_line("lhcb", "localhost-lhcb-1") == hostile["before"]["lhcb"]
    assert node_line(None, NODE) == hostile["before"]["site"]


def test_no_local_account_reads_a_seed_or_overlay(hostile):
    for volume in ("localhost-lhcb-1-cidata.iso", "localhost-lhcb-1-vda.qcow2", NAME + "-cidata.iso"):
        path = os.path.join("/var/lib/skygrid/images", volume)
        assert os.path.exists(path), path
        denied = subprocess.run(["runuser", "-u", "nobody", "--", "head", "-c", "1", path],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, (path, denied.stderr)
