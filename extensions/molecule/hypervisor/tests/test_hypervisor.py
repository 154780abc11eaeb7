"""Verify the hypervisor role's result on the converged host (pytest-testinfra)."""

import json
import time

URI = "qemu:///system"


def virsh(host, *args):
    return host.run("virsh -c %s %s" % (URI, " ".join(args)))


def test_libvirtd_answers(host):
    assert virsh(host, "version").rc == 0


def test_qemu_runs_unprivileged(host):
    conf = host.file("/etc/libvirt/qemu.conf").content_string
    assert 'user = "libvirt-qemu"' in conf and "dynamic_ownership = 1" in conf
    xml = ("<domain type='qemu'><name>sgmol-probe</name><memory unit='MiB'>32</memory>"
           "<os><type arch='x86_64'>hvm</type></os></domain>")
    assert host.run("cat > /tmp/sgmol-probe.xml <<'EOF'\n%s\nEOF" % xml).rc == 0
    assert virsh(host, "create", "/tmp/sgmol-probe.xml").rc == 0
    try:
        time.sleep(0.5)
        users = host.run("ps -o user= -C qemu-system-x86_64").stdout.split()
        assert users and "root" not in users, users
    finally:
        virsh(host, "destroy", "sgmol-probe")


def test_network_and_pool_active(host):
    assert "Active:         yes" in virsh(host, "net-info", "sgmol-net").stdout
    assert "<forward" not in virsh(host, "net-dumpxml", "sgmol-net").stdout
    info = virsh(host, "pool-info", "sgmol-pool").stdout
    assert "State:          running" in info and "Autostart:      yes" in info
    assert oct(host.file("/var/lib/skygrid-molecule/pool").mode) == "0o711"


def test_clean_traffic_filter_present(host):
    names = [line.split()[-1] for line in virsh(host, "nwfilter-list").stdout.splitlines()[2:] if line.strip()]
    assert "clean-traffic" in names


def test_firewall_rules(host):
    chain = host.run("iptables -S SKYGRID-VM-EGRESS").stdout
    accept = [line for line in chain.splitlines() if "192.0.2.10/32" in line]
    reject = [line for line in chain.splitlines() if "192.0.2.0/24" in line]
    assert accept and "--dport 15001" in accept[0] and "-j ACCEPT" in accept[0]
    assert reject and "-j REJECT" in reject[0]
    assert chain.index("192.0.2.10/32") < chain.index("192.0.2.0/24")  # the exception comes first
    for parent in ("FORWARD", "INPUT"):
        assert "-i sgmol0" in host.run("iptables -S %s" % parent).stdout


def test_ksm_applied(host):
    assert host.file("/sys/kernel/mm/ksm/run").content_string.strip() == "1"
    assert host.file("/sys/kernel/mm/ksm/pages_to_scan").content_string.strip() == "100"
    assert "w /sys/kernel/mm/ksm/run - - - - 1" in host.file("/etc/tmpfiles.d/skygrid-ksm.conf").content_string


def test_capacity_fact(host):
    fact = json.loads(host.file("/etc/ansible/facts.d/skygrid_hypervisor.fact").content_string)
    assert fact["reserved_cores"] == 1 and fact["slot_cores"] == fact["cpus"] - 1
    assert fact["image_pool"] == "sgmol-pool" and fact["networks"] == ["sgmol-net"]
