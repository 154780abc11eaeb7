"""Fault injection on the site in a box: kill a playbook at a task, restart a daemon in the middle of a
run, kill a VM's QEMU, start two playbooks at once; then re-run, check that the site converges (the run after the repair run changes
nothing) and that a final revert leaves nothing behind.

    .venv/bin/python tests/faults/harness.py [--points all|sample|concurrent|NAME,...] [--list] [--log-dir DIR]

Each fault prints one line ``fault=... point=... outcome=... leaked=...``; the campaign ends with
``N faults, M converged, K leaked``. Exit status 0 only when every fault converged and nothing leaked.
Needs the test bed and Slurm started and the demo's VO side prepared (make demo does all three).
"""

from __future__ import annotations

import argparse
import base64
import glob
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from sitebox import changed_tasks, playbook_command, playbook_env, recap, run_playbook, sh  # noqa: E402

HOST = "localhost"  # the local site's one worker node; its slots are <host>-<vo>-<n>
SLOT = re.compile(r"^%s-[a-z0-9]+-\d+$" % re.escape(HOST))
POOL = "skygrid-images"
POOL_PATH = "/var/lib/skygrid/images"
NETWORK = "skygrid-sitevm"
IPAM_DB = "/var/lib/skygrid/ipam.sqlite"
VO_SLURM_CONFS = "/etc/slurm/vo"


class Fault:
    """One fault: ``kind`` is kill (SIGKILL the playbook when ``task`` starts), restart (a daemon, when
    ``task`` starts, the run going on), qemu (kill a slot VM's QEMU between runs) or concurrent (the
    playbook and ``other`` started at the same moment)."""

    def __init__(self, name, playbook, kind, task=None, delay=1.0, daemon=None, other=None):
        self.name, self.playbook, self.kind, self.task = name, playbook, kind, task
        self.delay, self.daemon, self.other = delay, daemon, other


FAULTS = [
    Fault("convert-drain", "convert_worker_nodes", "kill", "Drain the worker node", 0.5),
    Fault("convert-libvirt-config", "convert_worker_nodes", "kill", "Configure libvirt", 0.2),
    Fault("convert-isolation", "convert_worker_nodes", "kill", "Write the isolation rules", 0.2),
    Fault("convert-fabric", "convert_worker_nodes", "kill", "Define and start the VM networks and the image pool", 0.3),
    Fault("convert-staging", "convert_worker_nodes", "kill", "Stage, verify and prune", 1.0),
    Fault("convert-lease", "convert_worker_nodes", "kill", "Lease an address", 0.3),
    Fault("convert-reservation", "convert_worker_nodes", "kill", "Reserve the leased addresses", 0.3),
    Fault("convert-vm-start", "convert_worker_nodes", "kill", "Start the slot VMs", 1.5),
    Fault("convert-register", "convert_worker_nodes", "kill", "Register every slot", 0.3),
    Fault("convert-join-wait", "convert_worker_nodes", "kill", "Wait until every slot has joined", 5.0),
    Fault("convert-physical-out", "convert_worker_nodes", "kill", "Take the physical node out", 0.2),
    Fault("revert-drain-slots", "revert_worker_nodes", "kill", "Drain each slot's batch node", 0.5),
    Fault("revert-vms", "revert_worker_nodes", "kill", "Remove the slot VMs", 0.5),
    Fault("revert-leases", "revert_worker_nodes", "kill", "Release the slots' addresses", 0.2),
    Fault("revert-reservations", "revert_worker_nodes", "kill", "Drop the released addresses' DHCP", 0.2),
    Fault("revert-physical-online", "revert_worker_nodes", "kill", "Put the physical node back online", 0.2),
    Fault("rebalance-read", "rebalance", "kill", "List the VMs of this host", 0.2),
    Fault("rebalance-plan", "rebalance", "kill", "Plan this run's moves", 0.1),
    Fault("convert-restart-libvirtd", "convert_worker_nodes", "restart", "Start the slot VMs", 0.5, "libvirtd"),
    Fault("convert-restart-slurmctld", "convert_worker_nodes", "restart", "Register every slot", 0.2, "slurmctld"),
    Fault("revert-restart-libvirtd", "revert_worker_nodes", "restart", "Remove the slot VMs", 0.2, "libvirtd"),
    Fault("converted-qemu-killed", "convert_worker_nodes", "qemu"),
    Fault("concurrent-convert-rebalance", "convert_worker_nodes", "concurrent", other="rebalance"),
    Fault("concurrent-convert-convert", "convert_worker_nodes", "concurrent", other="convert_worker_nodes"),
    Fault("concurrent-rebalance-while-leasing", "convert_worker_nodes", "concurrent", "Lease an address",
          other="rebalance"),
]
CONCURRENT = ("concurrent-convert-rebalance", "concurrent-convert-convert", "concurrent-rebalance-while-leasing")
WAITING = re.compile(r"^run_lock: another run holds the fabric lock of (\S+): (\S+), pid (\d+)", re.M)
SAMPLE = ("convert-vm-start", "revert-vms")


