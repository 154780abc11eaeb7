"""Test material for image lists and image staging, made here with openssl and qemu-img:

* a PKI (class ``Pki``): the site's trusted CAs with CRLs (hashed into a CA directory), the VO's endorser,
  a rogue signer from the same CA, a revoked endorser certificate, and two impostors with the endorser's DN
  (right names, wrong chain): one from an untrusted CA with the real CA's name, one from an intermediate
  carrying the real CA's name issued by another *trusted* CA;
* HEPiX image lists, signed the way ``openssl smime -sign`` does (detached, multipart/signed);
* an HTTP server on 127.0.0.1 with Range support and per-path modes: ``cut`` (declares the full
  length, sends half, closes), ``norange`` (ignores Range), ``nolength`` (no Content-Length), ``pause``
  (sends half, then waits until the test sets ``resume``: a fault can be injected mid-download).
"""

from __future__ import annotations

import datetime
import hashlib
import http.server
import json
import os
import re
import subprocess
import threading
import uuid

CA_DN = "/C=NL/O=Skygrid Test Grid/CN=Skygrid Test CA"
OTHER_CA_DN = "/C=DE/O=Other Test Grid/CN=Other Test CA"
ENDORSER_DN = "/C=NL/O=Skygrid Test Grid/OU=atlas/CN=Atlas Image Endorser"
ROGUE_DN = "/C=NL/O=Skygrid Test Grid/OU=atlas/CN=Mallory Image Endorser"

_EXTENSIONS = """
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical,CA:true
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[v3_signer]
basicConstraints = critical,CA:false
keyUsage = critical,digitalSignature,nonRepudiation
extendedKeyUsage = emailProtection
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""

_CA_DATABASE = """
[ca]
default_ca = this_ca
[this_ca]
database = %(dir)s/index.txt
crlnumber = %(dir)s/crlnumber
default_md = sha256
default_crl_days = 30
"""


def _run(args, **kwargs):
    proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(args), proc.stderr.decode(errors="replace")))
    return proc.stdout


def sha512_of(path):
    digest = hashlib.sha512()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_fingerprint(cert_path):
    """The SHA-256 fingerprint of a certificate, as ``openssl x509 -fingerprint -sha256`` prints it."""
    out = _run(["openssl", "x509", "-in", cert_path, "-noout", "-fingerprint", "-sha256"]).decode()
    return out.strip().partition("=")[2]


class Certificates:
    """The openssl recipes of a test or demo PKI under ``workdir``: CAs (self-signed, or intermediates), the
    endorser (signer) certificates they issue, their revocations and CRLs, and a trusted-CA directory
    (``ca_path``) the way IGTF and fetch-crl install one. Certificates are ``(cert, key)`` pairs of paths."""

    def __init__(self, workdir):
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.config = os.path.join(workdir, "openssl.cnf")
        with open(self.config, "w") as handle:
            handle.write(_EXTENSIONS)

    def ca(self, name, dn, issuer=None):
        """A CA ``<name>.pem`` / ``<name>.key``, self-signed or issued by ``issuer`` (an intermediate); one an
        earlier run made under ``workdir`` is kept. Returns (cert, key)."""
        cert, key = os.path.join(self.dir, name + ".pem"), os.path.join(self.dir, name + ".key")
        if os.path.exists(cert) and os.path.exists(key):
            return cert, key
        return self._issue(name, dn, "v3_ca", issuer)

    def signer(self, name, dn, issuer):
        """A signing (endorser) certificate issued by ``issuer``; returns (cert, key)."""
        return self._issue(name, dn, "v3_signer", issuer)

    def _issue(self, name, dn, extensions, issuer):
        cert, key, csr = (os.path.join(self.dir, name + ext) for ext in (".pem", ".key", ".csr"))
        _run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
              key, "-out", csr, "-subj", dn, "-config", self.config])
        signing = ["-signkey", key] if issuer is None else ["-CA", issuer[0], "-CAkey", issuer[1]]
        _run(["openssl", "x509", "-req", "-in", csr] + signing + ["-set_serial", str(int(uuid.uuid4().int % 2 ** 62)),
             "-out", cert, "-days", "30", "-extfile", self.config, "-extensions", extensions])
        return cert, key

    def _database(self, ca):
        """The ``openssl ca`` configuration of CA ``ca`` (its index of revoked certificates)."""
        directory = ca[0] + ".db"
        os.makedirs(directory, exist_ok=True)
        for name, text in (("index.txt", ""), ("crlnumber", "01\n")):
            if not os.path.exists(os.path.join(directory, name)):
                with open(os.path.join(directory, name), "w") as handle:
                    handle.write(text)
        config = os.path.join(directory, "ca.cnf")
        with open(config, "w") as handle:
            handle.write(_CA_DATABASE % {"dir": directory})
        return config

    def revoke(self, ca, cert):
        _run(["openssl", "ca", "-config", self._database(ca), "-revoke", cert, "-keyfile", ca[1], "-cert", ca[0]])

    def crl(self, ca, path, last_update=None, next_update=None):
        """Write CA ``ca``'s CRL (PEM) to ``path``: valid 30 days, or between the given times (YYYYMMDDHHMMSSZ)."""
        args = ["openssl", "ca", "-config", self._database(ca), "-gencrl", "-keyfile", ca[1], "-cert", ca[0],
                "-out", path]
        if next_update:
            args += ["-crl_lastupdate", last_update, "-crl_nextupdate", next_update]
        _run(args)
        return path

    @staticmethod
    def crl_path(ca_path, ca):
        """Where fetch-crl puts CA ``ca``'s CRL: ``<subject hash>.r0`` in ``ca_path``."""
        digest = _run(["openssl", "x509", "-in", ca[0], "-noout", "-subject_hash"]).decode().strip()
        return os.path.join(ca_path, digest + ".r0")

    def ensure_crl(self, ca_path, ca, margin=datetime.timedelta(days=1)):
        """Keep CA ``ca``'s CRL in ``ca_path`` current, as fetch-crl would: written when missing or due within
        ``margin``. True when it was written."""
        path = self.crl_path(ca_path, ca)
        if os.path.exists(path):
            out = _run(["openssl", "crl", "-in", path, "-noout", "-nextupdate"]).decode().strip()
            due = datetime.datetime.strptime(out.partition("=")[2], "%b %d %H:%M:%S %Y %Z")
            if due.replace(tzinfo=datetime.timezone.utc) > datetime.datetime.now(datetime.timezone.utc) + margin:
                return False
        self.crl(ca, path)
        return True

    @staticmethod
    def trust(ca_path, ca, filename):
        """Put CA ``ca`` into the directory ``ca_path`` as ``filename`` and rehash it."""
        os.makedirs(ca_path, exist_ok=True)
        with open(os.path.join(ca_path, filename), "w") as out, open(ca[0]) as src:
            out.write(src.read())
        _run(["openssl", "rehash", ca_path])


