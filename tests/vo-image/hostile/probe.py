"""The hostile VM's boot script (tests/e2e/test_3_hostile_vm.py): run as root, at boot, in a VO worker
VM that holds its VO cluster's munge key - what any VO controlling its image has. It tries what such a VO
would try against the site and prints one console line per attempt:

    SKYGRID-HOSTILE <attempt> blocked|SUCCEEDED|allowed <detail>

``allowed`` marks the controls (what the VM is meant to reach), which show the probe itself works.
Arguments: a JSON object (gateway, controller, ports, node names, own and forged addresses).
"""

import json
import os
import socket
import subprocess
import sys


def say(attempt, outcome, detail=""):
    detail = " ".join(str(detail).split())[:160]
    print("SKYGRID-HOSTILE %s %s %s" % (attempt, outcome, detail), flush=True)


def run(argv, conf=None, timeout=40):
    env = dict(os.environ, SLURM_CONF=conf) if conf else dict(os.environ)
    try:
        proc = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True, timeout=timeout, check=False)
        return proc.returncode, proc.stdout
    except subprocess.TimeoutExpired:
        return 124, "timed out"


def cluster_conf(args, name, port):
    """A client slurm.conf for one of the site's clusters, as a VM could write it."""
    path = "/tmp/hostile-%s.conf" % name
    with open(path, "w") as handle:
        handle.write("ClusterName=%s\nSlurmctldHost=%s(%s)\nSlurmctldPort=%d\nAuthType=auth/munge\n"
                     "CredType=cred/munge\n" % (name, args["controller"], args["gateway"], port))
    return path


def connect(address, port, source=None, timeout=4):
    sock = socket.socket()
    sock.settimeout(timeout)
    try:
        if source:
            sock.bind((source, 0))
        sock.connect((address, port))
        return True, "connected"
    except OSError as exc:
        return False, exc.__class__.__name__ + (" errno %s" % exc.errno if getattr(exc, "errno", None) else "")
    finally:
        sock.close()


def blocked_unless(ok, attempt, detail):
    say(attempt, "SUCCEEDED" if ok else "blocked", detail)


def main():
    args = json.loads(sys.argv[1])
    gw = args["gateway"]
    site = cluster_conf(args, "site", args["site_port"])
    other = cluster_conf(args, "other", args["other_port"])
    own = cluster_conf(args, "own", args["own_port"])

    # Controls: the VM's own cluster accepts its key, its slurmctld port is open to it.
    rc, out = run(["scontrol", "-o", "show", "partition"], own)
    say("control-own-cluster", "allowed" if rc == 0 and "PartitionName=" in out else "FAILED", out)
    ok, detail = connect(gw, args["own_port"])
    say("control-own-port", "allowed" if ok else "FAILED", detail)

    # Credentials minted with the VO's key, against the site's cluster and another VO's.
    rc, out = run(["scontrol", "update", "nodename=%s" % args["physical_node"], "reason=hostile-vm"], site)
    blocked_unless(rc == 0, "site-admin-change-physical-node", out)
    rc, out = run(["sbatch", "--wrap", "id", "--output=/dev/null"], site)
    blocked_unless(rc == 0, "site-run-job-as-root", out)
    rc, out = run(["scontrol", "update", "nodename=%s" % args["other_node"], "state=drain", "reason=hostile-vm"], other)
    blocked_unless(rc == 0, "other-vo-drain-its-vm", out)
    rc, out = run(["sbatch", "--wrap", "id", "--output=/dev/null"], other)
    blocked_unless(rc == 0, "other-vo-run-job-as-root", out)
    rc, out = run(["slurmd", "-Z", "-N", args["other_node"], "--conf-server", "%s:%d" % (gw, args["other_port"]),
                   "--conf", "Feature=%s NodeAddr=%s" % (args["other_vo"], args["own_ip"])])
    blocked_unless(rc == 0, "other-vo-register-as-its-node", out)
    if rc == 0:
        run(["pkill", "-x", "slurmd"])

    # Forged source address and MAC (the anti-spoofing filter).
    run(["ip", "addr", "add", "%s/24" % args["forged_ip"], "dev", "eth0"])
    ok, detail = connect(gw, args["own_port"], source=args["forged_ip"])
    blocked_unless(ok, "forged-source-ip", detail)
    run(["ip", "addr", "del", "%s/24" % args["forged_ip"], "dev", "eth0"])
    rc, mac = run(["cat", "/sys/class/net/eth0/address"])
    run(["ip", "link", "set", "eth0", "address", args["forged_mac"]])
    ok, detail = connect(gw, args["own_port"])
    blocked_unless(ok, "forged-mac", detail)
    run(["ip", "link", "set", "eth0", "address", mac.strip()])
    run(["ip", "neigh", "flush", "dev", "eth0"])

    # The hypervisor's own services on the VM bridge.
    for port in args["host_ports"]:
        ok, detail = connect(gw, port)
        blocked_unless(ok, "host-service-%d" % port, detail)
    print("SKYGRID-HOSTILE-DONE", flush=True)


if __name__ == "__main__":
    main()
