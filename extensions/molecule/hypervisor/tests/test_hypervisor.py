"""Verify the hypervisor role's result on the converged host (pytest-testinfra)."""

import json
import re
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


HOST_CHAIN, EGRESS = "SGMOL-HOST", "SGMOL-EGRESS"  # the scenario's own chains (vars/scenario.yml)
HOOK = "/etc/libvirt/hooks/network.d/50-sgmol-vm-isolation"


def rules(host, chain, tool="iptables"):
    return host.run("%s -S %s" % (tool, chain)).stdout.splitlines()


def leads(host, chain, jump, tool="iptables"):
    """``jump`` is among the rules that open ``chain``, before libvirt's chains and any other rule. Only
    the role's dispatch jumps (to a ``...-IN`` or ``...-FWD`` chain) may share the lead: another site on
    this host has its own, each matching its own bridges only, so their order does not matter."""
    lead = []
    for line in rules(host, chain, tool)[1:]:  # [0] is the policy
        if not re.match(r"-A %s -j \S+-(IN|FWD)$" % chain, line):
            break
        lead.append(line)
    return "-A %s -j %s" % (chain, jump) in lead


def test_firewall_rules(host):
    egress = rules(host, EGRESS)
    assert "RELATED,ESTABLISHED -j ACCEPT" in egress[1]  # replies to allowed traffic pass, first
    accept = [line for line in egress if "192.0.2.10/32" in line]
    reject = [line for line in egress if "192.0.2.0/24" in line]
    assert accept and "--dport 15001" in accept[0] and "-j ACCEPT" in accept[0]
    assert reject and "-j REJECT" in reject[0]
    assert egress.index(accept[0]) < egress.index(reject[0])  # the exception comes first
    on_host = rules(host, HOST_CHAIN)
    assert "RELATED,ESTABLISHED -j ACCEPT" in on_host[1]
    assert any("--dport 67" in line for line in on_host) and any("--dport 53" in line for line in on_host)
    assert any("192.168.241.1/32" in line and "--dport 15003" in line and "-j ACCEPT" in line for line in on_host)
    assert on_host[-1].endswith("-j REJECT --reject-with icmp-admin-prohibited")  # the rest of the host: closed
    for tool in ("iptables", "ip6tables"):  # the jumps come first, before libvirt's chains
        assert leads(host, "INPUT", HOST_CHAIN + "-IN", tool)
        assert leads(host, "FORWARD", EGRESS + "-FWD", tool)
        dispatch = rules(host, HOST_CHAIN + "-IN", tool)
        assert "-A %s-IN -i sgmol0 -j %s" % (HOST_CHAIN, HOST_CHAIN) in dispatch  # every network gets them
        # on a bridge the host shares, only frames from a VM's port: the host's own traffic never matches
        assert "-A %s-IN -i sgmolbr0 -m physdev --physdev-in vnet+ -j %s" % (HOST_CHAIN, HOST_CHAIN) in dispatch
    assert rules(host, EGRESS, "ip6tables")[-1].endswith("-j REJECT --reject-with icmp6-adm-prohibited")


def test_rules_come_back_when_libvirt_starts_the_network(host):
    """What a reboot does: libvirt starts the (autostarted) network, its hook applies the rules again."""
    assert host.file(HOOK).mode == 0o755
    assert host.run("iptables -D INPUT -j %s-IN && iptables -F %s" % (HOST_CHAIN, HOST_CHAIN)).rc == 0
    assert "-A INPUT -j %s-IN" % HOST_CHAIN not in rules(host, "INPUT")
    assert virsh(host, "net-destroy", "sgmol-net").rc == 0
    assert virsh(host, "net-start", "sgmol-net").rc == 0
    assert leads(host, "INPUT", HOST_CHAIN + "-IN")
    assert rules(host, HOST_CHAIN)[-1].endswith("-j REJECT --reject-with icmp-admin-prohibited")