def run_faulted(fault, log):
    """Run the fault's playbook; inject the fault when its task starts. Returns (rc, output, injected)."""
    command = playbook_command(fault.playbook)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=playbook_env(), cwd=ROOT, start_new_session=True)
    lines, injected = [], threading.Event()

    def inject():
        time.sleep(fault.delay)
        if fault.kind == "kill":
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the playbook (its workers are in sessions of their own)
            except ProcessLookupError:
                return
        else:
            restart_daemon(fault.daemon)
        injected.set()

    for line in proc.stdout:
        lines.append(line)
        log.write(line)
        if not injected.is_set() and fault.task and line.startswith("TASK [") and fault.task in line:
            injected.set()  # once
            threading.Thread(target=inject, daemon=True).start()
    proc.wait()
    return proc.returncode, "".join(lines), injected.is_set()


def run_together(playbooks, log, when=None):
    """Start two playbooks at the same moment, or the second when the task ``when`` starts in the first;
    returns one (rc, [(seconds since the first started, line)]) each."""
    started = time.monotonic()
    procs, lines, go = [], ([], []), threading.Event()

    def read(index):
        for line in procs[index].stdout:
            lines[index].append((time.monotonic() - started, line))
            if index == 0 and when and line.startswith("TASK [") and when in line:
                go.set()
        go.set()  # the first run ended before the task: start the second anyway

    readers = []
    for index, name in enumerate(playbooks):
        if index and when:
            go.wait()
        procs.append(subprocess.Popen(playbook_command(name), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, env=playbook_env(), cwd=ROOT, start_new_session=True))
        readers.append(threading.Thread(target=read, args=(index,)))
        readers[-1].start()
    for reader in readers:
        reader.join()
    for name, proc, timed in zip(playbooks, procs, lines):
        proc.wait()
        log.write("---- %s (pid %d, rc %d) of %s, the second started %s\n"
                  % (name, proc.pid, proc.returncode, " and ".join(playbooks),
                     "when %r started in the first" % when if when else "at the same moment"))
        log.write("".join("%7.1f %s" % (at, line) for at, line in timed))
    return [(proc.returncode, timed) for proc, timed in zip(procs, lines)]


def waits(timed):
    """How a run waited for the run lock: [(host, holder's playbook, holder's pid, seconds waited)]; the wait
    ends with the next line the run prints (the lock task's result)."""
    found = []
    for index, (at, line) in enumerate(timed):
        match = WAITING.match(line)
        if match:
            ended = next((later for later, text in timed[index + 1:] if text.strip()), at)
            found.append((match.group(1), match.group(2), int(match.group(3)), ended - at))
    return found


