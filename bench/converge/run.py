"""How much a converge that changes nothing costs (the CI-pipeline case), side by side in one run.

1. One converted host: `convert_worker_nodes.yml` on the converted site in a box against an empty play
   (fact gathering and one ping, what `- hosts: worker_nodes; tasks: [ping]` costs) over the same host.
2. Several hosts: the same no-op converge over N inventory names for this machine (each the same VM
   host: same batch node, same slot names, so nothing changes), run as the playbook runs them (the
   converted nodes all at once) and with --forks 1 (one node after another, what `serial: 1` for every
   node cost before), against an empty play over the N names.
3. The hypervisor packages, nothing missing (a site's converge with hypervisor_install_packages, the
   default): the role's check (dpkg/rpm query, the package module only for what is missing) against
   the package module over the same list, what the role ran before.

Needs a converted site in a box (`make demo`); the run first converges it once and checks that a
second run changes nothing. Prints the ratios; --json writes them.
    .venv/bin/python bench/converge/run.py [--repeat 3] [--hosts 4] [--profile] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOCAL = os.path.join(ROOT, "inventories", "local")
CONVERT = os.path.join(ROOT, "playbooks", "convert_worker_nodes.yml")
CALLBACKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "callback_plugins")
RECAP_CHANGED = re.compile(r"^\S+\s*: ok=\d+\s+changed=(\d+)", re.M)
HYPERVISOR = os.path.join(ROOT, "roles", "hypervisor")
PACKAGES_PLAY = """- name: The hypervisor packages, nothing missing
  hosts: localhost
  gather_facts: false
  vars:
    hypervisor_install_packages: true
  tasks:
    - name: The OS family's package list
      ansible.builtin.include_vars: %(role)s/vars/Debian.yml
    - name: The role's check
      ansible.builtin.import_tasks: %(role)s/tasks/packages.yml
      when: way == 'role'
    - name: The package module alone
      ansible.builtin.package:
        name: "{{ hypervisor_os_packages }}"
        state: present
      when: way == 'package'
""" % {"role": HYPERVISOR}
EMPTY_PLAY = """- name: An empty play (facts and one ping)
  hosts: worker_nodes
  tasks:
    - name: Ping
      ansible.builtin.ping:
"""


def playbook(inventory, path, *extra, timer=None):
    """Run a playbook with the checkout's collection; return (seconds, output)."""
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, "collections"))
    if timer:
        env.update(TASK_TIMER_FILE=timer, ANSIBLE_CALLBACK_PLUGINS=CALLBACKS, ANSIBLE_CALLBACKS_ENABLED="task_timer")
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", inventory, path] + list(extra)
    start = time.monotonic()
    proc = subprocess.run(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          check=False)
    elapsed = time.monotonic() - start
    if proc.returncode:
        sys.exit("%s failed:\n%s" % (" ".join(command), proc.stdout[-4000:]))
    return elapsed, proc.stdout


def changed(output):
    return sum(int(count) for count in RECAP_CHANGED.findall(output))


