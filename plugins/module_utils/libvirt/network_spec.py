# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A libvirt network as a declarative spec: validation, spec -> XML, XML -> spec. Pure functions."""

from __future__ import annotations

import ipaddress
import re
import xml.etree.ElementTree as ET

from ansible_collections.skygrid.fabric.plugins.module_utils.dns_names import check_domain, check_host_name
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.vm.spec import MAC_RE, NAME_RE

MODES = ("nat", "route", "bridge", "isolated")
BRIDGE_NAME_MAX = 15  # Linux interface names
# What a bridge name may hold here: it ends up in XML, in 'ip' and 'bridge' command lines and in paths.
BRIDGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


def _address(value, field, network):
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise FabricError("'%s' is not an IP address" % value, field=field)
    if address not in network:
        raise FabricError("%s is outside %s" % (address, network), field=field)
    if address in (network.network_address, network.broadcast_address) and network.prefixlen < 31:
        raise FabricError("%s is the network or broadcast address of %s" % (address, network), field=field)
    return address


def normalise_hosts(hosts, network, gateway):
    result, seen = [], {"mac": {}, "ip": {}, "name": {}}
    for index, host in enumerate(hosts or []):
        field = "hosts[%d]" % index
        mac = str(host.get("mac") or "").lower()
        if not MAC_RE.match(mac):
            raise FabricError("'%s' is not a MAC address like 52:54:00:12:34:56" % mac, field=field + ".mac")
        ip = _address(host.get("ip"), field + ".ip", network)
        if ip == gateway:
            raise FabricError("%s is the network's own (gateway) address" % ip, field=field + ".ip")
        name = host.get("name") or None
        entry = {"mac": mac, "ip": str(ip), "name": None if name is None else check_host_name(name, field + ".name")}
        for key in ("mac", "ip", "name"):
            if entry[key] is None:
                continue
            if entry[key] in seen[key]:
                raise FabricError("%s %s is also given by hosts[%d]" % (key, entry[key], seen[key][entry[key]]),
                                  field="%s.%s" % (field, key))
            seen[key][entry[key]] = index
        result.append(entry)
    return sorted(result, key=lambda entry: entry["mac"])


def normalise(params):
    name = params.get("name")
    if not name or not NAME_RE.match(str(name)):
        raise FabricError("%r is not a valid network name (letters, digits, '-', '_', '.')" % (name,), field="name")
    mode = params.get("mode") or "nat"
    if mode not in MODES:
        raise FabricError("must be one of %s" % ", ".join(MODES), field="mode")
    bridge = params.get("bridge") or None
    if bridge and not BRIDGE_RE.match(str(bridge)):
        raise FabricError("%r is not a valid bridge name: letters, digits, '_', '.' or '-', starting with a letter or "
                          "digit, for example br-vm" % (bridge,), field="bridge")
    if bridge and len(bridge) > BRIDGE_NAME_MAX:
        raise FabricError("'%s' is longer than %d characters, the limit for Linux interface names"
                          % (bridge, BRIDGE_NAME_MAX), field="bridge")
    domain = params.get("domain") or None
    check_domain(domain, "domain")  # validated, kept as written (libvirt shows it back that way)
    spec = {"mode": mode, "bridge": bridge, "domain": domain,
            "address": None, "prefix": None, "dhcp_range": None, "hosts": []}
    if mode == "bridge":
        if not bridge:
            raise FabricError("is required in bridge mode: the existing host bridge VMs attach to", field="bridge")
        for key in ("cidr", "dhcp_range", "hosts"):
            if params.get(key):
                raise FabricError("is not used in bridge mode: the site's own DHCP/DNS serves that "
                                  "network; drop it or use mode nat, route or isolated", field=key)
        return spec
    if not params.get("cidr"):
        raise FabricError("is required (for example 10.20.0.0/24) unless mode is bridge", field="cidr")
    try:
        network = ipaddress.ip_network(params["cidr"], strict=True)
    except ValueError as exc:
        raise FabricError("'%s' is not a network address with a prefix (%s)" % (params["cidr"], exc), field="cidr")
    if network.version == 4 and network.prefixlen > 30:
        raise FabricError("%s leaves no room for VMs; use a prefix of /30 or shorter" % network, field="cidr")
    gateway = _address(params["gateway"], "gateway", network) if params.get("gateway") else network.network_address + 1
    spec.update(address=str(gateway), prefix=network.prefixlen)
    dhcp = params.get("dhcp_range")
    if dhcp:
        start = _address(dhcp.get("start"), "dhcp_range.start", network)
        end = _address(dhcp.get("end"), "dhcp_range.end", network)
        if start > end:
            raise FabricError("start %s is after end %s" % (start, end), field="dhcp_range")
        if start <= gateway <= end:
            raise FabricError("the range %s-%s holds the gateway %s; move it" % (start, end, gateway), field="dhcp_range")
        spec["dhcp_range"] = {"start": str(start), "end": str(end)}
    spec["hosts"] = None if params.get("hosts") is None else normalise_hosts(params["hosts"], network, gateway)
    if spec["hosts"] and network.version == 6:
        raise FabricError("DHCP reservations here are IPv4 only", field="hosts")
    return spec