def duplicates():
    """What two runs at once must never leave: a slot leased or reserved twice, an address or MAC given to
    two slots, a slot VM's QEMU running twice, a lease without its VM or a VM without its lease."""
    problems = []
    vms = set(slot_vms())
    if os.path.exists(IPAM_DB):
        with sqlite3.connect("file:%s?mode=ro" % IPAM_DB, uri=True) as db:
            rows = db.execute("SELECT owner, ip, mac FROM leases").fetchall()
        slot_rows = [row for row in rows if SLOT.match(row[0])]
        for column, what in ((0, "slot"), (1, "address"), (2, "MAC")):
            problems += ["%s %s leased %d times" % (what, value, count) for value, count in
                         _counts(row[column] for row in rows).items() if count > 1]
        leased = {row[0] for row in slot_rows}
        problems += ["lease without a VM: %s" % name for name in sorted(leased - vms)]
        problems += ["VM without a lease: %s" % name for name in sorted(vms - leased)]
    xml = sh("virsh", "-c", "qemu:///system", "net-dumpxml", NETWORK, check=False).stdout
    hosts = re.findall(r"<host ([^>]*)/?>", xml)
    for attribute, what in (("name", "slot"), ("ip", "address"), ("mac", "MAC")):
        values = [found.group(1) for found in (re.search(r"%s='([^']+)'" % attribute, host) for host in hosts) if found]
        problems += ["%s %s reserved %d times in %s" % (what, value, count, NETWORK)
                     for value, count in _counts(values).items() if count > 1]
    qemus = sh("pgrep", "-a", "-f", "qemu-system", check=False).stdout
    guests = re.findall(r"-name guest=([^,\s]+)", qemus)
    problems += ["slot VM %s runs in %d QEMU processes" % (name, count) for name, count in _counts(guests).items()
                 if count > 1 and SLOT.match(name)]
    problems += ["slot node %s registered %d times" % (name, count) for name, count in _counts(batch_nodes()).items()
                 if count > 1]
    return problems


def _counts(values):
    counts = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def concurrent(fault, log):
    """The fault's playbook and ``fault.other`` at once (or ``other`` when ``task`` starts in the first): both
    must succeed, one after the other (the later one says which run it waited for), and leave no duplicate;
    then a convert changes nothing."""
    playbooks = (fault.playbook, fault.other)
    results = run_together(playbooks, log, fault.task)
    failed = [name for name, (rc, _timed) in zip(playbooks, results) if rc]
    if failed:
        return "failed", "%s failed (see the log)" % " and ".join(failed)
    waited = ["%s waited %.0f s for %s (pid %d) on %s" % (name, seconds, holder, pid, host)
              for name, (_rc, timed) in zip(playbooks, results) for host, holder, pid, seconds in waits(timed)]
    spans = [(timed[0][0], timed[-1][0]) for _rc, timed in results]
    one_after_other = spans[0][1] <= spans[1][0] or spans[1][1] <= spans[0][0]
    if not waited and not one_after_other:
        return "not-serialised", "the runs overlapped and neither waited for the run lock"
    found = duplicates()
    if found:
        return "duplicated", "; ".join(found)[:600]
    rc, out = run_playbook("convert_worker_nodes", "--diff")
    log.write(out)
    changed = changed_tasks(out)
    if rc or recap(out)[1] or changed:
        return "not-converged", "the convert after them changed: %s" % "; ".join(changed)[:600]
    return "converged", "; ".join(waited) or "one ran after the other"


def restart_daemon(daemon):
    if daemon == "libvirtd":
        sh("bash", os.path.join(ROOT, "scripts", "testbed.sh"), "stop", check=False)
        sh("bash", os.path.join(ROOT, "scripts", "testbed.sh"), "start")
    elif daemon == "slurmctld":
        # every slurmctld of the test bed (the site's and each VO's), then the test bed's start brings them back
        sh("pkill", "-TERM", "-x", "slurmctld", check=False)
        deadline = time.monotonic() + 60
        while sh("pgrep", "-x", "slurmctld", check=False).returncode == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        sh("bash", os.path.join(ROOT, "scripts", "slurm-testbed.sh"), "start")
    else:
        raise ValueError(daemon)


