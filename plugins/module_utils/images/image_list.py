# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""HEPiX image lists: fetch, verify the S/MIME signature, check the endorser and the expiry, parse.

A VO publishes its endorsed images as a JSON document under ``hv:imagelist``, signed as S/MIME
(a detached PKCS#7 signature, ``multipart/signed``, as ``openssl smime -sign`` writes it). The
signature is checked with the ``openssl`` command line tool, which every hypervisor has, in two
steps so each failure gets its own error: the signature against the content (``-noverify``), then
the signer's chain against the site's CA directory only (``-CApath``, never the system store).
Only the content openssl verified is parsed. Plain Python apart from that: no Ansible import
except ``open_url``, unit-tested on its own.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse

from ansible.module_utils.urls import open_url

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

DEFAULT_CA_PATH = "/etc/grid-security/certificates"
LIST_MAX_BYTES = 16 * 1024 * 1024
SCHEMES = ("https", "http", "file")
# How an endorser entry pins its CA: the certificate's SHA-256 fingerprint (found in ca_path) or its file.
PIN_KEYS = ("ca_sha256", "ca_cert")
SHA512_RE = re.compile(r"^[0-9a-f]{128}\Z")
# Lists are issued now and then; a creation time this far in the future means a wrong clock somewhere.
CLOCK_SKEW = datetime.timedelta(minutes=5)
_TIME_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?\s*(Z|[+-]\d{2}:?\d{2})?$")
# Attribute spellings of the e-mail RDN seen in grid DNs, all meaning the same attribute.
_DN_ALIASES = {"email": "emailAddress", "e": "emailAddress", "emailaddress": "emailAddress"}

LIST_FIELDS = (  # (JSON key, our key, required)
    ("dc:identifier", "identifier", True),
    ("dc:title", "title", False),
    ("dc:description", "description", False),
    ("dc:date:created", "created", True),
    ("dc:date:expires", "expires", True),
    ("dc:source", "source", False),
    ("hv:uri", "uri", False),
    ("hv:version", "version", False),
)
IMAGE_FIELDS = (
    ("dc:identifier", "identifier", True),
    ("dc:title", "title", False),
    ("dc:description", "description", False),
    ("hv:uri", "uri", True),
    ("hv:size", "size", True),
    ("hv:version", "version", False),
    ("hv:format", "format", False),
    ("hv:hypervisor", "hypervisor", False),
    ("sl:arch", "arch", False),
    ("sl:os", "os", False),
    ("sl:osversion", "osversion", False),
    ("sl:checksum:sha512", "sha512", True),
    ("hv:ram_minimum", "ram_minimum", False),
    ("hv:core_minimum", "core_minimum", False),
    ("ad:vo", "vo", False),
)


# ---------------------------------------------------------------- time

def utcnow():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def parse_time(value, what):
    """An ISO 8601 time as the lists write it (``2011-03-10T17:09:12Z``); no zone means UTC."""
    match = _TIME_RE.match(str(value).strip()) if value is not None else None
    if not match:
        raise ValueError("%s is %r, not a time like 2026-01-31T12:00:00Z" % (what, value))
    year, month, day, hour, minute, second, zone = match.groups()
    offset = datetime.timedelta(0)
    if zone and zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        offset = sign * datetime.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    try:
        naive = datetime.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0))
    except ValueError as exc:
        raise ValueError("%s is %r: %s" % (what, value, exc))
    return (naive - offset).replace(tzinfo=datetime.timezone.utc)


def format_time(when):
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- distinguished names

def normalise_dn(dn):
    """A DN in OpenSSL slash form with the e-mail attribute spelt one way and no stray blanks,
    so ``/C=NL/O=Org/CN=Name/Email=a@b`` and ``/C=NL/O=Org/CN=Name/emailAddress=a@b`` compare equal."""
    if dn is None:
        return None
    text = str(dn).strip()
    if not text.startswith("/"):
        return text
    parts = []
    for rdn in re.split(r"/(?=[A-Za-z][A-Za-z0-9.]*\s*=)", text[1:]):
        key, sep, value = rdn.partition("=")
        key = key.strip()
        parts.append("%s%s%s" % (_DN_ALIASES.get(key.lower(), key), sep, value.strip()))
    return "/" + "/".join(parts)


