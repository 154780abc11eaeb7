"""Prepare this machine as the VO side of the site in a box: a demo grid CA and one image endorser
per VO, the VO worker image (tests/vo-image), an HEPiX image list per VO signed as S/MIME by its
endorser, and a web server on 127.0.0.1 publishing them. Idempotent: what exists and is still valid
is kept, so a second run changes nothing the site would see.

Usage: python scripts/site_in_a_box/prepare.py [--dir /var/lib/skygrid-demo] [--port 8642] [--stop]
Prints the facts the inventory needs as JSON (CA path, endorser DNs, list URLs, image ids).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import imagelist_fixtures as fixtures  # noqa: E402  (the tests' PKI and list builders, shared on purpose)

VOS = ("atlas", "lhcb")
IMAGE_CACHE = os.path.join(os.environ.get("SKYGRID_CACHE", "/var/cache/skygrid"), "vo-image")
CA_DN = "/C=NL/O=Skygrid Demo Grid/CN=Skygrid Demo CA"


def endorser_dn(vo):
    return "/C=NL/O=Skygrid Demo Grid/OU=%s/CN=%s Image Endorser" % (vo, vo.upper())


def ensure_pki(directory):
    """The demo CA (trusted in certificates/) and one endorser certificate per VO, made once."""
    pki_dir = os.path.join(directory, "pki")
    marker = os.path.join(pki_dir, "done")
    if not os.path.exists(marker):
        os.makedirs(pki_dir, exist_ok=True)
        certificates = fixtures.Certificates(pki_dir)
        ca = certificates.ca("ca", CA_DN)
        for vo in VOS:
            certificates.signer("endorser-" + vo, endorser_dn(vo), ca)
        certificates.trust(os.path.join(directory, "certificates"), ca, "skygrid-demo-ca.pem")
        open(marker, "w").close()
    return {vo: (os.path.join(pki_dir, "endorser-%s.pem" % vo), os.path.join(pki_dir, "endorser-%s.key" % vo))
            for vo in VOS}


def ensure_image(directory):
    subprocess.run(["bash", os.path.join(ROOT, "tests", "vo-image", "build.sh")], check=True)
    source = os.path.join(IMAGE_CACHE, "vo-worker.qcow2")
    published = os.path.join(directory, "www", "vo-worker.qcow2")
    os.makedirs(os.path.dirname(published), exist_ok=True)
    if not os.path.exists(published) or fixtures.sha512_of(published) != fixtures.sha512_of(source):
        tmp = published + ".tmp"
        subprocess.run(["cp", source, tmp], check=True)
        os.replace(tmp, published)
    return published


def image_id(vo):
    return "skygrid-demo-%s-worker" % vo


def ensure_lists(directory, port, signers, image):
    """A signed list per VO; rewritten only when missing, the image changed, or it expires within a day."""
    sha512 = fixtures.sha512_of(image)
    www = os.path.join(directory, "www")
    for vo in VOS:
        path = os.path.join(www, "%s.image_list" % vo)
        state_path = path + ".state"
        state = {}
        if os.path.exists(state_path):
            with open(state_path) as handle:
                state = json.load(handle)
        fresh = state.get("sha512") == sha512 and state.get("port") == port and \
            state.get("expires", 0) > time.time() + 86400
        if os.path.exists(path) and fresh:
            continue
        entry = fixtures.image_entry(image_id(vo), "http://127.0.0.1:%d/vo-worker.qcow2" % port, path=image,
                                     version="1", title="%s worker (skygrid demo)" % vo.upper())
        text = fixtures.image_list([entry], expires_in=datetime.timedelta(days=7), endorser_dn=endorser_dn(vo),
                                   ca_dn=CA_DN, identifier="skygrid-demo-%s-list" % vo)
        signed = fixtures.sign(text, signers[vo])
        with open(path + ".tmp", "wb") as handle:
            handle.write(signed)
        os.replace(path + ".tmp", path)
        with open(state_path, "w") as handle:
            json.dump({"sha512": sha512, "port": port, "expires": time.time() + 7 * 86400}, handle)


def serving(port):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/atlas.image_list" % port, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def ensure_server(directory, port):
    pidfile = os.path.join(directory, "http.pid")
    if serving(port):
        return
    log = open(os.path.join(directory, "http.log"), "ab")
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", os.path.join(directory, "www")],
                            stdout=log, stderr=log, start_new_session=True)
    with open(pidfile, "w") as handle:
        handle.write(str(proc.pid))
    for _attempt in range(50):
        if serving(port):
            return
        time.sleep(0.1)
    sys.exit("the image list server on 127.0.0.1:%d did not start; see %s/http.log" % (port, directory))


def stop_server(directory):
    pidfile = os.path.join(directory, "http.pid")
    if os.path.exists(pidfile):
        with open(pidfile) as handle:
            pid = int(handle.read().strip() or 0)
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
        os.unlink(pidfile)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/var/lib/skygrid-demo")
    parser.add_argument("--port", type=int, default=8642)
    parser.add_argument("--stop", action="store_true", help="stop the web server and exit")
    args = parser.parse_args()
    if args.stop:
        stop_server(args.dir)
        return
    os.makedirs(args.dir, exist_ok=True)
    signers = ensure_pki(args.dir)
    image = ensure_image(args.dir)
    ensure_lists(args.dir, args.port, signers, image)
    ensure_server(args.dir, args.port)
    print(json.dumps({
        "ca_path": os.path.join(args.dir, "certificates"),
        "vos": {vo: {"image_list_url": "http://127.0.0.1:%d/%s.image_list" % (args.port, vo),
                     "endorser": {"dn": endorser_dn(vo), "ca": CA_DN}, "image_id": image_id(vo)} for vo in VOS},
    }, indent=2))


if __name__ == "__main__":
    main()