def slot_vms():
    out = sh("virsh", "-q", "-c", "qemu:///system", "list", "--all", "--name", check=False).stdout
    return sorted(name for name in out.split() if SLOT.match(name))


def leftovers():
    """Everything a revert must have removed, by kind; empty lists when nothing leaked."""
    found = {"vms": slot_vms()}
    volumes = sh("virsh", "-q", "-c", "qemu:///system", "vol-list", POOL, check=False).stdout.split("\n")
    found["overlays and seeds"] = sorted(line.split()[0] for line in volumes
                                         if line.split() and line.split()[0].startswith(HOST + "-"))
    staging = os.path.join(POOL_PATH, ".skygrid", "staging")
    found["partial images"] = sorted(os.listdir(staging)) if os.path.isdir(staging) else []
    if os.path.exists(IPAM_DB):
        with sqlite3.connect("file:%s?mode=ro" % IPAM_DB, uri=True) as db:
            found["leases"] = [row[0] for row in db.execute("SELECT owner FROM leases")]
    xml = sh("virsh", "-c", "qemu:///system", "net-dumpxml", NETWORK, check=False).stdout
    found["dhcp reservations"] = re.findall(r"<host [^>]*name='([^']+)'", xml)
    found["batch nodes"] = batch_nodes()
    return {kind: items for kind, items in found.items() if items}