# ---------------------------------------------------------------- parsing

def _text(data, key, path, required):
    value = data.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ValueError("%s.%s is missing" % (path, key))
        return None
    if isinstance(value, (dict, list)):
        raise ValueError("%s.%s must be a string, not %s" % (path, key, type(value).__name__))
    return str(value).strip()


def _image(entry, path):
    if not isinstance(entry, dict) or not isinstance(entry.get("hv:image"), dict):
        raise ValueError("%s must be an object {\"hv:image\": {...}}" % path)
    data = entry["hv:image"]
    path += ".hv:image"
    image = {}
    for key, ours, required in IMAGE_FIELDS:
        image[ours] = _text(data, key, path, required)
    try:
        image["size"] = int(image["size"])
    except ValueError:
        raise ValueError("%s.hv:size must be a whole number of bytes, got %r" % (path, image["size"]))
    if image["size"] <= 0:
        raise ValueError("%s.hv:size must be positive, got %d" % (path, image["size"]))
    image["sha512"] = image["sha512"].lower()
    if not SHA512_RE.match(image["sha512"]):
        raise ValueError("%s.sl:checksum:sha512 must be 128 hexadecimal digits" % path)
    if image["format"]:
        image["format"] = image["format"].lower()
    return image


def parse(content):
    """Parse and validate a (verified) image list; returns it in our own flat keys.

    Raises ValueError naming the JSON path at fault (the caller adds where the list came from).
    """
    if isinstance(content, bytes):
        content = content.decode("utf-8")
    try:
        document = json.loads(content)
    except ValueError as exc:
        raise ValueError("it is not valid JSON (%s)" % exc)
    if not isinstance(document, dict) or not isinstance(document.get("hv:imagelist"), dict):
        raise ValueError("the top level must be an object {\"hv:imagelist\": {...}}")
    data = document["hv:imagelist"]
    path = "hv:imagelist"
    result = {}
    for key, ours, required in LIST_FIELDS:
        result[ours] = _text(data, key, path, required)
    result["created"] = format_time(parse_time(result["created"], path + ".dc:date:created"))
    result["expires"] = format_time(parse_time(result["expires"], path + ".dc:date:expires"))
    endorser = data.get("hv:endorser")
    x509 = endorser.get("hv:x509") if isinstance(endorser, dict) else None
    if not isinstance(x509, dict):
        raise ValueError("%s.hv:endorser.hv:x509 is missing: a list must name its endorser" % path)
    epath = path + ".hv:endorser.hv:x509"
    result["endorser"] = {
        "dn": normalise_dn(_text(x509, "hv:dn", epath, True)),
        "ca": normalise_dn(_text(x509, "hv:ca", epath, True)),
        "creator": _text(x509, "dc:creator", epath, False),
        "email": _text(x509, "hv:email", epath, False),
    }
    entries = data.get("hv:images")
    if not isinstance(entries, list):
        raise ValueError("%s.hv:images must be a list" % path)
    result["images"] = [_image(entry, "%s.hv:images[%d]" % (path, index)) for index, entry in enumerate(entries)]
    seen = set()
    for index, image in enumerate(result["images"]):
        key = (image["identifier"], image["version"])
        if key in seen:
            raise ValueError("%s.hv:images[%d]: identifier %s version %s appears twice"
                             % (path, index, image["identifier"], image["version"]))
        seen.add(key)
    return result


def check_times(parsed, url, field, now=None):
    """Refuse an expired list, and one issued in the future (a wrong clock or a forged date)."""
    now = now or utcnow()
    expires = parse_time(parsed["expires"], "dc:date:expires")
    created = parse_time(parsed["created"], "dc:date:created")
    if expires <= now:
        raise FabricError("the image list at %s expired at %s (dc:date:expires; now %s). Its endorser must "
                          "sign a new one; until then nothing is staged from it"
                          % (url, parsed["expires"], format_time(now)), field=field)
    if created > now + CLOCK_SKEW:
        raise FabricError("the image list at %s was created at %s, in the future (now %s); check this host's "
                          "clock (NTP)" % (url, parsed["created"], format_time(now)), field=field)


def accepted_entry(parsed):
    """What is remembered of a list accepted for staging, to refuse an older one later."""
    return {"version": parsed["version"], "created": parsed["created"], "url": parsed["url"]}


