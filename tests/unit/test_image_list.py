"""HEPiX image lists: parsing, times, DNs, S/MIME verification with real openssl, endorser rules,
fetching and image selection."""

from __future__ import annotations

import copy
import datetime
import json
import os
import shutil
import subprocess

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils.images import image_list
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from integration import imagelist_fixtures as fx

SHA = "ab" * 64
NOW = datetime.datetime(2026, 1, 10, 12, 0, 0, tzinfo=datetime.timezone.utc)


def document(**over):
    images = over.pop("images", None)
    data = json.loads(fx.image_list(images if images is not None else [
        fx.image_entry("img-1", "https://vo.example/img-1.qcow2", size=1024, sha512=SHA.upper(), fmt="QCOW2")]))
    data["hv:imagelist"].update(over)
    return data


def parse(data):
    return image_list.parse(json.dumps(data))


# ---------------------------------------------------------------- parsing

def test_parse_normalises_a_valid_list():
    parsed = parse(document())
    assert parsed["endorser"] == {"dn": fx.ENDORSER_DN, "ca": fx.CA_DN, "creator": "Atlas Image Endorser",
                                  "email": "endorser@skygrid.test"}
    image = parsed["images"][0]
    assert image["identifier"] == "img-1" and image["size"] == 1024 and isinstance(image["size"], int)
    assert image["sha512"] == SHA and image["format"] == "qcow2" and image["arch"] == "x86_64"
    assert image["vo"] is None
    assert parsed["expires"].endswith("Z") and parsed["created"].endswith("Z")


def test_parse_accepts_bytes_with_crlf_as_openssl_outputs_them():
    text = json.dumps(document(), indent=1).replace("\n", "\r\n").encode()
    assert image_list.parse(text)["images"][0]["identifier"] == "img-1"


