# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A VM as a declarative spec: validation and normalisation of the user's input, spec -> libvirt
domain XML, domain XML -> spec, and the comparison of the two.

Pure functions on dicts and strings: no libvirt import, unit-tested on their own.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import xml.etree.ElementTree as ET

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

METADATA_NS = "urn:skygrid:fabric:vm:1"
METADATA_PREFIX = "skygrid"
ET.register_namespace(METADATA_PREFIX, METADATA_NS)

# Names become hostnames and volume-name prefixes: keep them to what all three accept.
# \Z, not $: "$" also matches before a trailing newline.
NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?\Z")
MAC_RE = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}\Z")
SHA512_RE = re.compile(r"^[0-9a-f]{128}\Z")
METADATA_KEY_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")
# Elements of <skygrid:vm> the module keeps its own records in: not free metadata keys.
RESERVED_METADATA_KEYS = ("disk", "seed")
# A volume in a pool: one file name, never a path (no '/', no leading '.', no '..').
VOLUME_NAME_RE = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9_.+-]{0,254}\Z")
DISK_FORMATS = ("qcow2", "raw")
VIRT_TYPES = ("kvm", "qemu")
TRUST_CLASSES = ("1", "2", "3")
MIN_MEMORY_MB = 32
DEFAULT_MAC_PREFIX = "52:54:00"
DEFAULT_FILTER = "clean-traffic"


def disk_target(index):
    """vda, vdb, ... vdz, vdaa: the virtio name of the index-th disk."""
    name = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        name = chr(ord("a") + rem) + name
    return "vd" + name


def derived_mac(vm_name, index, prefix=DEFAULT_MAC_PREFIX):
    """A stable MAC for a NIC the user gave none: the same VM name gets the same MAC every run."""
    digest = hashlib.sha256(("%s/%d" % (vm_name, index)).encode()).digest()
    return prefix + ":" + ":".join("%02x" % b for b in digest[:3])