def host_xml(host):
    elem = ET.Element("host", {"mac": host["mac"], "ip": host["ip"]})
    if host.get("name"):
        elem.set("name", host["name"])
    return ET.tostring(elem, encoding="unicode")


def to_xml(name, spec, uuid=None):
    net = ET.Element("network")
    ET.SubElement(net, "name").text = name
    if uuid:
        ET.SubElement(net, "uuid").text = uuid
    if spec["mode"] != "isolated":
        ET.SubElement(net, "forward", mode=spec["mode"])
    if spec["bridge"]:
        attrs = {"name": spec["bridge"]}
        if spec["mode"] != "bridge":
            attrs.update(stp="on", delay="0")
        ET.SubElement(net, "bridge", attrs)
    if spec["domain"]:
        ET.SubElement(net, "domain", name=spec["domain"], localOnly="yes")
    if spec["address"]:
        ip = ET.SubElement(net, "ip", address=spec["address"], prefix=str(spec["prefix"]))
        if spec["dhcp_range"] or spec["hosts"]:  # hosts None: none yet on a new network
            dhcp = ET.SubElement(ip, "dhcp")
            if spec["dhcp_range"]:
                ET.SubElement(dhcp, "range", start=spec["dhcp_range"]["start"], end=spec["dhcp_range"]["end"])
            for host in spec["hosts"] or []:
                dhcp.append(ET.fromstring(host_xml(host)))
    return ET.tostring(net, encoding="unicode")


def _prefix(ip):
    if ip.get("prefix"):
        return int(ip.get("prefix"))
    if ip.get("netmask"):
        return ipaddress.ip_network("0.0.0.0/%s" % ip.get("netmask")).prefixlen
    return None


def from_xml(xml):
    root = ET.fromstring(xml)
    forward = root.find("forward")
    mode = forward.get("mode", "nat") if forward is not None else "isolated"
    bridge = root.find("bridge")
    domain = root.find("domain")
    spec = {"mode": mode, "bridge": bridge.get("name") if bridge is not None else None,
            "domain": domain.get("name") if domain is not None else None,
            "address": None, "prefix": None, "dhcp_range": None, "hosts": []}
    ip = root.find("ip")
    if ip is not None:
        spec["address"], spec["prefix"] = ip.get("address"), _prefix(ip)
        dhcp_range = ip.find("dhcp/range")
        if dhcp_range is not None:
            spec["dhcp_range"] = {"start": dhcp_range.get("start"), "end": dhcp_range.get("end")}
        hosts = [{"mac": (host.get("mac") or "").lower(), "ip": host.get("ip"), "name": host.get("name")}
                 for host in ip.findall("dhcp/host")]
        spec["hosts"] = sorted(hosts, key=lambda entry: entry["mac"])
    return spec