def check_not_replayed(parsed, seen, where, field):
    """Refuse a list older than ``seen``, the newest list with its identifier accepted before: by creation
    time, or by ``hv:version`` when both give one. An old list stays validly signed until it expires, so
    serving it again (a replay) would bring back images the VO has withdrawn."""
    if not seen:
        return
    older = parse_time(parsed["created"], "dc:date:created") < parse_time(seen["created"], "dc:date:created")
    if parsed["version"] and seen.get("version"):
        older = older or version_key(parsed["version"]) < version_key(seen["version"])
    if older:
        raise FabricError("the image list at %s (dc:identifier %s, hv:version %s, created %s) is older than the one "
                          "accepted before (hv:version %s, created %s, from %s): an old list served again (a replay) "
                          "is refused; nothing was staged or pruned. Check the list URL (a stale mirror?); if the VO "
                          "really went back to an older list, remove its entry from %s"
                          % (parsed["url"], parsed["identifier"], parsed["version"], parsed["created"],
                             seen.get("version"), seen["created"], seen.get("url"), where), field=field)


# ---------------------------------------------------------------- fetching

def check_url(url, field):
    scheme = urllib.parse.urlparse(url or "").scheme.lower()
    if scheme not in SCHEMES:
        raise FabricError("%r is not an https, http or file URL" % (url,), field=field)
    return scheme


def open_source(url, field, offset=0, timeout=30, validate_certs=True):
    """Open ``url`` for reading from byte ``offset`` (an HTTP Range request, or a seek for file://).

    Returns ``(stream, start, total)``: ``start`` is where the stream begins (0 when a server
    ignored the range), ``total`` the whole size when known, else None. HTTP errors raise FabricError.
    """
    scheme = check_url(url, field)
    if scheme == "file":
        path = urllib.parse.unquote(urllib.parse.urlparse(url).path)
        try:
            handle = open(path, "rb")
        except OSError as exc:
            raise FabricError("cannot read %s: %s" % (url, exc.strerror), field=field)
        total = os.fstat(handle.fileno()).st_size
        if offset:
            handle.seek(min(offset, total))
        return handle, min(offset, total), total
    headers = {"Range": "bytes=%d-" % offset} if offset else {}
    try:
        response = open_url(url, headers=headers, timeout=timeout, validate_certs=validate_certs,
                            http_agent="skygrid.fabric", follow_redirects="safe")
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # our partial file is as long as (or longer than) the source
            return open_source(url, field, 0, timeout, validate_certs)
        raise FabricError("fetching %s failed: HTTP %d %s" % (url, exc.code, exc.reason), field=field)
    except urllib.error.URLError as exc:
        raise FabricError("fetching %s failed: %s" % (url, exc.reason), field=field)
    except (OSError, ValueError) as exc:
        raise FabricError("fetching %s failed: %s" % (url, exc), field=field)
    status = getattr(response, "status", None) or response.getcode()
    length = response.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if status == 206:
        match = re.match(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != offset:
            response.close()
            raise FabricError("%s answered a range request for bytes %d- with Content-Range %r; cannot resume"
                              % (url, offset, response.headers.get("Content-Range")), field=field)
        total = int(match.group(3)) if match.group(3) != "*" else None
        return response, offset, total
    return response, 0, length


def fetch(url, field, timeout=30, validate_certs=True, max_bytes=LIST_MAX_BYTES):
    """The whole (small) document at ``url``."""
    stream, _start, total = open_source(url, field, 0, timeout, validate_certs)
    try:
        if total is not None and total > max_bytes:
            raise FabricError("%s is %d bytes; an image list is at most %d" % (url, total, max_bytes), field=field)
        data = stream.read(max_bytes + 1)
    except OSError as exc:
        raise FabricError("fetching %s failed: %s" % (url, exc), field=field)
    finally:
        stream.close()
    if len(data) > max_bytes:
        raise FabricError("%s is larger than %d bytes; an image list is not" % (url, max_bytes), field=field)
    return data


# ---------------------------------------------------------------- S/MIME

def signature_kind(data):
    """'detached' (multipart/signed), 'opaque' (pkcs7-mime signed-data) or None (not S/MIME)."""
    start = data[:65536]
    ends = [end for end in (start.find(b"\n\n"), start.find(b"\r\n\r\n")) if end >= 0]
    head = start[:min(ends)].lower() if ends else b""
    if b"content-type:" not in head:
        return None
    if b"multipart/signed" in head and b"pkcs7-signature" in head:
        return "detached"
    if b"pkcs7-mime" in head:
        return "opaque"
    return None


def openssl_binary():
    path = shutil.which("openssl") or shutil.which("openssl", path="/usr/bin:/bin:/usr/local/bin")
    if not path:
        raise FabricError("the openssl command is not installed on this host; it verifies the image list "
                          "signatures: install openssl (Debian/Ubuntu and EL: package openssl)", field="ca_path")
    return path


def _openssl(args):
    proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


def _openssl_reason(stderr):
    """The part of openssl's error output worth showing: 'digest failure', 'unable to get local issuer certificate'."""
    reasons = []
    for line in stderr.splitlines():
        line = line.strip()
        if not line or line == "Verification failure":
            continue
        match = re.search(r"Verify error:\s*(.+)$", line) or re.search(r":error:[0-9A-F]+:[^:]*:[^:]*:([^:]+)", line)
        reason = match.group(1).strip() if match else line
        if reason not in reasons:
            reasons.append(reason)
    return "; ".join(reasons) or "no reason given"


def _no_default_store_args(openssl):
    """Keep openssl from also trusting the system CA bundle: only the site's CA directory counts."""
    _rc, out, _err = _openssl([openssl, "version"])
    args = ["-no-CAfile"]
    if re.match(r"OpenSSL\s+[3-9]", out):
        args.append("-no-CAstore")
    return args


def _certificates(pem_text):
    return re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem_text, re.S)