def seed_digest(cloud_init):
    """A digest of the seed's content (not of the ISO bytes, which carry timestamps)."""
    if not cloud_init:
        return None
    canonical = json.dumps(cloud_init, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _field(path, msg):
    return FabricError(msg, field=path)


def _positive_int(value, path, minimum=1):
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise _field(path, "must be a whole number, got %r" % (value,))
    if number < minimum:
        raise _field(path, "must be at least %d, got %d" % (minimum, number))
    return number


def _normalise_disks(name, disks, default_pool):
    result = []
    for index, disk in enumerate(disks or []):
        path = "disks[%d]" % index
        pool = disk.get("pool") or default_pool
        if not pool:
            raise _field(path + ".pool", "is required: the libvirt storage pool that holds (or will hold) the disk")
        base_volume = disk.get("base_volume")
        volume = disk.get("volume")
        size_gb = disk.get("size_gb")
        if volume and base_volume:
            raise _field(path, "give either 'volume' (attach an existing volume) or 'base_volume' "
                               "(create an overlay on a staged image), not both")
        if not (volume or base_volume or size_gb):
            raise _field(path, "needs 'base_volume' (overlay on a staged image), 'size_gb' (an empty "
                               "disk) or 'volume' (an existing volume to attach)")
        for key, value in (("volume", volume), ("base_volume", base_volume)):
            if value and (not VOLUME_NAME_RE.match(str(value)) or ".." in str(value)):
                raise _field("%s.%s" % (path, key),
                             "%r is not a volume name in the pool: give the name libvirt lists (virsh vol-list "
                             "POOL), without '/' or '..'" % (value,))
        if size_gb is not None:
            size_gb = _positive_int(size_gb, path + ".size_gb")
        target = disk_target(index)
        owned = not volume
        fmt = disk.get("format") or "qcow2"
        if fmt not in DISK_FORMATS:
            raise _field(path + ".format", "must be one of %s" % ", ".join(DISK_FORMATS))
        if owned and fmt != "qcow2":
            raise _field(path + ".format", "disks the module creates are qcow2; use 'volume' to attach a raw volume")
        result.append({
            "target": target,
            "pool": pool,
            "volume": volume or "%s-%s.qcow2" % (name, target),
            "base_volume": base_volume,
            "size_gb": size_gb,
            "format": fmt,
            "readonly": bool(disk.get("readonly", False)),
            "owned": owned,
        })
    return result


_SPOOFING_CONSENT = ("or, if the site accepts that this VM may forge source addresses on that network, "
                     "set allow_address_spoofing: true")


def _normalise_nics(name, nics, existing_macs, allow_spoofing=False):
    """A NIC without the anti-spoofing filter lets root in the VM send as any address: refused unless
    the site consents explicitly (``allow_spoofing``)."""
    result = []
    for index, nic in enumerate(nics or []):
        path = "nics[%d]" % index
        network, bridge, user = nic.get("network"), nic.get("bridge"), bool(nic.get("user"))
        if [bool(network), bool(bridge), user].count(True) != 1:
            raise _field(path, "give exactly one of 'network' (a libvirt network), 'bridge' (a host bridge) or "
                               "'user: true' (user-mode networking, e.g. qemu:///session on a desktop)")
        if user and (nic.get("ip") or nic.get("filter") not in (None, "", "none")):
            raise _field(path + ".ip", "user-mode networking gives the VM QEMU's private address; an address "
                                       "or filter cannot be pinned on it")
        mac = (nic.get("mac") or "").lower() or (existing_macs[index] if index < len(existing_macs) else None) \
            or derived_mac(name, index)
        if not MAC_RE.match(mac):
            raise _field(path + ".mac", "'%s' is not a MAC address like 52:54:00:12:34:56" % mac)
        if int(mac[:2], 16) & 1:
            raise _field(path + ".mac", "'%s' is a multicast address; use a unicast one (first octet even)" % mac)
        ip = nic.get("ip")
        if ip:
            try:
                ip = str(ipaddress.ip_address(ip))
            except ValueError:
                raise _field(path + ".ip", "'%s' is not an IP address" % ip)
        nic_filter = nic.get("filter")
        if nic_filter is None:
            nic_filter = DEFAULT_FILTER if ip else None
        elif nic_filter in ("", "none"):
            nic_filter = None
        if nic_filter == DEFAULT_FILTER and not ip:
            raise _field(path + ".ip", "is required with the clean-traffic filter: it is the only address the VM may use")
        # A user-mode NIC (QEMU's own NAT) shares no L2 segment: there is no address to forge on it.
        if not allow_spoofing and not user and not ip:
            raise _field(path + ".ip", "is required: without the VM's address the NIC gets no anti-spoofing filter; "
                                       "give it (skygrid.fabric.ip_lease leases one) " + _SPOOFING_CONSENT)
        if not allow_spoofing and not user and nic_filter is None:
            raise _field(path + ".filter", "'none' attaches no anti-spoofing filter; leave filter out (clean-traffic "
                                           "is the default) " + _SPOOFING_CONSENT)
        result.append({
            "network": network,
            "bridge": bridge,
            "user": user,
            "mac": mac,
            "ip": ip,
            "filter": nic_filter,
            "model": nic.get("model") or "virtio",
        })
    return result


def _normalise_metadata(metadata):
    result = {}
    for key, value in (metadata or {}).items():
        if not METADATA_KEY_RE.match(str(key)):
            raise _field("metadata.%s" % key, "metadata keys are lower-case words ([a-z][a-z0-9_]*)")
        if key in RESERVED_METADATA_KEYS:
            raise _field("metadata.%s" % key, "is reserved: the module keeps its own disk and seed records under "
                                              "that name; choose another key")
        if value is None:
            continue
        value = str(value)
        if any(ord(char) < 32 and char != "\t" or ord(char) == 127 for char in value):
            raise _field("metadata.%s" % key, "holds control characters (newlines included): metadata values are "
                                              "one line of text, and libvirt's XML could not carry them back")
        if key == "trust_class" and value not in TRUST_CLASSES:
            raise _field("metadata.trust_class", "must be 1 (site image), 2 (VO image) or 3 (user image), got %r" % value)
        if key == "image_sha512":
            value = value.lower()
            if not SHA512_RE.match(value):
                raise _field("metadata.image_sha512", "must be 128 hexadecimal digits")
        result[key] = value
    return result


def _normalise_cloud_init(name, cloud_init):
    if not cloud_init:
        return None
    user_data = cloud_init.get("user_data")
    if isinstance(user_data, dict):
        # JSON is YAML: no YAML library needed on the hypervisor.
        user_data = "#cloud-config\n" + json.dumps(user_data, indent=2, sort_keys=True) + "\n"
    meta_data = cloud_init.get("meta_data") or {}
    if isinstance(meta_data, dict):
        meta_data = dict({"instance-id": name, "local-hostname": name}, **meta_data)
        meta_data = json.dumps(meta_data, indent=2, sort_keys=True) + "\n"
    network_config = cloud_init.get("network_config")
    if isinstance(network_config, dict):
        network_config = json.dumps(network_config, indent=2, sort_keys=True) + "\n"
    seed = {"user_data": user_data or "#cloud-config\n{}\n", "meta_data": meta_data}
    if network_config:
        seed["network_config"] = network_config
    return seed


def normalise(params, existing=None):
    """Validate one VM's parameters and return ``(spec, seed_content)``.

    ``existing`` is the spec read back from libvirt (or None): MACs the user left out are kept
    from it, so an update never renumbers a VM's interfaces.
    """
    name = params.get("name")
    if not name or not NAME_RE.match(str(name)):
        raise _field("name", "%r is not a valid VM name: use 1-63 letters, digits, '-', '_' or '.', "
                             "starting and ending with a letter or digit" % (name,))
    virt_type = params.get("virt_type") or "kvm"
    if virt_type not in VIRT_TYPES:
        raise _field("virt_type", "must be kvm or qemu (or auto, which the module resolves from the host)")
    existing_macs = [nic["mac"] for nic in (existing or {}).get("nics", [])]
    cloud_init = _normalise_cloud_init(name, params.get("cloud_init"))
    disks = _normalise_disks(name, params.get("disks"), params.get("default_pool"))
    seed = None
    if cloud_init:
        seed_pool = params.get("seed_pool") or (disks[0]["pool"] if disks else None)
        if not seed_pool:
            raise _field("seed_pool", "is required for cloud_init when the VM has no disks to take the pool from")
        seed = {"pool": seed_pool, "volume": "%s-cidata.iso" % name, "sha256": seed_digest(cloud_init)}
    boot = {}
    for key in ("kernel", "initrd", "cmdline"):
        boot[key] = params.get(key) or None
    if (boot["initrd"] or boot["cmdline"]) and not boot["kernel"]:
        raise _field("kernel", "is required when 'initrd' or 'cmdline' is given (direct kernel boot)")
    spec = {
        "name": name,
        "virt_type": virt_type,
        "vcpus": _positive_int(params.get("vcpus", 1), "vcpus"),
        "memory_mb": _positive_int(params.get("memory_mb", 1024), "memory_mb", MIN_MEMORY_MB),
        "cpu_mode": params.get("cpu_mode") or ("host-passthrough" if virt_type == "kvm" else None),
        "machine": params.get("machine") or "pc",
        "kernel": boot["kernel"],
        "initrd": boot["initrd"],
        "cmdline": boot["cmdline"],
        "disks": disks,
        "nics": _normalise_nics(name, params.get("nics"), existing_macs, bool(params.get("allow_address_spoofing"))),
        "seed": seed,
        "console_log": params.get("console_log") if params.get("console_log") is not None
        else "/var/log/libvirt/qemu/%s-console.log" % name,
        "metadata": _normalise_metadata(params.get("metadata")),
    }
    return spec, cloud_init


# ---------------------------------------------------------------- spec -> XML

def _sub(parent, tag, text=None, **attrs):
    elem = ET.SubElement(parent, tag, {k: str(v) for k, v in attrs.items() if v is not None})
    if text is not None:
        elem.text = str(text)
    return elem


def _ns(tag):
    return "{%s}%s" % (METADATA_NS, tag)


def metadata_element(spec, namespaced=True):
    """The <skygrid:vm> element; libvirt's setMetadata wants it without the namespace (it adds it)."""
    tag = _ns if namespaced else (lambda name: name)
    root = ET.Element(tag("vm"))
    for key in sorted(spec["metadata"]):
        _sub(root, tag(key), spec["metadata"][key])
    for disk in spec["disks"]:
        _sub(root, tag("disk"), target=disk["target"], base_volume=disk["base_volume"],
             size_gb=disk["size_gb"], owned="yes" if disk["owned"] else "no")
    if spec["seed"]:
        _sub(root, tag("seed"), pool=spec["seed"]["pool"], volume=spec["seed"]["volume"],
             sha256=spec["seed"]["sha256"])
    return root


def _disk_xml(devices, pool, volume, fmt, target, readonly):
    disk = _sub(devices, "disk", type="volume", device="disk")
    _sub(disk, "driver", name="qemu", type=fmt, discard="unmap" if fmt == "qcow2" else None)
    _sub(disk, "source", pool=pool, volume=volume)
    _sub(disk, "target", dev=target, bus="virtio")
    if readonly:
        _sub(disk, "readonly")


def to_xml(spec, uuid=None):
    """The libvirt domain XML for a normalised spec (``uuid`` keeps an existing domain's identity)."""
    dom = ET.Element("domain", type=spec["virt_type"])
    _sub(dom, "name", spec["name"])
    if uuid:
        _sub(dom, "uuid", uuid)
    meta = _sub(dom, "metadata")
    meta.append(metadata_element(spec))
    _sub(dom, "memory", spec["memory_mb"] * 1024, unit="KiB")
    _sub(dom, "currentMemory", spec["memory_mb"] * 1024, unit="KiB")
    _sub(dom, "vcpu", spec["vcpus"], placement="static")
    os_elem = _sub(dom, "os")
    _sub(os_elem, "type", "hvm", arch="x86_64", machine=spec["machine"])
    for key in ("kernel", "initrd", "cmdline"):
        if spec[key]:
            _sub(os_elem, key, spec[key])
    _sub(os_elem, "boot", dev="hd")
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if spec["cpu_mode"]:
        _sub(dom, "cpu", mode=spec["cpu_mode"])
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    devices = _sub(dom, "devices")
    for disk in spec["disks"]:
        _disk_xml(devices, disk["pool"], disk["volume"], disk["format"], disk["target"], disk["readonly"])
    if spec["seed"]:
        _disk_xml(devices, spec["seed"]["pool"], spec["seed"]["volume"], "raw",
                  disk_target(len(spec["disks"])), True)
    for nic in spec["nics"]:
        if nic["network"]:
            iface = _sub(devices, "interface", type="network")
            _sub(iface, "source", network=nic["network"])
        elif nic.get("user"):
            iface = _sub(devices, "interface", type="user")
        else:
            iface = _sub(devices, "interface", type="bridge")
            _sub(iface, "source", bridge=nic["bridge"])
        _sub(iface, "mac", address=nic["mac"])
        _sub(iface, "model", type=nic["model"])
        if nic["filter"]:
            ref = _sub(iface, "filterref", filter=nic["filter"])
            if nic["ip"]:
                _sub(ref, "parameter", name="IP", value=nic["ip"])
    serial = _sub(devices, "serial", type="pty")
    if spec["console_log"]:
        _sub(serial, "log", file=spec["console_log"], append="on")
    _sub(serial, "target", port=0)
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port=0)
    _sub(devices, "memballoon", model="virtio")
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")
    return ET.tostring(dom, encoding="unicode")


