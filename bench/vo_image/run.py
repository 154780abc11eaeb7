"""Benchmark: stage a 1 GiB VO image with skygrid.fabric.vo_image versus the floor, in one run.

The floor is what an admin would type for the same file: ``curl -o`` + ``sha512sum`` + ``cp`` into
the pool directory. skygrid.fabric.vo_image does more (fetches and verifies the signed list, checks
the format with qemu-img, makes the volume read-only, fsyncs, writes provenance, publishes with a
rename, refreshes the pool) and runs as Ansible runs it on a target: a separate Python process.

Both fetch the same file from the same local HTTP server (127.0.0.1, sendfile). Each round runs
both (alternating which goes first), each after an untimed ``sync`` so that neither inherits the
other's dirty page cache (vo_image fsyncs the volume before publishing it; on ext4 that journal
commit would otherwise also write back the floor's 2 GiB of copies); the reported figure per side is
the median over the rounds.
Target: vo_image <= 1.3x the floor.

Generated data lives under /var/tmp/skygrid-bench-vo_image (about 3 GiB while it runs) and is
removed at the end, together with the benchmark's storage pool ``sgbench-img-pool``.
Usage: .venv/bin/python bench/vo_image/run.py [--size-mib 1024] [--rounds 5] [--format qcow2|raw] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import libvirt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import imagelist_fixtures as fx  # noqa: E402  (a test helper: PKI, signed lists, the HTTP server)
from modrun import run_module  # noqa: E402

URI = "qemu:///system"
POOL = "sgbench-img-pool"
WORK = "/var/tmp/skygrid-bench-vo_image"
TARGET = 1.3


def remove_pool(conn):
    try:
        pool = conn.storagePoolLookupByName(POOL)
    except libvirt.libvirtError:
        return
    if pool.isActive():
        pool.destroy()
    try:
        pool.undefine()
    except libvirt.libvirtError:
        pass  # a transient pool is gone once destroyed


def make_pool(conn, path):
    remove_pool(conn)
    os.makedirs(path, exist_ok=True)
    pool = conn.storagePoolCreateXML(
        "<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>" % (POOL, path), 0)
    return pool


def floor(url, sha512, download_dir, pool_dir):
    """curl + sha512sum + cp, as one would type it; returns seconds."""
    target = os.path.join(download_dir, "image")
    script = ('set -e; curl -sSf -o "$1" "$2"; echo "$3  $1" | sha512sum -c --quiet -; '
              'cp "$1" "$4/floor-image.qcow2"')
    os.sync()  # start with no dirty data of the other side's step to write back
    start = time.monotonic()
    subprocess.run(["bash", "-c", script, "floor", target, url, sha512, pool_dir], check=True)
    elapsed = time.monotonic() - start
    os.unlink(target)
    os.unlink(os.path.join(pool_dir, "floor-image.qcow2"))
    return elapsed


def staged(args):
    os.sync()  # as for the floor: vo_image's fsync must not pay for the floor's unwritten copies
    start = time.monotonic()
    result = run_module("vo_image", args)
    elapsed = time.monotonic() - start
    if result.failed or not result["changed"]:
        sys.exit("vo_image did not stage the image: %s" % (result.get("msg") or result))
    gone = run_module("vo_image", dict(args, state="absent"))
    if gone.failed:
        sys.exit("vo_image could not remove the image: %s" % gone.get("msg"))
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--format", choices=["qcow2", "raw"], default="qcow2",
                        help="format of the served image (raw is converted to qcow2 while staging)")
    parser.add_argument("--json", help="also write the figures to this file")
    options = parser.parse_args()

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open(URI)
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    server = fx.FileServer()
    try:
        print("generating a %d MiB %s image and a signed list under %s ..." % (options.size_mib, options.format, WORK))
        pki = fx.Pki(os.path.join(WORK, "pki"))
        image = os.path.join(WORK, "image." + options.format)
        if options.format == "qcow2":
            fx.qcow2_image(image, options.size_mib << 20)
        else:
            fx.random_file(image, options.size_mib << 20)
        url = server.add("image", image)
        sha512 = fx.sha512_of(image)
        text = fx.image_list([fx.image_entry("bench-image", url, image, sha512=sha512, fmt=options.format)])
        list_url = server.add_bytes("bench.list", fx.sign(text, pki.endorser), WORK)
        pool_dir = os.path.join(WORK, "pool")
        download_dir = os.path.join(WORK, "download")
        os.makedirs(download_dir)
        make_pool(conn, pool_dir)
        args = {"uri": URI, "pool": POOL, "vo": "bench", "image": "bench-image", "list_url": list_url,
                "endorsers": pki.endorsers(), "ca_path": pki.ca_path}
        floors, ours = [], []
        for round_no in range(1, options.rounds + 1):
            if round_no % 2:  # alternate who goes first: the page cache and other load favour neither
                floors.append(floor(url, sha512, download_dir, pool_dir))
                ours.append(staged(args))
            else:
                ours.append(staged(args))
                floors.append(floor(url, sha512, download_dir, pool_dir))
            print("round %d: floor %.2f s, vo_image %.2f s" % (round_no, floors[-1], ours[-1]))
        floor_s, ours_s = statistics.median(floors), statistics.median(ours)
        ratio = ours_s / floor_s
        verdict = "PASS" if ratio <= TARGET else "FAIL"
        size_gib = os.path.getsize(image) / float(1 << 30)
        print()
        print("image: %.2f GiB %s, served from 127.0.0.1; median of %d rounds" % (size_gib, options.format, options.rounds))
        print("floor (curl + sha512sum + cp):  %6.2f s  (%.0f MiB/s)" % (floor_s, size_gib * 1024 / floor_s))
        print("skygrid.fabric.vo_image:        %6.2f s  (%.0f MiB/s)" % (ours_s, size_gib * 1024 / ours_s))
        print("ratio %.2fx (target <= %.1fx): %s" % (ratio, TARGET, verdict))
        if options.json:
            with open(options.json, "w") as handle:
                json.dump({"size_bytes": os.path.getsize(image), "format": options.format, "floor_s": floors,
                           "vo_image_s": ours, "ratio": ratio, "target": TARGET, "verdict": verdict}, handle, indent=2)
        return 0 if verdict == "PASS" else 1
    finally:
        server.close()
        remove_pool(conn)
        conn.close()
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