def _subject_issuer(openssl, pem, workdir, field="ca_path"):
    path = os.path.join(workdir, "cert.pem")
    with open(path, "w") as handle:
        handle.write(pem + "\n")
    rc, out, err = _openssl([openssl, "x509", "-in", path, "-noout", "-subject", "-issuer", "-nameopt", "compat"])
    if rc != 0:
        raise FabricError("openssl cannot read the certificate: %s" % _openssl_reason(err), field=field)
    values = {}
    for line in out.splitlines():
        key, _sep, value = line.partition("=")
        values[key.strip()] = value.strip()
    return {"dn": normalise_dn(values.get("subject")), "ca": normalise_dn(values.get("issuer"))}


def check_ca_path(ca_path):
    if not ca_path or not os.path.isdir(ca_path):
        raise FabricError("%r is not a directory; give the site's CA directory (hashed CA certificates, as "
                          "%s holds them)" % (ca_path, DEFAULT_CA_PATH), field="ca_path")
    if not any(re.match(r"^[0-9a-f]{8}\.\d+$", name) for name in os.listdir(ca_path)):
        raise FabricError("%s holds no hashed CA certificates (files named like 1a2b3c4d.0); run "
                          "'openssl rehash %s' or install the CA bundle (IGTF: ca-policy-egi-core)"
                          % (ca_path, ca_path), field="ca_path")