# A "VM": a network namespace on a veth whose host end is a port of the bridge. Its name tells the rules
# whether it is a VM's port (vnet*) or another port of a shared bridge (the host's uplink side).
PROBE = """
import socket, sys
s = socket.socket()
s.settimeout(3)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("open")
except socket.timeout:
    print("timeout")
except OSError as exc:
    print("refused" if exc.errno in (111, 113) else "error %s" % exc.errno)
"""


class Guest:
    def __init__(self, host, name, port, bridge, address):
        self.host, self.name = host, name
        commands = ["ip netns add %s" % name, "ip link add %s type veth peer name %s-g" % (port, name),
                    "ip link set %s-g netns %s" % (name, name), "ip link set %s master %s up" % (port, bridge),
                    "ip -n %s addr add %s dev %s-g" % (name, address, name),
                    "ip -n %s link set %s-g up" % (name, name), "ip -n %s link set lo up" % name]
        for command in commands:
            assert host.run(command).rc == 0, command
        self.port = port

    def connect(self, address, port):
        self.host.run("cat > /tmp/sgmol-probe.py <<'EOF'\n%s\nEOF" % PROBE)
        return self.host.run("ip netns exec %s python3 /tmp/sgmol-probe.py %s %d" % (self.name, address, port)).stdout.strip()

    def remove(self):
        self.host.run("ip netns del %s; ip link del %s" % (self.name, self.port))


def listen(host, address, port):
    """A TCP listener on the host for a few seconds."""
    host.run("timeout 20 python3 -c 'import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, "
             "socket.SO_REUSEADDR, 1); s.bind((\"%s\", %d)); s.listen(8); time.sleep(20)' >/dev/null 2>&1 &" % (address, port))
    time.sleep(1)


def test_vms_reach_on_the_host_only_what_the_site_allows(host):
    guest = Guest(host, "sgmolvm1", "vnetsgmol1", "sgmol0", "192.168.241.77/24")
    try:
        listen(host, "192.168.241.1", 15003)
        listen(host, "192.168.241.1", 15004)
        assert guest.connect("192.168.241.1", 15003) == "open"  # an allowed service
        assert guest.connect("192.168.241.1", 15004) == "refused"  # any other host service: rejected
        # replies to a connection the host opens pass (ESTABLISHED)
        host.run("ip netns exec sgmolvm1 timeout 20 python3 -c 'import socket,time; s=socket.socket(); "
                 "s.bind((\"0.0.0.0\", 15005)); s.listen(8); time.sleep(20)' >/dev/null 2>&1 &")
        time.sleep(1)
        assert host.run("python3 /tmp/sgmol-probe.py 192.168.241.77 15005").stdout.strip() == "open"
    finally:
        guest.remove()


def test_bridge_mode_never_locks_the_host_out(host):
    vm = Guest(host, "sgmolvm2", "vnetsgmol2", "sgmolbr0", "192.168.242.77/24")
    lan = Guest(host, "sgmollan", "sgmollan0", "sgmolbr0", "192.168.242.78/24")  # the host's LAN side
    try:
        listen(host, "192.168.242.1", 15004)
        assert lan.connect("192.168.242.1", 15004) == "open"  # e.g. the admin's SSH: never matched
        assert vm.connect("192.168.242.1", 15004) == "refused"  # a VM's port: the host is closed to it
    finally:
        vm.remove()
        lan.remove()


def test_ksm_applied(host):
    assert host.file("/sys/kernel/mm/ksm/run").content_string.strip() == "1"
    assert host.file("/sys/kernel/mm/ksm/pages_to_scan").content_string.strip() == "100"
    assert "w /sys/kernel/mm/ksm/run - - - - 1" in host.file("/etc/tmpfiles.d/skygrid-ksm.conf").content_string


def test_capacity_fact(host):
    fact = json.loads(host.file("/etc/ansible/facts.d/skygrid_hypervisor.fact").content_string)
    assert fact["reserved_cores"] == 1 and fact["slot_cores"] == fact["cpus"] - 1
    assert fact["image_pool"] == "sgmol-pool" and fact["networks"] == ["sgmol-net", "sgmol-net-br"]