def batch_nodes():
    """Slot nodes in the site's Slurm cluster and in each VO's cluster."""
    confs = [None] + sorted(os.path.join(VO_SLURM_CONFS, vo, "slurm.conf") for vo in
                            (os.listdir(VO_SLURM_CONFS) if os.path.isdir(VO_SLURM_CONFS) else []))
    names = []
    for conf in confs:
        env = dict(os.environ, SLURM_CONF=conf) if conf else None
        out = subprocess.run(["scontrol", "-o", "show", "node"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, env=env, check=False).stdout
        names += [name for name in re.findall(r"^NodeName=(\S+)", out, re.M) if SLOT.match(name)]
    return sorted(names)


def prepare(fault):
    """The state the fault's playbook starts from: converted for revert and rebalance, reverted for convert.
    The daemons come first: an earlier fault (or anyone sharing the machine) may have stopped them."""
    sh("bash", os.path.join(ROOT, "scripts", "testbed.sh"), "start")
    sh("bash", os.path.join(ROOT, "scripts", "slurm-testbed.sh"), "start")
    wanted = "convert_worker_nodes" if fault.playbook != "convert_worker_nodes" else "revert_worker_nodes"
    rc, out = run_playbook(wanted)
    assert rc == 0, "preparing (%s) failed:\n%s" % (wanted, out[-3000:])
    if fault.kind == "qemu":
        rc, out = run_playbook("convert_worker_nodes")
        assert rc == 0, out[-3000:]


def inject_and_recover(fault, log):
    """The fault, then the repair run and the check run. Returns (outcome, detail)."""
    if fault.kind == "concurrent":
        return concurrent(fault, log)
    if fault.kind == "qemu":
        vms = slot_vms()
        if not vms:
            return "not-injected", "no slot VM runs"
        sh("pkill", "-KILL", "-f", "qemu-system-x86_64 -name guest=%s," % vms[0], check=False)
        injected = True
    else:
        rc, out, injected = run_faulted(fault, log)
        if not injected:
            return "not-injected", "the task %r never started" % fault.task
    rc, out = run_playbook(fault.playbook)
    log.write(out)
    if rc:
        return "failed", "the repair run failed: %s" % out[-600:].replace("\n", " | ")
    rc, out = run_playbook(fault.playbook, "--diff")  # what still changes, shown
    log.write(out)
    changed = changed_tasks(out)
    if rc or recap(out)[1] or changed:
        return "not-converged", "the run after the repair changed: %s" % "; ".join(changed)[:600]
    return "converged", ""


def secrets():
    """The munge keys a run handles (the site's and each VO's), as they could appear in a log."""
    paths = ["/etc/munge/munge.key"] + sorted(glob.glob("/etc/munge/vo/*.key"))
    found = {}
    for path in paths:
        try:
            with open(path, "rb") as handle:
                key = handle.read()
        except OSError:
            continue
        found[path] = [base64.b64encode(key).decode()[:40], key.hex()[:40]]
    return found


def secret_scan(log_dir):
    """A -vvv converge into the campaign's logs, then every log searched for every key: (logs, hits)."""
    rc, out = run_playbook("convert_worker_nodes", "-vvv")
    with open(os.path.join(log_dir, "converge-vvv.log"), "w") as log:
        log.write(out)
    hits, logs = [], sorted(glob.glob(os.path.join(log_dir, "*.log")))
    keys = secrets()
    for path in logs:
        with open(path, errors="replace") as handle:
            text = handle.read()
        hits += ["%s in %s" % (key, os.path.basename(path)) for key, forms in keys.items()
                 if any(form in text for form in forms)]
    return len(logs), len(keys), hits


def campaign(names, log_dir):
    os.makedirs(log_dir, exist_ok=True)
    results = []
    for fault in (fault for fault in FAULTS if fault.name in names):
        with open(os.path.join(log_dir, fault.name + ".log"), "w") as log:
            try:
                prepare(fault)
            except (AssertionError, subprocess.CalledProcessError) as exc:
                outcome, detail = "not-prepared", str(exc)[-600:].replace("\n", " | ")
            else:
                outcome, detail = inject_and_recover(fault, log)
            rc, out = run_playbook("revert_worker_nodes")
            log.write(out)
            leaked = leftovers() if rc == 0 else {"revert": ["failed"]}
        line = "fault=%s point=%s:%r outcome=%s leaked=%d%s" % (
            fault.kind if not fault.daemon else "restart-" + fault.daemon,
            fault.playbook + ("+" + fault.other if fault.other else ""),
            ("%s, %s started" % (fault.task, fault.other) if fault.task and fault.other else
             fault.task or ("at once" if fault.other else "between runs")),
            outcome, sum(len(items) for items in leaked.values()),
            " (%s)" % "; ".join("%s: %s" % (kind, ", ".join(items)) for kind, items in leaked.items()) if leaked else "")
        print(line + (" - " + detail if detail else ""), flush=True)
        results.append((fault, outcome, leaked))
    logs, keys, hits = secret_scan(log_dir)
    print("secrets: %d keys searched in %d logs (one at -vvv): %s" % (keys, logs, "; ".join(hits) or "none found"),
          flush=True)
    converged = sum(1 for result in results if result[1] == "converged")
    leaked = sum(1 for result in results if result[2])
    print("%d faults, %d converged, %d leaked" % (len(results), converged, leaked), flush=True)
    return results, hits


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", default="all",
                        help="all, sample, concurrent, or fault names separated by commas")
    parser.add_argument("--list", action="store_true", help="list the faults and exit")
    parser.add_argument("--log-dir", default=os.path.join(ROOT, "tests", "output", "faults"))
    args = parser.parse_args()
    if args.list:
        for fault in FAULTS:
            other = "with %s%s" % (fault.other, " at %s" % fault.task if fault.task else "") if fault.other else ""
            print("%-36s %-22s %-10s %s" % (fault.name, fault.playbook, fault.kind, other or fault.task or ""))
        return 0
    names = ([fault.name for fault in FAULTS] if args.points == "all" else SAMPLE if args.points == "sample" else
             CONCURRENT if args.points == "concurrent" else args.points.split(","))
    unknown = set(names) - {fault.name for fault in FAULTS}
    if unknown:
        parser.error("unknown faults: %s (see --list)" % ", ".join(sorted(unknown)))
    results, hits = campaign(names, args.log_dir)
    return 0 if not hits and all(result[1] == "converged" and not result[2] for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
