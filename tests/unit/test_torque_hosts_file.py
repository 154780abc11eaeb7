"""The Torque server's hosts file (vm_slots_torque_hosts_file) may be a bind mount - a container's /etc/hosts,
the multi-host test bed's mh-batch - which Ansible's atomic rename cannot replace ("Device or resource busy",
seen on the test bed): every task that writes it must let blockinfile fall back to an in-place write."""

from __future__ import annotations

import os

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = ["roles/vm_slots/tasks/present.yml", "roles/vm_slots/tasks/absent.yml", "playbooks/rebalance.yml"]


def tasks(node):
    """Every task dict in a task file or playbook, blocks and plays included."""
    if isinstance(node, list):
        for item in node:
            yield from tasks(item)
    elif isinstance(node, dict):
        yield node
        for key in ("tasks", "pre_tasks", "post_tasks", "handlers", "block", "rescue", "always"):
            yield from tasks(node.get(key) or [])


def hosts_file_writers():
    found = []
    for name in FILES:
        with open(os.path.join(ROOT, name)) as handle:
            for task in tasks(yaml.safe_load(handle)):
                args = task.get("ansible.builtin.blockinfile")
                if args and "vm_slots_torque_hosts_file" in str(args.get("path")):
                    found.append((name, task["name"], args))
    return found


def test_every_writer_of_the_torque_hosts_file_may_write_it_in_place():
    writers = hosts_file_writers()
    # the slots' block is added (role, rebalance) and removed (role)
    assert sorted(writer[0] for writer in writers) == sorted(FILES)
    for name, task, args in writers:
        assert args.get("unsafe_writes") is True, "%s: %r renames over the hosts file only" % (name, task)
