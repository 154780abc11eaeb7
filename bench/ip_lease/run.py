"""Benchmark: skygrid.fabric.ip_lease allocating 10,000 leases in one pool via ``leases:`` lists.

1. in the module's Python: module_utils/ipam/transaction.run called directly, as the module calls it, one call per
   list (a fresh database; each call opens it, runs one transaction and closes it, as a module run does);
2. through real module processes, one after another (``python -m ...ip_lease ARGS.json``, as Ansible
   runs a module on the target), split into the process's wall time and the time inside the module's
   main() (argument parsing, the transaction, the JSON result) - the difference is the per-call overhead
   of starting Python and importing Ansible;
3. with 20 module processes at once, each running its share of calls back to back.

Targets (issue 5): >= 5,000 leases/s in batch within the module's Python, and no call over 1 s under
20-way concurrency. Prints PASS/FAIL per target; exits 1 when a target fails.
Usage: bench/ip_lease/run.py [--count 10000] [--batch 500] [--workers 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(ROOT, "collections")
MODULE = "ansible_collections.skygrid.fabric.plugins.modules.ip_lease"
POOLS = {"bench": {"cidr": "10.64.0.0/16", "gateway": "10.64.0.1", "reserved": ["10.64.0.2-10.64.0.9"],
                   "dns_domain": "vm.example.org"}}
BATCH_TARGET = 5000.0      # leases/s within the module's Python
LATENCY_TARGET = 1.0       # seconds, any call under 20-way concurrency


def child(args_path):
    """``run.py --child ARGS.json``: run the module like ``python -m``, and report on stderr how long
    its main() took (everything after the imports)."""
    sys.path.insert(0, COLLECTIONS)
    import importlib
    module = importlib.import_module(MODULE)
    sys.argv = [module.__file__, args_path]
    start = time.monotonic()
    try:
        module.main()
    except SystemExit:
        pass
    finally:
        sys.stderr.write("\nBENCH-IN-MODULE %.6f\n" % (time.monotonic() - start))


def owners(start, count):
    return [{"owner": "bench-%05d" % i} for i in range(start, start + count)]


def in_python(db, count, batch):
    sys.path.insert(0, COLLECTIONS)
    from ansible_collections.skygrid.fabric.plugins.module_utils.ipam import transaction
    from ansible_collections.skygrid.fabric.plugins.module_utils.ipam.pool import build_requests
    from ansible_collections.skygrid.fabric.plugins.module_utils.reconcile import Reconciler
    calls = []
    start = time.monotonic()
    for first in range(0, count, batch):
        began = time.monotonic()
        requests = build_requests("bench", leases=owners(first, min(batch, count - first)))
        transaction.run(db, POOLS, requests, Reconciler())
        calls.append(time.monotonic() - began)
    return time.monotonic() - start, calls


def module_call(db, items, workdir):
    """One module process; returns (wall seconds, in-module seconds, result)."""
    fd, path = tempfile.mkstemp(suffix=".json", dir=workdir)
    with os.fdopen(fd, "w") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": {"db": db, "pool": "bench", "pools": POOLS, "leases": items,
                                           "_ansible_check_mode": False, "_ansible_diff": False}}, handle)
    began = time.monotonic()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", path], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, check=False,
                          env=dict(os.environ, PYTHONPATH=COLLECTIONS))
    wall = time.monotonic() - began
    os.unlink(path)
    marker = [line for line in proc.stderr.splitlines() if line.startswith("BENCH-IN-MODULE ")]
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        raise SystemExit("module printed no JSON (rc=%d): %s %s" % (proc.returncode, proc.stdout, proc.stderr))
    if result.get("failed"):
        raise SystemExit("module failed: %s" % result.get("msg"))
    return wall, float(marker[-1].split()[1]), result


def sequential_processes(db, count, batch, workdir):
    calls = []
    start = time.monotonic()
    for first in range(0, count, batch):
        wall, inside, _result = module_call(db, owners(first, min(batch, count - first)), workdir)
        calls.append((wall, inside))
    total = time.monotonic() - start
    noop = [module_call(db, owners(0, 1), workdir)[:2] for _call in range(5)]  # a lease that exists: fixed cost
    return total, calls, noop


def concurrent_processes(db, count, workers, per_worker_calls, workdir):
    per_call = count // (workers * per_worker_calls)
    barrier = threading.Barrier(workers)

    def worker(index):
        barrier.wait()
        timings = []
        for call in range(per_worker_calls):
            first = (index * per_worker_calls + call) * per_call
            timings.append(module_call(db, owners(first, per_call), workdir)[:2])
        return timings

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        timings = [t for result in pool.map(worker, range(workers)) for t in result]
    return time.monotonic() - start, timings, per_call


def check_database(db, expected):
    conn = sqlite3.connect(db)
    try:
        total, ips, macs, owners_ = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT ip), COUNT(DISTINCT mac), COUNT(DISTINCT owner) FROM leases").fetchone()
    finally:
        conn.close()
    if not total == ips == macs == owners_ == expected:
        raise SystemExit("database check failed: %d leases, %d IPs, %d MACs, %d owners (expected %d)"
                         % (total, ips, macs, owners_, expected))


def verdict(ok):
    return "PASS" if ok else "FAIL"


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10000, help="leases to allocate (default 10000)")
    parser.add_argument("--batch", type=int, default=500, help="leases per call (default 500)")
    parser.add_argument("--workers", type=int, default=20, help="concurrent processes (default 20)")
    parser.add_argument("--calls-per-worker", type=int, default=5, help="calls each concurrent process makes")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    figures = {"count": args.count, "batch": args.batch, "workers": args.workers, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="ip_lease_bench.") as workdir:
        db = os.path.join(workdir, "python.sqlite")
        total, calls = in_python(db, args.count, args.batch)
        check_database(db, args.count)
        single_db = os.path.join(workdir, "single.sqlite")
        single_total, _single = in_python(single_db, args.count, args.count)
        check_database(single_db, args.count)
        figures["python"] = {"seconds": total, "leases_per_s": args.count / total, "max_call_s": max(calls),
                             "one_call_seconds": single_total, "one_call_leases_per_s": args.count / single_total}

        db = os.path.join(workdir, "processes.sqlite")
        total, calls, noop = sequential_processes(db, args.count, args.batch, workdir)
        check_database(db, args.count)
        walls, insides = [c[0] for c in calls], [c[1] for c in calls]
        figures["processes"] = {
            "seconds": total, "leases_per_s": args.count / total, "calls": len(calls),
            "mean_call_wall_s": sum(walls) / len(walls), "mean_call_in_module_s": sum(insides) / len(insides),
            "per_call_overhead_s": (sum(walls) - sum(insides)) / len(walls),
            "noop_call_wall_s": min(n[0] for n in noop), "noop_call_in_module_s": min(n[1] for n in noop)}

        db = os.path.join(workdir, "concurrent.sqlite")
        total, timings, per_call = concurrent_processes(db, args.count, args.workers, args.calls_per_worker, workdir)
        allocated = per_call * args.workers * args.calls_per_worker
        check_database(db, allocated)
        walls, insides = [t[0] for t in timings], [t[1] for t in timings]
        figures["concurrent"] = {
            "seconds": total, "leases": allocated, "leases_per_s": allocated / total, "calls": len(timings),
            "leases_per_call": per_call, "max_call_in_module_s": max(insides),
            "mean_call_in_module_s": sum(insides) / len(insides), "max_call_wall_s": max(walls),
            "mean_call_wall_s": sum(walls) / len(walls)}

    py, proc, conc = figures["python"], figures["processes"], figures["concurrent"]
    ok_batch = py["leases_per_s"] >= BATCH_TARGET
    ok_latency = conc["max_call_in_module_s"] <= LATENCY_TARGET
    ok_wall = conc["max_call_wall_s"] <= LATENCY_TARGET
    print("ip_lease: %d leases in one pool, lists of %d, %d CPUs" % (args.count, args.batch, figures["cpus"]))
    print("  in the module's Python (ipam.run per list)  %8.0f leases/s  (%.2f s, slowest call %.3f s)"
          % (py["leases_per_s"], py["seconds"], py["max_call_s"]))
    print("  in the module's Python (one list of %d)  %8.0f leases/s  (%.2f s)"
          % (args.count, py["one_call_leases_per_s"], py["one_call_seconds"]))
    print("  module processes, one after another          %8.0f leases/s  (%.2f s, %d calls)"
          % (proc["leases_per_s"], proc["seconds"], proc["calls"]))
    print("    mean call: %.3f s wall, %.3f s in the module -> per-call overhead %.3f s (Python start + imports)"
          % (proc["mean_call_wall_s"], proc["mean_call_in_module_s"], proc["per_call_overhead_s"]))
    print("    call that changes nothing (lease exists):  %.3f s wall, %.3f s in the module"
          % (proc["noop_call_wall_s"], proc["noop_call_in_module_s"]))
    print("  %d module processes at once, %d calls of %d  %8.0f leases/s  (%.2f s)"
          % (args.workers, conc["calls"], conc["leases_per_call"], conc["leases_per_s"], conc["seconds"]))
    print("    call in the module (lock wait + work): mean %.3f s, max %.3f s"
          % (conc["mean_call_in_module_s"], conc["max_call_in_module_s"]))
    print("    call wall (process start to exit):     mean %.3f s, max %.3f s"
          % (conc["mean_call_wall_s"], conc["max_call_wall_s"]))
    print("  batch in the module's Python >= %d leases/s          %s" % (BATCH_TARGET, verdict(ok_batch)))
    print("  no call over %.0f s in the module under %d-way concurrency  %s"
          % (LATENCY_TARGET, args.workers, verdict(ok_latency)))
    print("  no call over %.0f s wall under %d-way concurrency        %s%s"
          % (LATENCY_TARGET, args.workers, verdict(ok_wall),
             "" if ok_wall else "  (process start-up of %d Pythons on %d CPUs)" % (args.workers, figures["cpus"])))
    figures["targets"] = {"batch": ok_batch, "latency_in_module": ok_latency, "latency_wall": ok_wall}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)
    return 0 if ok_batch and ok_latency and ok_wall else 1


if __name__ == "__main__":
    sys.exit(main())
