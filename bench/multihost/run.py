"""Conversion wall time on the multi-host test bed (docs/MULTIHOST.md), not a test.

For each number of worker nodes (--nodes, default 1 2 3) and each `fabric_convert_serial` (--serial, default 1 3):
revert the site, then time `convert_worker_nodes.yml --limit <the first N worker nodes>`. Then, with every worker
node converted, the no-op converge of the whole site against an empty play (facts and one ping) over the same hosts.
The VO images stay staged between runs (revert keeps them), so the times are those of a site whose image cache is
warm. Needs `scripts/multihost-testbed.sh start` and the VO side (prepare.py, see docs/MULTIHOST.md).
    .venv/bin/python bench/multihost/run.py [--nodes 1 2 3] [--serial 1 3] [--json FILE]
The no-op converge runs with the checkout's ansible.cfg (pipelining on) and again with pipelining off, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from sitebox import playbook_command, playbook_env  # noqa: E402  (the tests' way to run a playbook)

INVENTORY = os.path.join(ROOT, "inventories", "multihost")
WORKERS = ["mh-wn%d.skygrid.test" % n for n in (1, 2, 3)]
RECAP_CHANGED = re.compile(r"^\S+\s*: ok=\d+\s+changed=(\d+)", re.M)
EMPTY_PLAY = """- name: An empty play (facts and one ping)
  hosts: worker_nodes
  tasks:
    - name: Ping
      ansible.builtin.ping:
"""


def run(name_or_path, *args, pipelining=True):
    """A playbook of the collection (by name) or a file (by path) against the test bed; (seconds, changed).
    pipelining=False runs it as a controller without ansible.cfg's ``pipelining = True`` would."""
    if name_or_path.endswith(".yml"):
        command = ["ansible-playbook", "-i", INVENTORY, name_or_path] + list(args)
    else:
        command = playbook_command(name_or_path, *args, inventory=INVENTORY)
    start = time.monotonic()
    env = dict(playbook_env(), ANSIBLE_PIPELINING="True" if pipelining else "False")
    proc = subprocess.run(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False)
    elapsed = time.monotonic() - start
    if proc.returncode:
        sys.exit("%s failed:\n%s" % (" ".join(command), proc.stdout[-4000:]))
    return elapsed, sum(int(count) for count in RECAP_CHANGED.findall(proc.stdout))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="*", default=[1, 2, 3],
                        help="conversions of the first N nodes to time; none (--nodes alone) times only the no-op")
    parser.add_argument("--serial", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--json")
    args = parser.parse_args()
    results = {"convert": []}
    for nodes in args.nodes:
        for serial in args.serial:
            run("revert_worker_nodes")
            limit = ",".join(WORKERS[:nodes])
            seconds, changed = run("convert_worker_nodes", "--limit", limit, "-e", "fabric_convert_serial=%d" % serial)
            results["convert"].append({"nodes": nodes, "serial": serial, "seconds": round(seconds, 1), "changed": changed})
            print("convert %d node(s), serial %d: %6.1f s (%d changed)" % (nodes, serial, seconds, changed), flush=True)
    run("convert_worker_nodes")  # every worker node converted
    noop, changed = run("convert_worker_nodes")
    noop_unpipelined, changed_unpipelined = run("convert_worker_nodes", pipelining=False)
    with tempfile.NamedTemporaryFile("w", suffix=".yml", dir=ROOT, delete=False) as handle:
        handle.write(EMPTY_PLAY)
    try:
        empty = run(handle.name)[0]
    finally:
        os.unlink(handle.name)
    results["noop"] = {"converge_s": round(noop, 1), "changed": changed, "empty_play_s": round(empty, 1),
                       "ratio": round(noop / empty, 1), "converge_without_pipelining_s": round(noop_unpipelined, 1),
                       "changed_without_pipelining": changed_unpipelined}
    print("no-op converge of %d worker nodes: %.1f s (%d changed); empty play: %.1f s; ratio %.1f"
          % (len(WORKERS), noop, changed, empty, noop / empty))
    print("the same without pipelining: %.1f s (%d changed); pipelining makes it %.2fx faster"
          % (noop_unpipelined, changed_unpipelined, noop_unpipelined / noop))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