def verify_signature(data, endorsers, ca_path, url, field, crl_check=True):
    """Verify an S/MIME signed document signed by one of ``endorsers``; return ``(content, signer)``.

    ``content`` is what the signature covers (and so the only thing to parse), ``signer`` the signer
    certificate's subject and issuer DN (``{"dn": ..., "ca": ...}``). In order: the signature covers the
    content; the signer's DNs are an endorser's; its chain ends at the CA certificate pinned for that
    endorser; and it verifies against ``ca_path`` (time, purpose and, with ``crl_check``, revocation).
    """
    if signature_kind(data) is None:
        raise FabricError("the image list at %s is not signed (no S/MIME multipart/signed envelope); a VO "
                          "image (trust class 2) needs a list signed by the VO's endorser: use the URL of the "
                          "signed list, or pin a site image with trust_class 1 and its sha512" % url, field=field)
    openssl = openssl_binary()
    with tempfile.TemporaryDirectory(prefix="skygrid-imagelist-") as workdir:
        message = os.path.join(workdir, "list.smime")
        content_path = os.path.join(workdir, "content")
        signer_path = os.path.join(workdir, "signer.pem")
        with open(message, "wb") as handle:
            handle.write(data)
        # 1. Does the signature cover this content? (the signer's chain is not looked at yet)
        rc, _out, err = _openssl([openssl, "smime", "-verify", "-noverify", "-in", message,
                                  "-out", content_path, "-signer", signer_path])
        if rc != 0 or "Verification successful" not in err:
            raise FabricError("the signature of the image list at %s does not verify against its content "
                              "(openssl: %s): the list was altered after signing, or damaged. Nothing is "
                              "staged from it; tell the VO if it persists" % (url, _openssl_reason(err)), field=field)
        with open(signer_path) as handle:
            pems = _certificates(handle.read())
        if not pems:
            raise FabricError("the image list at %s carries no signer certificate" % url, field=field)
        signers = [_subject_issuer(openssl, pem, workdir) for pem in pems]
        # 2. Is the signer, by name, an endorser of this VO?
        endorser = match_endorser(signers, endorsers, url)
        signer = {"dn": endorser["dn"], "ca": endorser["ca"]}
        # 3. Does its chain end at the CA certificate the site pinned (not merely one with that CA's name)?
        _check_pin(openssl, message, endorser, workdir, url)
        # 4. Does it verify against the site's CA directory, and only it, with revocation checked?
        crl_args = ["-crl_check_all"] if crl_check else []
        rc, _out, err = _openssl([openssl, "smime", "-verify", "-in", message, "-out", os.devnull,
                                  "-CApath", ca_path] + crl_args + _no_default_store_args(openssl))
        if rc != 0 or "Verification successful" not in err:
            raise _chain_error(signer, ca_path, url, _openssl_reason(err))
        with open(content_path, "rb") as handle:
            content = handle.read()
    return strip_mime_headers(content), signer


def _check_pin(openssl, message, endorser, workdir, url):
    pin_path = os.path.join(workdir, "pinned-ca.pem")
    with open(pin_path, "w") as handle:
        handle.write(endorser["pin"] + "\n")
    # Only the pinned certificate is a trust anchor (-partial_chain: it may be an intermediate); times
    # are checked in step 4, so a failure here means one thing: another CA made this chain.
    rc, _out, err = _openssl([openssl, "smime", "-verify", "-in", message, "-out", os.devnull, "-CAfile", pin_path,
                              "-partial_chain", "-no_check_time", "-no-CApath", "-no-CAstore"])
    if rc != 0 or "Verification successful" not in err:
        raise FabricError("the image list at %s is signed by %s, whose certificate names %s as its CA but was not "
                          "issued by the CA pinned for that endorser (%s %s; openssl: %s): another CA issued a "
                          "certificate carrying that CA's name. Refused; nothing is staged from it. If the VO's CA "
                          "really has a new certificate, pin that one"
                          % (url, endorser["dn"], endorser["ca"], endorser["pin_kind"], endorser["pin_text"],
                             _openssl_reason(err)), field=endorser["pin_field"])


def _chain_error(signer, ca_path, url, reason):
    what = "the signer of the image list at %s (%s, issued by %s)" % (url, signer["dn"], signer["ca"])
    if "revoked" in reason:
        return FabricError("%s has a revoked certificate: its CA's CRL in %s lists it (openssl: %s). The list "
                           "cannot be trusted; the VO must sign it again with a valid certificate. Nothing is "
                           "staged from it" % (what, ca_path, reason), field="endorsers")
    if "CRL" in reason:
        return FabricError("%s cannot be checked for revocation: %s in %s (openssl: %s). CRLs are read from "
                           "<hash>.r0 files there, as fetch-crl installs them: run fetch-crl (package fetch-crl, "
                           "from cron), or set crl_check: false to accept lists without revocation checks - then a "
                           "revoked endorser is accepted too"
                           % (what, "a CRL of its CA is missing" if "unable to get" in reason
                              else "the CRL of its CA is out of date", ca_path, reason), field="ca_path")
    return FabricError("%s is not trusted: its certificate does not verify against the CAs in %s (openssl: %s). "
                       "Install the endorser's CA there if the site trusts it, or correct ca_path"
                       % (what, ca_path, reason), field="ca_path")


