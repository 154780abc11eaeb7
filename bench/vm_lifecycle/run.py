"""Benchmark: define + start, then remove, N VMs (no OS) three ways, against the live libvirtd.

1. skygrid.fabric.vm with a ``vms:`` list (one task to start all, one to remove all);
2. community.libvirt.virt in a loop (define, start; then destroy, undefine), as sites write it today;
3. raw libvirt-python (the floor).

Prints the wall times and ratios and checks the targets: skygrid >= 5x faster than the
community.libvirt loop, and within 2x of raw libvirt-python.
Usage: .venv/bin/python bench/vm_lifecycle/run.py [--count 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import libvirt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.path.join(ROOT, ".cache", "bench")
URI = "qemu:///system"
PREFIX = "sgbench"
ANSIBLE_PACKAGE = "ansible==12.3.0"  # ships community.libvirt; Galaxy is not reachable from here
LXML_PACKAGE = "lxml==6.0.2"  # community.libvirt.virt needs it; skygrid.fabric does not


def domain_xml(name):
    return ("<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os><on_poweroff>destroy</on_poweroff>"
            "<devices><serial type='pty'/><console type='pty'/></devices></domain>" % name)


def community_environment():
    """community.libvirt from the ansible package on PyPI (and the lxml it imports), installed into
    the benchmark's own cache, not into the project's venv. Returns (collections path, python path)."""
    collections = os.path.join(CACHE, "ansible-package")
    pylibs = os.path.join(CACHE, "pylibs")
    if not glob.glob(os.path.join(collections, "ansible_collections", "community", "libvirt")):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", collections,
                        ANSIBLE_PACKAGE], check=True)
    if not glob.glob(os.path.join(pylibs, "lxml")):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", pylibs, LXML_PACKAGE], check=True)
    return collections, pylibs


def cleanup(conn):
    for dom in conn.listAllDomains():
        if dom.name().startswith(PREFIX):
            if dom.isActive():
                dom.destroy()
            dom.undefine()


def run_playbook(text, collections_path, workdir, pythonpath=None):
    path = os.path.join(workdir, "play.yml")
    with open(path, "w") as handle:
        handle.write(text)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path, ANSIBLE_STDOUT_CALLBACK="default",
               ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"))
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    start = time.monotonic()
    # The ansible-playbook of the interpreter running the benchmark (.venv/bin), whatever PATH says.
    playbook_cmd = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    proc = subprocess.run([playbook_cmd, "-i", "localhost,", "-c", "local",
                           "-e", "ansible_python_interpreter=" + sys.executable, path],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    elapsed = time.monotonic() - start
    if proc.returncode:
        sys.exit("ansible-playbook failed:\n" + proc.stdout[-3000:])
    return elapsed


def bench_skygrid(names, workdir):
    items = "\n".join("          - name: %s" % name for name in names)
    play = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Start all
      skygrid.fabric.vm:
        state: running
        virt_type: qemu
        memory_mb: 64
        console_log: ""
        vms:
%(items)s
    - name: Remove all
      skygrid.fabric.vm:
        state: absent
        vms:
%(items)s
""" % {"items": items}
    return run_playbook(play, os.path.join(ROOT, "collections"), workdir)


def bench_community(names, workdir, environment):
    play = """
- hosts: localhost
  gather_facts: false
  vars:
    names: %(names)s
    xml_template: "%(xml)s"
  tasks:
    - name: Define
      community.libvirt.virt:
        command: define
        xml: "{{ xml_template | replace('NAME', item) }}"
      loop: "{{ names }}"
    - name: Start
      community.libvirt.virt:
        name: "{{ item }}"
        state: running
      loop: "{{ names }}"
    - name: Destroy
      community.libvirt.virt:
        name: "{{ item }}"
        state: destroyed
      loop: "{{ names }}"
    - name: Undefine
      community.libvirt.virt:
        name: "{{ item }}"
        command: undefine
      loop: "{{ names }}"
""" % {"names": json.dumps(names), "xml": domain_xml("NAME")}
    return run_playbook(play, environment[0], workdir, pythonpath=environment[1])


def bench_raw(names):
    start = time.monotonic()
    conn = libvirt.open(URI)
    domains = []
    for name in names:
        dom = conn.defineXML(domain_xml(name))
        dom.create()
        domains.append(dom)
    for dom in domains:
        dom.destroy()
        dom.undefine()
    conn.close()
    return time.monotonic() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    conn = libvirt.open(URI)
    cleanup(conn)
    community = community_environment()
    names = ["%s-%02d" % (PREFIX, i) for i in range(args.count)]
    with tempfile.TemporaryDirectory() as workdir:
        times = {}
        times["raw libvirt-python"] = bench_raw(names)
        cleanup(conn)
        times["skygrid.fabric.vm (vms list)"] = bench_skygrid(names, workdir)
        cleanup(conn)
        times["community.libvirt.virt loop"] = bench_community(names, workdir, community)
        cleanup(conn)
    sky, raw, community = (times["skygrid.fabric.vm (vms list)"], times["raw libvirt-python"],
                           times["community.libvirt.virt loop"])
    print("vm_lifecycle: define+start then remove %d VMs (QEMU TCG, no OS)" % args.count)
    for label, seconds in times.items():
        print("  %-32s %7.2f s" % (label, seconds))
    speedup, overhead = community / sky, sky / raw
    ok_speedup, ok_overhead = speedup >= 5, overhead <= 2
    print("  community.libvirt / skygrid      %7.2fx  (target >= 5x)  %s" % (speedup, "PASS" if ok_speedup else "FAIL"))
    print("  skygrid / raw libvirt-python     %7.2fx  (target <= 2x)  %s" % (overhead, "PASS" if ok_overhead else "FAIL"))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"count": args.count, "seconds": times, "speedup_vs_community": speedup,
                       "ratio_to_raw": overhead}, handle, indent=2)
    return 0 if ok_speedup and ok_overhead else 1


if __name__ == "__main__":
    sys.exit(main())