class Pki:
    """The tests' PKI under ``workdir``. ``ca_path`` trusts the real CA and a second, unrelated CA (as an IGTF
    bundle holds many), each with its CRL; not the rogue CA that carries the real CA's name.

    * ``endorser``: the VO's endorser, issued by the real CA (pinned in ``endorsers()``);
    * ``rogue``: another DN from the real CA; ``revoked``: the endorser's DN from the real CA, revoked;
    * ``impostor``: the endorser's DN from the rogue CA (not trusted at all);
    * ``chained_impostor`` (sign with ``chain=[pki.impostor_ca[0]]``): the endorser's DN from an
      intermediate carrying the real CA's DN, issued by the *trusted* second CA.
    """

    def __init__(self, workdir):
        self.certificates = certificates = Certificates(workdir)
        self.dir = workdir
        self.ca = certificates.ca("ca", CA_DN)
        self.other_ca = certificates.ca("other-ca", OTHER_CA_DN)
        self.rogue_ca = certificates.ca("rogue-ca", CA_DN)  # same subject, different key: not in ca_path
        self.endorser = certificates.signer("endorser", ENDORSER_DN, self.ca)
        self.rogue = certificates.signer("rogue", ROGUE_DN, self.ca)
        self.revoked = certificates.signer("revoked", ENDORSER_DN, self.ca)
        certificates.revoke(self.ca, self.revoked[0])
        self.impostor = certificates.signer("impostor", ENDORSER_DN, self.rogue_ca)
        self.impostor_ca = certificates.ca("impostor-ca", CA_DN, issuer=self.other_ca)
        self.chained_impostor = certificates.signer("chained-impostor", ENDORSER_DN, self.impostor_ca)
        self.ca_path = os.path.join(workdir, "certificates")
        for ca, filename in ((self.ca, "skygrid-test-ca.pem"), (self.other_ca, "other-test-ca.pem")):
            certificates.trust(self.ca_path, ca, filename)
            certificates.ensure_crl(self.ca_path, ca)

    def crl_path(self, ca_path=None):
        """Where the real CA's CRL is in ``ca_path`` (default the tests' CA directory)."""
        return self.certificates.crl_path(ca_path or self.ca_path, self.ca)

    def endorsers(self, pin="ca_sha256"):
        """The VO's endorser as a site configures it, its CA pinned by fingerprint (or ``pin="ca_cert"``)."""
        endorser = {"dn": ENDORSER_DN, "ca": CA_DN}
        if pin == "ca_sha256":
            endorser["ca_sha256"] = sha256_fingerprint(self.ca[0])
        elif pin == "ca_cert":
            endorser["ca_cert"] = self.ca[0]
        return [endorser]


