"""Prepare this machine as the VO side of the site in a box: a demo grid CA and one image endorser
per VO, the VO worker image (tests/vo-image), an HEPiX image list per VO signed as S/MIME by its
endorser, and a web server on 127.0.0.1 (or --address) publishing them. Idempotent: what exists and is still valid
is kept, so a second run changes nothing the site would see.

Usage: python scripts/site_in_a_box/prepare.py [--dir /var/lib/skygrid-demo] [--address 127.0.0.1] [--port 8642] [--stop]
(the multi-host test bed serves its lists from its bridge address, where its hosts reach them)
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
CA_FILE = "skygrid-demo-ca.pem"


def endorser_dn(vo):
    return "/C=NL/O=Skygrid Demo Grid/OU=%s/CN=%s Image Endorser" % (vo, vo.upper())


def ensure_pki(directory):
    """The demo CA (trusted in certificates/, with a current CRL there as fetch-crl keeps it) and one
    endorser certificate per VO, made once; the CRL is renewed when it is due within a day."""
    pki_dir = os.path.join(directory, "pki")
    marker = os.path.join(pki_dir, "done")
    ca_path = os.path.join(directory, "certificates")
    certificates = fixtures.Certificates(pki_dir)
    ca = certificates.ca("ca", CA_DN)  # an earlier run's CA is kept
    if not os.path.exists(marker):
        for vo in VOS:
            certificates.signer("endorser-" + vo, endorser_dn(vo), ca)
        certificates.trust(ca_path, ca, CA_FILE)
        open(marker, "w").close()
    certificates.ensure_crl(ca_path, ca)
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


def ensure_lists(directory, base_url, signers, image):
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
        fresh = state.get("sha512") == sha512 and state.get("base_url") == base_url and \
            state.get("expires", 0) > time.time() + 86400
        if os.path.exists(path) and fresh:
            continue
        entry = fixtures.image_entry(image_id(vo), base_url + "/vo-worker.qcow2", path=image,
                                     version="1", title="%s worker (skygrid demo)" % vo.upper())
        text = fixtures.image_list([entry], expires_in=datetime.timedelta(days=7), endorser_dn=endorser_dn(vo),
                                   ca_dn=CA_DN, identifier="skygrid-demo-%s-list" % vo)
        signed = fixtures.sign(text, signers[vo])
        with open(path + ".tmp", "wb") as handle:
            handle.write(signed)
        os.replace(path + ".tmp", path)
        with open(state_path, "w") as handle:
            json.dump({"sha512": sha512, "base_url": base_url, "expires": time.time() + 7 * 86400}, handle)


def serving(base_url):
    try:
        with urllib.request.urlopen(base_url + "/atlas.image_list", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def ensure_server(directory, address, port):
    pidfile = os.path.join(directory, "http.pid")
    base_url = "http://%s:%d" % (address, port)
    if serving(base_url):
        return
    log = open(os.path.join(directory, "http.log"), "ab")
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", address,
                             "--directory", os.path.join(directory, "www")],
                            stdout=log, stderr=log, start_new_session=True)
    with open(pidfile, "w") as handle:
        handle.write(str(proc.pid))
    for _attempt in range(50):
        if serving(base_url):
            return
        time.sleep(0.1)
    sys.exit("the image list server on %s did not start; see %s/http.log" % (base_url, directory))


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
    parser.add_argument("--address", default="127.0.0.1", help="address the web server binds and the lists name")
    parser.add_argument("--port", type=int, default=8642)
    parser.add_argument("--stop", action="store_true", help="stop the web server and exit")
    args = parser.parse_args()
    if args.stop:
        stop_server(args.dir)
        return
    os.makedirs(args.dir, exist_ok=True)
    signers = ensure_pki(args.dir)
    image = ensure_image(args.dir)
    base_url = "http://%s:%d" % (args.address, args.port)
    ensure_lists(args.dir, base_url, signers, image)
    ensure_server(args.dir, args.address, args.port)
    print(json.dumps({
        "ca_path": os.path.join(args.dir, "certificates"),
        "vos": {vo: {"image_list_url": "%s/%s.image_list" % (base_url, vo),
                     "endorser": {"dn": endorser_dn(vo), "ca": CA_DN,
                                  "ca_cert": os.path.join(args.dir, "certificates", CA_FILE)},
                     "image_id": image_id(vo)} for vo in VOS},
    }, indent=2))


if __name__ == "__main__":
    main()