# ---------------------------------------------------------------- XML -> spec

def _int_or_none(value):
    return int(value) if value not in (None, "") else None


def _memory_mb(elem):
    if elem is None:
        return None
    factor = {"b": 1.0 / 1048576, "bytes": 1.0 / 1048576, "KiB": 1.0 / 1024, "k": 1.0 / 1024,
              "MiB": 1, "M": 1, "GiB": 1024, "G": 1024}.get(elem.get("unit", "KiB"), 1.0 / 1024)
    return int(int(elem.text) * factor)


def _text(root, path):
    elem = root.find(path)
    return elem.text if elem is not None and elem.text is not None else None


def read_metadata(root):
    """The skygrid metadata of a domain: (plain key/values, per-target disk records, seed record)."""
    elem = root.find("metadata/" + _ns("vm"))
    values, disks, seed = {}, {}, None
    if elem is None:
        return values, disks, seed
    for child in elem:
        tag = child.tag.split("}", 1)[-1]
        if tag == "disk":
            disks[child.get("target")] = {
                "base_volume": child.get("base_volume"),
                "size_gb": _int_or_none(child.get("size_gb")),
                "owned": child.get("owned") == "yes",
            }
        elif tag == "seed":
            seed = {"pool": child.get("pool"), "volume": child.get("volume"), "sha256": child.get("sha256")}
        else:
            values[tag] = child.text or ""
    return values, disks, seed