def strip_mime_headers(content):
    """A list signed with ``openssl smime -sign -text`` carries a MIME header block before the JSON."""
    if content.lstrip()[:1] in (b"{", b"["):
        return content
    for separator in (b"\r\n\r\n", b"\n\n"):
        head, sep, body = content.partition(separator)
        if sep and head.lower().startswith(b"content-type:"):
            return body
    return content


# ---------------------------------------------------------------- endorsers

def normalise_endorsers(endorsers, ca_path, field="endorsers"):
    """The endorsers as ``{"dn", "ca", "pin", ...}``: ``pin`` the PEM certificate of the endorser's CA, found by
    its SHA-256 fingerprint in ``ca_path`` (``ca_sha256``) or read from a file (``ca_cert``)."""
    result = []
    for index, endorser in enumerate(endorsers or []):
        path = "%s[%d]" % (field, index)
        if not isinstance(endorser, dict) or not endorser.get("dn") or not endorser.get("ca"):
            raise FabricError("must give 'dn' and 'ca', the endorser's certificate subject and issuer in OpenSSL "
                              "slash form (/C=../O=../CN=..)", field=path)
        dn, ca = normalise_dn(endorser["dn"]), normalise_dn(endorser["ca"])
        if not dn.startswith("/") or not ca.startswith("/"):
            raise FabricError("write DNs in OpenSSL slash form, like /C=NL/O=Example/CN=Name (got %r, %r)"
                              % (endorser["dn"], endorser["ca"]), field=path)
        pins = [key for key in PIN_KEYS if endorser.get(key)]
        if len(pins) != 1:
            raise FabricError("pin the endorser's CA itself, not only its name: give exactly one of ca_sha256 (the "
                              "SHA-256 fingerprint of the CA's certificate in ca_path: openssl x509 -in <CA>.pem "
                              "-noout -fingerprint -sha256) or ca_cert (the CA certificate's file on the host)",
                              field=path)
        kind = pins[0]
        pem, text = _pinned_certificate(kind, endorser[kind], ca_path, "%s.%s" % (path, kind))
        entry = {"dn": dn, "ca": ca, "pin": pem, "pin_kind": kind, "pin_text": text, "pin_field": "%s.%s" % (path, kind)}
        subject = _pem_subject(pem, entry["pin_field"])
        if subject != ca:
            raise FabricError("is the certificate of %s, not of %s (the endorser's ca): pin the certificate of the CA "
                              "that issued the endorser" % (subject, ca), field=entry["pin_field"])
        result.append(entry)
    if not result:
        raise FabricError("is empty: name at least one endorser (dn, ca and the CA's ca_sha256 or ca_cert) the VO "
                          "has appointed", field=field)
    return result


def _fingerprint(pem):
    body = re.sub(r"-----[A-Z ]+-----|\s", "", pem)
    return hashlib.sha256(base64.b64decode(body)).hexdigest()


def _pinned_certificate(kind, value, ca_path, field):
    """``(PEM, how it is shown in messages)`` of the pinned CA certificate."""
    if kind == "ca_cert":
        try:
            with open(value) as handle:
                pems = _certificates(handle.read())
        except (OSError, UnicodeDecodeError) as exc:
            raise FabricError("cannot read the CA certificate %s: %s" % (value, getattr(exc, "strerror", exc)),
                              field=field)
        if len(pems) != 1:
            raise FabricError("%s must hold exactly one PEM certificate (the endorser's CA), it holds %d"
                              % (value, len(pems)), field=field)
        return pems[0], value
    wanted = re.sub(r"[:\s]", "", str(value)).lower()
    if not re.match(r"^[0-9a-f]{64}\Z", wanted):
        raise FabricError("must be a SHA-256 fingerprint: 64 hexadecimal digits, colons allowed (openssl x509 -in "
                          "<CA>.pem -noout -fingerprint -sha256 prints it), got %r" % (value,), field=field)
    shown = ":".join(wanted[i:i + 2] for i in range(0, 64, 2)).upper()
    for name in sorted(os.listdir(ca_path)):
        if not re.match(r"^[0-9a-f]{8}\.\d+\Z", name):
            continue
        try:
            with open(os.path.join(ca_path, name)) as handle:
                pems = _certificates(handle.read())
        except (OSError, UnicodeDecodeError):
            continue
        for pem in pems:
            if _fingerprint(pem) == wanted:
                return pem, shown
    raise FabricError("no CA certificate in %s has the SHA-256 fingerprint %s: install the endorser's CA there "
                      "(the IGTF bundle, or its .pem and 'openssl rehash'), or correct the fingerprint"
                      % (ca_path, shown), field=field)