def _time(delta):
    when = datetime.datetime.now(datetime.timezone.utc) + delta
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def image_entry(identifier, uri, path=None, size=None, sha512=None, version="1", title=None, fmt="qcow2", **extra):
    """An ``hv:image`` entry; size and sha512 are taken from ``path`` unless given."""
    image = {
        "dc:identifier": identifier, "dc:title": title or "Test image %s" % identifier,
        "dc:description": "an image made by the skygrid.fabric tests", "hv:uri": uri,
        "hv:size": size if size is not None else os.path.getsize(path),
        "hv:version": version, "hv:format": fmt, "hv:hypervisor": "kvm", "sl:arch": "x86_64",
        "sl:os": "Linux", "sl:osversion": "test",
        "sl:checksum:sha512": sha512 if sha512 is not None else sha512_of(path),
    }
    image.update(extra)
    return {"hv:image": image}


def image_list(images, expires_in=datetime.timedelta(days=7), created_ago=datetime.timedelta(hours=1),
               endorser_dn=ENDORSER_DN, ca_dn=CA_DN, identifier=None, list_version="1"):
    document = {"hv:imagelist": {
        "dc:identifier": identifier or str(uuid.uuid4()), "dc:title": "Skygrid test VO images",
        "dc:description": "made by the tests", "dc:date:created": _time(-created_ago),
        "dc:date:expires": _time(expires_in), "dc:source": "skygrid.test", "hv:uri": "http://127.0.0.1/test.list",
        "hv:version": list_version,
        "hv:endorser": {"hv:x509": {"dc:creator": "Atlas Image Endorser", "hv:ca": ca_dn, "hv:dn": endorser_dn,
                                    "hv:email": "endorser@skygrid.test"}},
        "hv:images": images,
    }}
    return json.dumps(document, indent=2)


def sign(text, signer, chain=None):
    """S/MIME-sign ``text`` as ``openssl smime -sign`` does (detached, multipart/signed); ``chain``: more
    certificates to carry in the signature (intermediate CAs)."""
    extra = []
    if chain:
        bundle = signer[0] + ".chain"
        with open(bundle, "w") as out:
            for path in chain:
                with open(path) as src:
                    out.write(src.read())
        extra = ["-certfile", bundle]
    return _run(["openssl", "smime", "-sign", "-signer", signer[0], "-inkey", signer[1]] + extra,
                input=text.encode())


def tamper(signed, old, new):
    """Change the signed content after signing (same length or not: the digest no longer matches)."""
    assert old.encode() in signed
    return signed.replace(old.encode(), new.encode(), 1)


def random_file(path, size, chunk=1 << 20):
    """``size`` bytes of random data (incompressible, like a real image's content)."""
    with open(path, "wb") as handle:
        left = size
        while left > 0:
            handle.write(os.urandom(min(chunk, left)))
            left -= chunk
    return path


def qcow2_image(path, size):
    """A qcow2 holding ``size`` bytes of data (made from a raw file, like a real image)."""
    raw = path + ".src.raw"
    random_file(raw, size)
    _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, path])
    os.unlink(raw)
    return path


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "skygrid-test/1"

    def log_message(self, *args):  # keep pytest output clean; requests are recorded instead
        pass

    def do_GET(self):
        server = self.server
        entry = server.files.get(self.path.split("?", 1)[0])
        server.requests.append({"path": self.path, "range": self.headers.get("Range")})
        if entry is None:
            self.send_error(404)
            return
        path, mode = entry
        size = os.path.getsize(path)
        start = 0
        match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
        if match and mode != "norange":
            start = int(match.group(1))
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", "bytes */%d" % size)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, size - 1, size))
        else:
            self.send_response(200)
        if mode != "nolength":
            self.send_header("Content-Length", str(size - start))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        count = size - start
        if mode == "cut":
            count = max(0, size // 2 - start)
        with open(path, "rb") as handle:
            if mode == "pause":
                half = max(0, size // 2 - start)
                self._send(handle, start, half)
                server.paused.set()
                server.resume.wait(120)
                self._send(handle, start + half, count - half)
            else:
                self._send(handle, start, count)
        if mode == "cut":  # close without sending the rest: the client sees a short read
            self.close_connection = True

    def _send(self, handle, offset, count):
        sent = 0
        while sent < count:
            done = self.connection.sendfile(handle, offset + sent, count - sent)
            if not done:
                break
            sent += done


class FileServer:
    """Serves registered files from 127.0.0.1 (a thread of the test process)."""

    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.files = {}
        self.httpd.requests = []
        self.httpd.paused = threading.Event()  # mode pause: half of the file was sent
        self.httpd.resume = threading.Event()  # mode pause: send the rest
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests(self):
        return self.httpd.requests

    def url(self, name):
        return "http://127.0.0.1:%d/%s" % (self.httpd.server_address[1], name)

    def add(self, name, path, mode="normal"):
        """Serve file ``path`` at /``name``; ``mode`` normal, cut, norange, nolength or pause."""
        self.httpd.files["/" + name] = (path, mode)
        return self.url(name)

    def add_bytes(self, name, data, directory, mode="normal"):
        path = os.path.join(directory, name.replace("/", "_"))
        with open(path, "wb") as handle:
            handle.write(data)
        return self.add(name, path, mode)

    def set_mode(self, name, mode):
        path, _old = self.httpd.files["/" + name]
        self.httpd.files["/" + name] = (path, mode)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