def _break(path, value):
    def change(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return data
    return change


IMAGE = ("hv:imagelist", "hv:images", 0, "hv:image")


@pytest.mark.parametrize("change, expected", [
    (_break(("hv:imagelist", "dc:identifier"), KeyError), "hv:imagelist.dc:identifier is missing"),
    (_break(("hv:imagelist", "dc:date:expires"), "next tuesday"), "hv:imagelist.dc:date:expires is 'next tuesday'"),
    (_break(("hv:imagelist", "dc:date:created"), "2026-02-30T00:00:00Z"), "day is out of range"),
    (_break(("hv:imagelist", "hv:endorser"), KeyError), "hv:endorser.hv:x509 is missing"),
    (_break(("hv:imagelist", "hv:endorser", "hv:x509", "hv:ca"), ""), "hv:x509.hv:ca is missing"),
    (_break(("hv:imagelist", "hv:images"), {}), "hv:imagelist.hv:images must be a list"),
    (_break(("hv:imagelist", "hv:images", 0), {"image": {}}), "hv:images[0] must be an object"),
    (_break(IMAGE + ("sl:checksum:sha512",), "abc"), "hv:images[0].hv:image.sl:checksum:sha512 must be 128"),
    (_break(IMAGE + ("sl:checksum:sha512",), KeyError), "hv:images[0].hv:image.sl:checksum:sha512 is missing"),
    (_break(IMAGE + ("hv:size",), "big"), "hv:images[0].hv:image.hv:size must be a whole number"),
    (_break(IMAGE + ("hv:size",), 0), "hv:size must be positive"),
    (_break(IMAGE + ("hv:uri",), KeyError), "hv:images[0].hv:image.hv:uri is missing"),
    (_break(IMAGE + ("dc:title",), {"x": 1}), "hv:images[0].hv:image.dc:title must be a string"),
    (_break(("hv:imagelist",), KeyError), "top level must be an object"),
])
def test_parse_names_the_json_path_at_fault(change, expected):
    with pytest.raises(ValueError) as err:
        parse(change(document()))
    assert expected in str(err.value)


def test_parse_refuses_a_duplicate_image_version_and_bad_json():
    data = document()
    data["hv:imagelist"]["hv:images"].append(copy.deepcopy(data["hv:imagelist"]["hv:images"][0]))
    with pytest.raises(ValueError, match="img-1 version 1 appears twice"):
        parse(data)
    with pytest.raises(ValueError, match="not valid JSON"):
        image_list.parse("{\"hv:imagelist\": ")


# ---------------------------------------------------------------- times and DNs

@pytest.mark.parametrize("text, expected", [
    ("2011-03-10T17:09:12Z", "2011-03-10T17:09:12Z"),
    ("2011-03-10T17:09:12", "2011-03-10T17:09:12Z"),
    ("2011-03-10T19:09:12+02:00", "2011-03-10T17:09:12Z"),
    ("2011-03-10T12:09:12-0500", "2011-03-10T17:09:12Z"),
    ("2011-03-10 17:09:12.123Z", "2011-03-10T17:09:12Z"),
    ("2011-03-10T17:09Z", "2011-03-10T17:09:00Z"),
])
def test_parse_time(text, expected):
    assert image_list.format_time(image_list.parse_time(text, "t")) == expected


@pytest.mark.parametrize("text", ["", "2011-03-10", "yesterday", None, "2011-13-10T00:00:00Z"])
def test_parse_time_refuses(text):
    with pytest.raises(ValueError):
        image_list.parse_time(text, "t")


def test_check_times_refuses_expired_and_future_lists():
    parsed = {"created": "2026-01-01T00:00:00Z", "expires": "2026-01-10T12:00:00Z"}
    with pytest.raises(FabricError) as err:
        image_list.check_times(parsed, "u", "list_url", now=NOW)
    assert err.value.field == "list_url" and "expired at 2026-01-10T12:00:00Z" in str(err.value)
    image_list.check_times(dict(parsed, expires="2026-01-10T12:00:01Z"), "u", "f", now=NOW)
    future = {"created": "2026-01-10T12:10:00Z", "expires": "2026-02-01T00:00:00Z"}
    with pytest.raises(FabricError, match="in the future"):
        image_list.check_times(future, "u", "f", now=NOW)
    image_list.check_times(dict(future, created="2026-01-10T12:04:00Z"), "u", "f", now=NOW)  # within clock skew


def test_normalise_dn_aliases_and_blanks():
    assert image_list.normalise_dn(" /C=NL/O=Org /CN=Jane Doe/Email=j@x.org ") == "/C=NL/O=Org/CN=Jane Doe/emailAddress=j@x.org"
    assert image_list.normalise_dn("/C=NL/CN=A/E=j@x") == image_list.normalise_dn("/C=NL/CN=A/emailAddress=j@x")
    assert image_list.normalise_dn("/DC=ch/CN=a/b") == "/DC=ch/CN=a/b"  # a '/' inside a value stays
    assert image_list.normalise_dn("CN=x, O=y") == "CN=x, O=y"
    assert image_list.normalise_dn(None) is None


def test_normalise_endorsers_errors():
    with pytest.raises(FabricError, match="is empty") as err:
        image_list.normalise_endorsers([], "/nowhere")
    assert err.value.field == "endorsers"
    with pytest.raises(FabricError, match="must give 'dn' and 'ca'") as err:
        image_list.normalise_endorsers([{"dn": "/CN=x"}], "/nowhere")
    assert err.value.field == "endorsers[0]"
    with pytest.raises(FabricError, match="slash form"):
        image_list.normalise_endorsers([{"dn": "CN=x, O=y", "ca": "/CN=ca"}], "/nowhere")


# ---------------------------------------------------------------- signatures (real openssl)

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return fx.Pki(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def text():
    return fx.image_list([fx.image_entry("img-1", "http://127.0.0.1/img-1", size=4096, sha512=SHA)])


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return "file://" + str(path)


def load(pki, url, **kwargs):
    return image_list.load(url, kwargs.pop("endorsers", pki.endorsers()), kwargs.pop("ca_path", pki.ca_path),
                           field="list_url", **kwargs)


def test_signature_kind(pki, text):
    assert image_list.signature_kind(fx.sign(text, pki.endorser)) == "detached"
    assert image_list.signature_kind(text.encode()) is None
    assert image_list.signature_kind(b"Content-Type: text/plain\n\n{}") is None
    opaque = subprocess.run(["openssl", "smime", "-sign", "-nodetach", "-signer", pki.endorser[0], "-inkey",
                             pki.endorser[1]], input=text.encode(), stdout=subprocess.PIPE, check=True).stdout
    assert image_list.signature_kind(opaque) == "opaque"


def test_load_verifies_a_signed_list(pki, text, tmp_path):
    parsed = load(pki, write(tmp_path, "good", fx.sign(text, pki.endorser)))
    assert parsed["signer"] == {"dn": fx.ENDORSER_DN, "ca": fx.CA_DN}
    assert parsed["images"][0]["identifier"] == "img-1" and parsed["url"].startswith("file://")


def test_load_accepts_opaque_and_text_mode_signatures(pki, text, tmp_path):
    for extra in (["-nodetach"], ["-text"]):
        signed = subprocess.run(["openssl", "smime", "-sign", "-signer", pki.endorser[0], "-inkey", pki.endorser[1]]
                                + extra, input=text.encode(), stdout=subprocess.PIPE, check=True).stdout
        assert load(pki, write(tmp_path, "l" + extra[0], signed))["images"][0]["size"] == 4096


def test_endorser_dn_with_email_alias_matches(pki, text, tmp_path):
    endorsers = [dict(pki.endorsers()[0], dn=fx.ENDORSER_DN + " ", ca=" " + fx.CA_DN)]
    assert load(pki, write(tmp_path, "good", fx.sign(text, pki.endorser)), endorsers=endorsers)


def refused(pki, url, **kwargs):
    with pytest.raises(FabricError) as err:
        load(pki, url, **kwargs)
    return err.value


def test_unsigned_list_is_refused(pki, text, tmp_path):
    err = refused(pki, write(tmp_path, "plain", text))
    assert err.field == "list_url" and "is not signed" in str(err) and "trust_class 1" in str(err)


def test_tampered_list_is_refused(pki, text, tmp_path):
    signed = fx.sign(text, pki.endorser)
    err = refused(pki, write(tmp_path, "tampered", fx.tamper(signed, SHA[:8], "cd" * 4)))
    assert err.field == "list_url" and "does not verify against its content" in str(err)
    assert "digest failure" in str(err)


def test_wrong_signer_is_refused(pki, text, tmp_path):
    err = refused(pki, write(tmp_path, "rogue", fx.sign(text, pki.rogue)))
    assert err.field == "endorsers" and fx.ROGUE_DN in str(err) and "not an endorser of this VO" in str(err)


def test_right_dn_from_untrusted_ca_is_refused(pki, text, tmp_path):
    err = refused(pki, write(tmp_path, "impostor", fx.sign(text, pki.impostor)))
    assert err.field == "endorsers[0].ca_sha256" and "not issued by the CA pinned" in str(err)


def test_impostor_intermediate_from_another_trusted_ca_is_refused(pki, text, tmp_path):
    """A second CA of ca_path issues an intermediate carrying the pinned CA's DN, which issues a certificate
    with the endorser's DN: every name is right and the chain ends in ca_path, but not at the pinned CA."""
    signed = fx.sign(text, pki.chained_impostor, chain=[pki.impostor_ca[0]])
    url = write(tmp_path, "impostor-chain", signed)
    for pin in ("ca_sha256", "ca_cert"):
        err = refused(pki, url, endorsers=pki.endorsers(pin=pin), crl_check=False)
        assert err.field == "endorsers[0].%s" % pin, str(err)
        assert "not issued by the CA pinned" in str(err) and fx.ENDORSER_DN in str(err)
    err = refused(pki, url)  # the same with CRLs checked: the pin is looked at first
    assert err.field == "endorsers[0].ca_sha256"


def test_endorser_ca_must_be_pinned(pki, text, tmp_path):
    url = write(tmp_path, "good", fx.sign(text, pki.endorser))
    err = refused(pki, url, endorsers=pki.endorsers(pin=None))
    assert err.field == "endorsers[0]" and "ca_sha256" in str(err) and "-fingerprint -sha256" in str(err)
    both = [dict(pki.endorsers()[0], ca_cert=pki.ca[0])]
    assert refused(pki, url, endorsers=both).field == "endorsers[0]"


@pytest.mark.parametrize("change, field, phrase", [
    ({"ca_sha256": "AB:CD"}, "endorsers[0].ca_sha256", "64 hexadecimal digits"),
    ({"ca_sha256": "ab" * 32}, "endorsers[0].ca_sha256", "no CA certificate in"),
    ({"ca_cert": "/nonexistent/ca.pem"}, "endorsers[0].ca_cert", "cannot read"),
    ({"ca": fx.OTHER_CA_DN}, "endorsers[0].ca_sha256", "is the certificate of %s, not of %s" % (fx.CA_DN, fx.OTHER_CA_DN)),
])
def test_pin_errors_name_the_field(pki, text, tmp_path, change, field, phrase):
    endorser = dict(pki.endorsers()[0], **change)
    if "ca_cert" in change:
        del endorser["ca_sha256"]
    err = refused(pki, write(tmp_path, "good", fx.sign(text, pki.endorser)), endorsers=[endorser])
    assert err.field == field and phrase in str(err), str(err)


def test_pin_by_certificate_file_and_colon_free_fingerprint(pki, text, tmp_path):
    url = write(tmp_path, "good", fx.sign(text, pki.endorser))
    assert load(pki, url, endorsers=pki.endorsers(pin="ca_cert"))["signer"]["dn"] == fx.ENDORSER_DN
    endorser = dict(pki.endorsers()[0])
    endorser["ca_sha256"] = endorser["ca_sha256"].replace(":", "").lower()
    assert load(pki, url, endorsers=[endorser])["signer"]["ca"] == fx.CA_DN


def copy_ca_path(pki, tmp_path, name):
    target = tmp_path / name
    shutil.copytree(pki.ca_path, str(target), symlinks=True)
    return target


def test_revoked_endorser_is_refused(pki, text, tmp_path):
    url = write(tmp_path, "revoked", fx.sign(text, pki.revoked))
    err = refused(pki, url)
    assert err.field == "endorsers" and "has a revoked certificate" in str(err) and "certificate revoked" in str(err)
    assert load(pki, url, crl_check=False)["signer"]["dn"] == fx.ENDORSER_DN  # the site chose not to check


def test_missing_crl_is_an_error_unless_the_site_opts_out(pki, text, tmp_path):
    ca_path = copy_ca_path(pki, tmp_path, "no-crl")
    os.unlink(pki.crl_path(str(ca_path)))
    url = write(tmp_path, "good", fx.sign(text, pki.endorser))
    err = refused(pki, url, ca_path=str(ca_path))
    assert err.field == "ca_path" and "a CRL of its CA is missing" in str(err)
    assert "fetch-crl" in str(err) and "crl_check: false" in str(err)
    assert load(pki, url, ca_path=str(ca_path), crl_check=False)["signer"]["ca"] == fx.CA_DN


def test_expired_crl_is_an_error(pki, text, tmp_path):
    ca_path = copy_ca_path(pki, tmp_path, "old-crl")
    pki.certificates.crl(pki.ca, pki.crl_path(str(ca_path)), last_update="20200101000000Z",
                         next_update="20200108000000Z")
    err = refused(pki, write(tmp_path, "good", fx.sign(text, pki.endorser)), ca_path=str(ca_path))
    assert err.field == "ca_path" and "is out of date" in str(err) and "CRL has expired" in str(err)


def test_http_list_needs_consent(pki, text, tmp_path):
    server = fx.FileServer()
    try:
        url = server.add_bytes("atlas.list", fx.sign(text, pki.endorser), str(tmp_path))
        err = refused(pki, url)
        assert err.field == "list_url" and "plain http" in str(err) and "allow_http: true" in str(err)
        assert server.requests == []  # refused before anything is fetched
        assert load(pki, url, allow_http=True)["images"][0]["identifier"] == "img-1"
    finally:
        server.close()


def test_signer_must_be_the_endorser_the_list_names(pki, tmp_path):
    text = fx.image_list([], endorser_dn=fx.ROGUE_DN)
    endorsers = pki.endorsers() + [dict(pki.endorsers()[0], dn=fx.ROGUE_DN)]
    err = refused(pki, write(tmp_path, "l", fx.sign(text, pki.endorser)), endorsers=endorsers)
    assert err.field == "list_url" and "names its endorser as %s" % fx.ROGUE_DN in str(err)


def test_expired_list_is_refused(pki, tmp_path):
    text = fx.image_list([], expires_in=-datetime.timedelta(minutes=1))
    err = refused(pki, write(tmp_path, "old", fx.sign(text, pki.endorser)))
    assert err.field == "list_url" and "expired at" in str(err)


def test_malformed_signed_list_is_refused(pki, tmp_path):
    err = refused(pki, write(tmp_path, "bad", fx.sign('{"hv:imagelist": {"dc:identifier": "x"}}', pki.endorser)))
    assert err.field == "list_url" and "is malformed: hv:imagelist.dc:date:created is missing" in str(err)


def test_ca_path_must_be_a_directory_of_hashed_certificates(pki, text, tmp_path):
    url = write(tmp_path, "good", fx.sign(text, pki.endorser))
    err = refused(pki, url, ca_path=str(tmp_path / "nowhere"))  # openssl itself would *accept* this
    assert err.field == "ca_path" and "is not a directory" in str(err)
    empty = tmp_path / "empty"
    empty.mkdir()
    err = refused(pki, url, ca_path=str(empty))
    assert err.field == "ca_path" and "openssl rehash" in str(err)


def test_system_trust_store_is_not_used(pki, text, tmp_path):
    """A CA directory holding only an unrelated CA must not pass because of the system bundle."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "rogue.pem").write_text(open(pki.rogue_ca[0]).read())
    subprocess.run(["openssl", "rehash", str(other)], check=True)
    err = refused(pki, write(tmp_path, "good", fx.sign(text, pki.endorser)), ca_path=str(other),
                  endorsers=pki.endorsers(pin="ca_cert"))
    assert err.field == "ca_path" and "is not trusted" in str(err)


# ---------------------------------------------------------------- replays

SEEN = {"version": "3", "created": "2026-01-10T12:00:00Z", "url": "https://vo.example/list"}


@pytest.mark.parametrize("version, created, refused_", [
    ("3", "2026-01-10T12:00:00Z", False),   # the same list again
    ("3", "2026-01-11T12:00:00Z", False),   # re-signed later (a new expiry), same version
    ("4", "2026-01-12T12:00:00Z", False),   # the next list
    ("2", "2026-01-07T12:00:00Z", True),    # the replay of the issue: version 2, three days older
    ("2", "2026-01-12T12:00:00Z", True),    # an older version, whatever its date says
    ("3", "2026-01-09T12:00:00Z", True),    # the same version made earlier
    (None, "2026-01-09T12:00:00Z", True),   # no version: the date decides
])
def test_check_not_replayed(version, created, refused_):
    parsed = {"identifier": "list-1", "version": version, "created": created, "url": "http://mirror/list"}
    if not refused_:
        image_list.check_not_replayed(parsed, SEEN, "/pool/.skygrid/lists/atlas.json", "list_url")
        return
    with pytest.raises(FabricError) as err:
        image_list.check_not_replayed(parsed, SEEN, "/pool/.skygrid/lists/atlas.json", "list_url")
    assert err.value.field == "list_url" and "is older than the one accepted before" in str(err.value)
    assert "hv:version 3, created 2026-01-10T12:00:00Z" in str(err.value) and "lists/atlas.json" in str(err.value)


def test_check_not_replayed_accepts_a_first_list():
    image_list.check_not_replayed({"identifier": "x", "version": "1", "created": "2020-01-01T00:00:00Z",
                                   "url": "u"}, None, "f", "list_url")


# ---------------------------------------------------------------- fetching

def test_fetch_limits_and_schemes(tmp_path):
    url = write(tmp_path, "big", b"x" * 100)
    assert image_list.fetch(url, "url", max_bytes=100) == b"x" * 100
    with pytest.raises(FabricError, match="at most 99") as err:
        image_list.fetch(url, "url", max_bytes=99)
    assert err.value.field == "url"
    for bad in ("ftp://x/y", "/etc/passwd", "", None):
        with pytest.raises(FabricError, match="not an https, http or file URL"):
            image_list.check_url(bad, "url")
    with pytest.raises(FabricError, match="cannot read"):
        image_list.fetch("file://" + str(tmp_path / "missing"), "url")


def test_open_source_ranges_over_http(tmp_path):
    server = fx.FileServer()
    try:
        url = server.add_bytes("data", bytes(range(256)) * 4, str(tmp_path))
        stream, start, total = image_list.open_source(url, "url", offset=1000)
        assert (start, total, stream.read()) == (1000, 1024, (bytes(range(256)) * 4)[1000:])
        stream.close()
        assert server.requests[-1]["range"] == "bytes=1000-"
        server.set_mode("data", "norange")  # a server that ignores Range: start from 0
        stream, start, total = image_list.open_source(url, "url", offset=1000)
        assert (start, total, len(stream.read())) == (0, 1024, 1024)
        stream.close()
        server.set_mode("data", "normal")
        stream, start, total = image_list.open_source(url, "url", offset=5000)  # 416: start again
        assert (start, len(stream.read())) == (0, 1024)
        stream.close()
        with pytest.raises(FabricError, match="HTTP 404"):
            image_list.fetch(server.url("missing"), "url")
    finally:
        server.close()


def test_open_source_file_offset(tmp_path):
    url = write(tmp_path, "f", b"0123456789")
    stream, start, total = image_list.open_source(url, "url", offset=4)
    assert (start, total, stream.read()) == (4, 10, b"456789")
    stream.close()


# ---------------------------------------------------------------- selecting images

IMAGES = [
    {"identifier": "a-1", "title": "CernVM", "version": "4.9"},
    {"identifier": "a-2", "title": "CernVM", "version": "4.10"},
    {"identifier": "b-1", "title": "Other", "version": "1"},
    {"identifier": "c-1", "title": "Twin", "version": "2"},
    {"identifier": "c-2", "title": "Twin", "version": "2"},
]


def test_select_by_identifier_title_and_version():
    assert image_list.select(IMAGES, "a-1")["identifier"] == "a-1"
    assert image_list.select(IMAGES, "CernVM")["identifier"] == "a-2"  # 4.10 is newer than 4.9
    assert image_list.select(IMAGES, "CernVM", version="4.9")["identifier"] == "a-1"
    with pytest.raises(FabricError, match="several images of the same version"):
        image_list.select(IMAGES, "Twin")
    with pytest.raises(FabricError, match="no image with identifier or title 'gone'") as err:
        image_list.select(IMAGES, "gone", field="images[1].image")
    assert err.value.field == "images[1].image" and "a-1 (CernVM, version 4.9)" in str(err.value)
    with pytest.raises(FabricError, match="and version 5"):
        image_list.select(IMAGES, "CernVM", version="5")


def test_version_key_orders_like_people_do():
    versions = ["1.0", "1.10", "1.9", "1.9b", "2", "20260105", "2026.01.5", None]
    assert sorted(versions, key=image_list.version_key) == [None, "1.0", "1.9", "1.9b", "1.10", "2", "2026.01.5",
                                                            "20260105"]


def test_openssl_missing_is_actionable(monkeypatch):
    monkeypatch.setattr(image_list.shutil, "which", lambda name, path=None: None)
    with pytest.raises(FabricError, match="install openssl"):
        image_list.openssl_binary()


def test_strip_mime_headers():
    assert image_list.strip_mime_headers(b"Content-Type: text/plain\r\n\r\n{\"a\": 1}") == b"{\"a\": 1}"
    assert image_list.strip_mime_headers(b"{\"a\": 1}") == b"{\"a\": 1}"