def _pem_subject(pem, field):
    with tempfile.TemporaryDirectory(prefix="skygrid-pin-") as workdir:
        return _subject_issuer(openssl_binary(), pem, workdir, field)["dn"]


def match_endorser(signers, endorsers, url):
    """The endorser entry (with its pin) whose DN and CA DN are the signer's."""
    for signer in signers:
        for endorser in endorsers:
            if (signer["dn"], signer["ca"]) == (endorser["dn"], endorser["ca"]):
                return endorser
    raise FabricError("the image list at %s is signed by %s (issued by %s), who is not an endorser of this VO "
                      "(allowed: %s). Add that DN and CA to the VO's endorsers if the VO has appointed them"
                      % (url, signers[0]["dn"], signers[0]["ca"],
                         ", ".join("%s (CA %s)" % (item["dn"], item["ca"]) for item in endorsers)), field="endorsers")


def check_endorser(parsed, signer, url, field):
    """The signer must be the endorser the list itself names."""
    named = parsed["endorser"]
    if (signer["dn"], signer["ca"]) != (named["dn"], named["ca"]):
        raise FabricError("the image list at %s names its endorser as %s (CA %s) in hv:endorser but is signed by "
                          "%s (CA %s); the list is not what its endorser published"
                          % (url, named["dn"], named["ca"], signer["dn"], signer["ca"]), field=field)
    return signer


def load(url, endorsers, ca_path, field="url", timeout=30, validate_certs=True, now=None, crl_check=True,
         allow_http=False):
    """Fetch, verify and parse a VO's signed image list. Everything that could be wrong with it
    raises FabricError; the result is safe to stage from."""
    if check_url(url, field) == "http" and not allow_http:
        raise FabricError("%s is a plain http URL: anyone on the path can withhold a new list or replay an old one "
                          "until it expires. Use the list's https URL, or set allow_http: true if the site accepts "
                          "that (a file:// mirror kept by fetch tools needs no consent)" % url, field=field)
    check_ca_path(ca_path)
    allowed = normalise_endorsers(endorsers, ca_path)
    data = fetch(url, field, timeout=timeout, validate_certs=validate_certs)
    content, signer = verify_signature(data, allowed, ca_path, url, field, crl_check)
    try:
        parsed = parse(content)
    except ValueError as exc:
        raise FabricError("the image list at %s is malformed: %s. Its endorser must fix it" % (url, exc), field=field)
    check_endorser(parsed, signer, url, field)
    check_times(parsed, url, field, now=now)
    parsed["url"] = url
    parsed["signer"] = signer
    return parsed


# ---------------------------------------------------------------- choosing images

def version_key(version):
    """Order versions like people do: 4.10 after 4.9, numbers before words at the same place."""
    parts = re.findall(r"\d+|[A-Za-z]+", str(version or ""))
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in parts]


def select(images, wanted, version=None, field="image"):
    """The image a selector means: ``wanted`` is an identifier or a title; the newest version
    unless ``version`` pins one."""
    matches = [image for image in images if wanted in (image["identifier"], image["title"])]
    if version is not None:
        matches = [image for image in matches if image["version"] == str(version)]
    if not matches:
        known = sorted("%s (%s, version %s)" % (image["identifier"], image["title"], image["version"])
                       for image in images)
        raise FabricError("no image with identifier or title %r%s in the list (it has: %s); correct the name "
                          "or ask the VO whether it withdrew the image"
                          % (wanted, " and version %s" % version if version is not None else "",
                             "; ".join(known) or "no images"), field=field)
    matches.sort(key=lambda image: version_key(image["version"]), reverse=True)
    if len(matches) > 1 and version_key(matches[0]["version"]) == version_key(matches[1]["version"]):
        raise FabricError("%r matches several images of the same version (%s); select one by its identifier"
                          % (wanted, ", ".join(image["identifier"] for image in matches)), field=field)
    return matches[0]