def alias_inventory(directory, count):
    """N names for this machine, each the same converted VM host, in the local site's groups."""
    hosts = {"wn%02d" % index: {"vm_slots_host_name": "localhost"} for index in range(1, count + 1)}
    inventory = {"all": {"children": {
        "worker_nodes": {"hosts": hosts},
        "hypervisors": {"hosts": {name: None for name in hosts}},
        "batch_servers": {"hosts": {"localhost": None}},
        "ipam_hosts": {"hosts": {"localhost": None}}},
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}
    path = os.path.join(directory, "aliases")
    os.makedirs(os.path.join(path, "group_vars"))
    with open(os.path.join(path, "hosts.yml"), "w") as handle:
        json.dump(inventory, handle)
    os.symlink(os.path.join(LOCAL, "group_vars", "all.yml"), os.path.join(path, "group_vars", "all.yml"))
    return path


def median_of(repeat, func):
    return statistics.median(func() for dummy in range(repeat))


def top_tasks(timer, count=12):
    rows = [json.loads(line) for line in open(timer)]
    rows.sort(key=lambda row: -row["seconds"])
    return rows[:count], len(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each way; the median counts")
    parser.add_argument("--hosts", type=int, default=4, help="inventory names for this machine in part 2")
    parser.add_argument("--profile", action="store_true", help="print the slowest tasks of a no-op converge")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="skygrid-bench-converge-") as workdir:
        empty = os.path.join(workdir, "empty.yml")
        with open(empty, "w") as handle:
            handle.write(EMPTY_PLAY)

        playbook(LOCAL, CONVERT)
        out = playbook(LOCAL, CONVERT)[1]
        if changed(out):
            sys.exit("the site in a box is not converged: a second convert run changed %d tasks" % changed(out))

        one_empty = median_of(args.repeat, lambda: playbook(LOCAL, empty)[0])
        one_noop = median_of(args.repeat, lambda: playbook(LOCAL, CONVERT)[0])

        aliases = alias_inventory(workdir, args.hosts)
        many_empty = median_of(args.repeat, lambda: playbook(aliases, empty)[0])
        many_parallel = median_of(args.repeat, lambda: playbook(aliases, CONVERT)[0])
        many_serial = median_of(args.repeat, lambda: playbook(aliases, CONVERT, "--forks", "1")[0])
        out = playbook(aliases, CONVERT)[1]
        if changed(out):
            sys.exit("the %d-name converge changed %d tasks: not a no-op" % (args.hosts, changed(out)))

        packages = os.path.join(workdir, "packages.yml")
        with open(packages, "w") as handle:
            handle.write(PACKAGES_PLAY)
        package_role = median_of(args.repeat, lambda: playbook(LOCAL, packages, "-e", "way=role")[0])
        package_module = median_of(args.repeat, lambda: playbook(LOCAL, packages, "-e", "way=package")[0])
        package_none = median_of(args.repeat, lambda: playbook(LOCAL, packages, "-e", "way=none")[0])

        profile = None
        if args.profile:
            timer = os.path.join(workdir, "tasks.jsonl")
            playbook(LOCAL, CONVERT, timer=timer)
            profile = top_tasks(timer)

    figures = {
        "one_host": {"empty_play_s": round(one_empty, 2), "noop_converge_s": round(one_noop, 2),
                     "ratio": round(one_noop / one_empty, 2), "target": "<= 5"},
        "hosts": args.hosts,
        "many_hosts": {"empty_play_s": round(many_empty, 2), "noop_converge_parallel_s": round(many_parallel, 2),
                       "noop_converge_one_at_a_time_s": round(many_serial, 2),
                       "ratio_to_empty": round(many_parallel / many_empty, 2),
                       "speedup_over_one_at_a_time": round(many_serial / many_parallel, 2)},
        "packages_nothing_missing": {"play_without_check_s": round(package_none, 2),
                                     "role_check_s": round(package_role, 2),
                                     "package_module_s": round(package_module, 2)},
        "cpus": os.cpu_count(), "repeat": args.repeat,
    }
    print("one converted host, no-op converge %.2f s vs empty play %.2f s: %.1fx (target <= 5x: %s)"
          % (one_noop, one_empty, one_noop / one_empty, "PASS" if one_noop <= 5 * one_empty else "FAIL"))
    print("%d host names, no-op converge %.2f s in parallel, %.2f s one at a time (%.1fx faster); "
          "empty play %.2f s (%.1fx)"
          % (args.hosts, many_parallel, many_serial, many_serial / many_parallel, many_empty, many_parallel / many_empty))
    print("hypervisor packages, nothing missing: the role's check %.2f s, the package module %.2f s "
          "(each a play of %.2f s without either): %.2f s saved per converge"
          % (package_role, package_module, package_none, package_module - package_role))
    if profile:
        rows, total = profile
        print("slowest of %d tasks in a no-op converge:" % total)
        for row in rows:
            print("  %6.2f s  %s" % (row["seconds"], row["task"]))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