def from_xml(xml):
    """Read back the parts of a domain XML this collection manages, in the shape of ``normalise``."""
    root = ET.fromstring(xml)
    metadata, disk_meta, seed = read_metadata(root)
    disks = []
    for disk in root.findall("devices/disk"):
        if disk.get("device", "disk") != "disk":
            continue
        source = disk.find("source")
        target = disk.find("target").get("dev")
        if source is None:
            continue
        pool, volume = source.get("pool"), source.get("volume")
        if seed and pool == seed["pool"] and volume == seed["volume"]:
            continue
        if volume is None:  # a file/block disk defined outside this collection
            volume = source.get("file") or source.get("dev")
        record = disk_meta.get(target, {"base_volume": None, "size_gb": None, "owned": False})
        driver = disk.find("driver")
        disks.append({
            "target": target,
            "pool": pool,
            "volume": volume,
            "base_volume": record["base_volume"],
            "size_gb": record["size_gb"],
            "format": driver.get("type", "raw") if driver is not None else "raw",
            "readonly": disk.find("readonly") is not None,
            "owned": record["owned"],
        })
    nics = []
    for iface in root.findall("devices/interface"):
        source = iface.find("source")
        ref = iface.find("filterref")
        ip = None
        if ref is not None:
            for param in ref.findall("parameter"):
                if param.get("name") == "IP":
                    ip = param.get("value")
        model = iface.find("model")
        nics.append({
            "network": source.get("network") if iface.get("type") == "network" else None,
            "bridge": source.get("bridge") if iface.get("type") == "bridge" else None,
            "user": iface.get("type") == "user",
            "mac": iface.find("mac").get("address").lower(),
            "ip": ip,
            "filter": ref.get("filter") if ref is not None else None,
            "model": model.get("type") if model is not None else None,
        })
    os_type = root.find("os/type")
    machine = os_type.get("machine") if os_type is not None else None
    cpu = root.find("cpu")
    log = root.find("devices/serial/log")
    return {
        "name": _text(root, "name"),
        "virt_type": root.get("type"),
        "vcpus": int(_text(root, "vcpu") or 1),
        "memory_mb": _memory_mb(root.find("memory")),
        "cpu_mode": cpu.get("mode") if cpu is not None else None,
        "machine": machine,
        "kernel": _text(root, "os/kernel"),
        "initrd": _text(root, "os/initrd"),
        "cmdline": _text(root, "os/cmdline"),
        "disks": disks,
        "nics": nics,
        "seed": seed,
        "console_log": log.get("file") if log is not None else None,
        "metadata": metadata,
    }


# ---------------------------------------------------------------- comparison

def _machine_matches(wanted, actual):
    # libvirt expands an alias such as "pc" into a versioned type ("pc-i440fx-7.2").
    if wanted == actual or actual is None:
        return True
    aliases = {"pc": "pc-i440fx-", "q35": "pc-q35-"}
    return actual.startswith(aliases.get(wanted, wanted + "-"))


def differences(wanted, actual):
    """The top-level spec keys whose values differ (an empty list means up to date).

    Adopts into ``wanted`` what libvirt filled in for it (the expansion of a machine alias, the
    CPU mode when none was asked for), so the diff shows no phantom change either.
    """
    if _machine_matches(wanted.get("machine"), actual.get("machine")):
        wanted["machine"] = actual.get("machine") or wanted.get("machine")
    if wanted.get("cpu_mode") is None:  # no CPU mode asked for: whatever libvirt chose is fine
        wanted["cpu_mode"] = actual.get("cpu_mode")
    return [key for key in wanted if wanted[key] != actual.get(key)]
