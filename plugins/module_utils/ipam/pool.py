# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Address pools: validating names and definitions, the :class:`Pool` model (which addresses it may
hand out), derived MACs, and the per-owner requests of one call."""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
import json
import re
import socket

from ansible_collections.skygrid.fabric.plugins.module_utils.dns_names import LABEL_RE, check_domain
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

DEFAULT_MAC_PREFIX = "52:54:00"
# Without a ``range``, an IPv6 pool hands out <network>::1 to <network>::ffff: a bounded range,
# so that size, usage and "full" mean something (a /64 has 2**64 addresses).
IPV6_DEFAULT_RANGE_SIZE = 0xFFFF

STATES = ("present", "absent")
POOL_KEYS = ("cidr", "range", "gateway", "reserved", "dns_domain", "mac_prefix")

# \Z, not $: '$' also matches before a trailing newline, which would reach a dnsmasq dhcp-host line.
POOL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
MAC_OCTET_RE = re.compile(r"^[0-9A-Fa-f]{2}\Z")


# --------------------------------------------------------------------------------------------------
# Validation of names and pool definitions


def check_owner(owner, field="owner"):
    """An owner is a VM name that becomes its host name: one RFC 1123 label. Returns it in lower
    case (host names compare case-insensitively, so ``WN1`` and ``wn1`` are the same owner)."""
    if not isinstance(owner, str) or not owner:
        raise FabricError("an owner (the VM name) is required", field=field)
    if not LABEL_RE.match(owner):  # RFC 1123: one label
        raise FabricError("'%s' is not a valid host name: use 1-63 letters, digits and hyphens, not starting "
                          "or ending with a hyphen (RFC 1123), for example 'wn042-atlas-1'" % owner, field=field)
    return owner.lower()


def check_pool_name(name, field="pool"):
    if not isinstance(name, str) or not POOL_NAME_RE.match(name):
        raise FabricError("'%s' is not a valid pool name: use 1-63 letters, digits, '_', '.' or '-', starting "
                          "with a letter or digit" % (name,), field=field)
    return name


def check_mac_prefix(prefix, field):
    """1 to 5 octets, locally administered (bit 0x02 of the first octet set) and unicast (bit 0x01 clear)."""
    if prefix is None:
        prefix = DEFAULT_MAC_PREFIX
    if not isinstance(prefix, str):
        raise FabricError("must be a string of 1-5 hex octets such as '52:54:00'", field=field)
    octets = prefix.replace("-", ":").split(":")
    if not 1 <= len(octets) <= 5 or not all(MAC_OCTET_RE.match(o) for o in octets):
        raise FabricError("'%s' is not a MAC prefix: give 1-5 hex octets separated by ':', for example "
                          "'52:54:00'" % prefix, field=field)
    first = int(octets[0], 16)
    if first & 0x01:
        raise FabricError("'%s' is a multicast prefix (bit 0x01 of the first octet is set); use a unicast "
                          "prefix such as '52:54:00'" % prefix, field=field)
    if not first & 0x02:
        raise FabricError("'%s' is not locally administered (bit 0x02 of the first octet is clear), so it "
                          "could clash with real hardware; use a prefix such as '52:54:00' or '02:...'"
                          % prefix, field=field)
    return ":".join(o.lower() for o in octets)


class Pool:
    """A validated pool definition: the addresses it may hand out are ``first``..``last`` (ints),
    less the gateway and the reserved addresses."""

    def __init__(self, name, definition, field=None):
        field = field or "pools.%s" % name
        self.name = check_pool_name(name, field="pools")
        if not isinstance(definition, dict):
            raise FabricError("a pool definition is a dict with at least 'cidr'", field=field)
        unknown = sorted(set(definition) - set(POOL_KEYS))
        if unknown:
            raise FabricError("unknown key(s) %s; a pool takes %s" % (", ".join(unknown), ", ".join(POOL_KEYS)),
                              field=field)
        self.network = self._network(definition.get("cidr"), field + ".cidr")
        self.version = self.network.version
        self._address_class = ipaddress.IPv4Address if self.version == 4 else ipaddress.IPv6Address
        self.family = socket.AF_INET if self.version == 4 else socket.AF_INET6
        net_first = int(self.network.network_address)
        net_last = int(self.network.broadcast_address)
        self.net_first, self.net_last = net_first, net_last
        # Addresses no host may have: IPv4 network and broadcast (except /31, /32), IPv6 subnet-router anycast.
        self._special = set()
        if self.version == 4 and self.network.prefixlen < 31:
            self._special = {net_first, net_last}
        elif self.version == 6 and self.network.prefixlen < 127:
            self._special = {net_first}
        self.first, self.last = self._range(definition.get("range"), field + ".range")
        self.gateway = None
        if definition.get("gateway") not in (None, ""):
            self.gateway = self._address(definition["gateway"], field + ".gateway", what="gateway")
        self.reserved = self._reserved(definition.get("reserved"), field + ".reserved")
        self.dns_domain = check_domain(definition.get("dns_domain"), field + ".dns_domain")
        self.mac_prefix = check_mac_prefix(definition.get("mac_prefix"), field + ".mac_prefix")
        # Addresses inside first..last that are never handed out, as merged sorted intervals.
        excluded = list(self.reserved)
        if self.gateway is not None:
            excluded.append((self.gateway, self.gateway))
        self._excluded = _merge(excluded, self.first, self.last)
        self._excluded_starts = [interval[0] for interval in self._excluded]
        self.size = (self.last - self.first + 1) - sum(end - start + 1 for start, end in self._excluded)
        if self.size <= 0:
            raise FabricError("pool '%s' has no address to hand out: its range %s is all gateway and reserved "
                              "addresses; widen the range or reserve less" % (name, self.range_text()),
                              field=field)

    # -- parsing helpers
    def _network(self, cidr, field):
        if not isinstance(cidr, str) or not cidr:
            raise FabricError("a pool needs 'cidr', the subnet in CIDR notation, for example '10.20.0.0/24' or "
                              "'fd00:20::/64'", field=field)
        if "/" not in cidr:
            raise FabricError("'%s' has no prefix length; write it as a subnet such as '10.20.0.0/24'" % cidr,
                              field=field)
        try:
            return ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            try:
                suggestion = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise FabricError("'%s' is not a valid subnet (%s); write it in CIDR notation such as "
                                  "'10.20.0.0/24'" % (cidr, exc), field=field)
            raise FabricError("'%s' has host bits set; the subnet is '%s'" % (cidr, suggestion), field=field)

    def _address(self, value, field, what="address", special_ok=False):
        try:
            address = ipaddress.ip_address(str(value).strip())
        except ValueError:
            raise FabricError("'%s' is not an IP address" % (value,), field=field)
        if address.version != self.version or address not in self.network:
            raise FabricError("%s %s is not in the pool's subnet %s" % (what, address, self.network), field=field)
        number = int(address)
        if number in self._special and not special_ok:
            raise FabricError("%s %s is the %s address of %s and cannot be a host's"
                              % (what, address, self._special_name(number), self.network), field=field)
        return number

    def _special_name(self, number):
        if number == self.net_first:
            return "network" if self.version == 4 else "subnet-router anycast"
        return "broadcast"

    def _range(self, value, field):
        if value in (None, {}):
            first = min(self.net_first + 1, self.net_last) if self._special else self.net_first
            last = self.net_last - 1 if self.version == 4 and self._special else self.net_last
            if self.version == 6:
                last = min(last, self.net_first + IPV6_DEFAULT_RANGE_SIZE)
            return first, last
        if not isinstance(value, dict) or set(value) - {"start", "end"} or not value.get("start") or not value.get("end"):
            raise FabricError("a range is a dict with 'start' and 'end' addresses inside the pool's subnet, for "
                              "example {start: 10.20.0.10, end: 10.20.0.250}", field=field)
        start = self._address(value["start"], field + ".start", what="range start")
        end = self._address(value["end"], field + ".end", what="range end")
        if start > end:
            raise FabricError("start %s is after end %s; swap them" % (self.text(start), self.text(end)), field=field)
        return start, end

    def _reserved(self, value, field):
        if value in (None, ""):
            return []
        if not isinstance(value, list):
            raise FabricError("a list of addresses, 'first-last' ranges or subnets", field=field)
        intervals = []
        for index, item in enumerate(value):
            item_field = "%s[%d]" % (field, index)
            text = str(item).strip()
            if "-" in text:
                low, high = (part.strip() for part in text.split("-", 1))
                start = self._address(low, item_field, what="reserved address", special_ok=True)
                end = self._address(high, item_field, what="reserved address", special_ok=True)
                if start > end:
                    raise FabricError("range '%s' ends before it starts" % text, field=item_field)
            elif "/" in text:
                try:
                    subnet = ipaddress.ip_network(text, strict=False)
                except ValueError:
                    raise FabricError("'%s' is not an address, range or subnet" % text, field=item_field)
                if subnet.version != self.version or not subnet.subnet_of(self.network):
                    raise FabricError("subnet %s is not inside the pool's subnet %s" % (subnet, self.network),
                                      field=item_field)
                start, end = int(subnet.network_address), int(subnet.broadcast_address)
            else:
                start = end = self._address(text, item_field, what="reserved address", special_ok=True)
            intervals.append((start, end))
        return intervals

    # -- queries
    def text(self, number):
        return str(self._address_class(number))

    def number(self, text):
        """The integer of an address string, or None when it is not of this pool's IP version."""
        try:
            return int.from_bytes(socket.inet_pton(self.family, text), "big")
        except (OSError, ValueError):
            return None

    def stored_number(self, ip, key):
        """The integer of a stored lease's address (from its key), or None when it is of the other IP version."""
        return int(key, 16) if (":" in ip) == (self.version == 6) else None

    def fingerprint(self):
        """Identifies what the lowest-free search depends on: the range and the excluded addresses."""
        return hashlib.sha256(json.dumps([self.version, self.first, self.last, self._excluded]).encode()).hexdigest()

    def range_text(self):
        return "%s-%s" % (self.text(self.first), self.text(self.last))

    def excluded_intervals(self):
        """The gateway and reserved addresses inside the range, as merged (first, last) intervals."""
        return list(self._excluded)

    def allocatable(self, number):
        """Whether the pool may hand out this address (in the range, not the gateway, not reserved)."""
        return number is not None and self.first <= number <= self.last and self.excluded_end(number) is None

    def excluded_end(self, number):
        """If ``number`` is the gateway or reserved, the last address of that excluded interval."""
        index = bisect.bisect_right(self._excluded_starts, number) - 1
        if index >= 0 and self._excluded[index][1] >= number:
            return self._excluded[index][1]
        return None

    def problems(self, number, mac):
        """Why a lease no longer fits this definition (empty when it does)."""
        reasons = []
        if number is None or not self.net_first <= number <= self.net_last:
            reasons.append("outside the subnet %s" % self.network)
        elif number in self._special:
            reasons.append("the %s address of %s" % (self._special_name(number), self.network))
        elif not self.first <= number <= self.last:
            reasons.append("outside the range %s" % self.range_text())
        elif number == self.gateway:
            reasons.append("the gateway")
        elif self.excluded_end(number) is not None:
            reasons.append("a reserved address")
        if not mac.startswith(self.mac_prefix + ":"):
            reasons.append("MAC %s is not under the prefix %s" % (mac, self.mac_prefix))
        return reasons

    def fqdn(self, owner):
        return "%s.%s" % (owner, self.dns_domain) if self.dns_domain else owner

    def definition(self):
        """The canonical definition (what is stored and compared)."""
        result = {"cidr": str(self.network), "range": {"start": self.text(self.first), "end": self.text(self.last)},
                  "mac_prefix": self.mac_prefix}
        if self.gateway is not None:
            result["gateway"] = self.text(self.gateway)
        if self.reserved:
            result["reserved"] = ["%s-%s" % (self.text(s), self.text(e)) if s != e else self.text(s)
                                  for s, e in self.reserved]
        if self.dns_domain:
            result["dns_domain"] = self.dns_domain
        return result


def _merge(intervals, low, high):
    """Clip intervals to low..high and merge overlapping or adjacent ones."""
    clipped = sorted((max(s, low), min(e, high)) for s, e in intervals if e >= low and s <= high)
    merged = []
    for start, end in clipped:
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def parse_pools(definitions):
    """Validate the ``pools`` option: {name: definition} -> {name: Pool}."""
    if definitions in (None, ""):
        return {}
    if not isinstance(definitions, dict):
        raise FabricError("a dict of pool name -> definition (cidr, range, gateway, reserved, dns_domain, "
                          "mac_prefix)", field="pools")
    return {name: Pool(name, definition) for name, definition in definitions.items()}


def ipkey(number):
    return "%032x" % number


def derive_mac(prefix, pool, owner, attempt=0):
    """The MAC of (pool, owner): the prefix followed by bytes of a SHA-256 of the pair. ``attempt``
    > 0 gives the next candidate when the first is taken."""
    octets = prefix.split(":")
    digest = hashlib.sha256(("%s\x00%s\x00%d" % (pool, owner, attempt)).encode("utf-8")).digest()
    return ":".join(octets + ["%02x" % b for b in digest[:6 - len(octets)]])


# --------------------------------------------------------------------------------------------------
# Requests (one owner, or the ``leases`` list)


def build_requests(pool=None, owner=None, state="present", leases=None):
    """The per-owner requests of one call, validated, in order: a list of dicts with pool, owner,
    state and field (the option path to name in errors)."""
    state = state or "present"
    if state not in STATES:
        raise FabricError("must be one of %s" % ", ".join(STATES), field="state")
    raw = []
    if leases:
        if owner:
            raise FabricError("give either 'owner' or 'leases', not both", field="owner")
        for index, item in enumerate(leases):
            field = "leases[%d]" % index
            if not isinstance(item, dict):
                raise FabricError("each item is a dict with 'owner' (and optionally 'pool', 'state')", field=field)
            unknown = sorted(set(item) - {"owner", "pool", "state"})
            if unknown:
                raise FabricError("unknown key(s) %s; an item takes owner, pool and state" % ", ".join(unknown),
                                  field=field)
            raw.append((item.get("pool") or pool, item.get("owner"), item.get("state") or state, field))
    elif owner:
        raw.append((pool, owner, state, ""))
    requests, seen = [], {}
    for pool_name, owner_name, item_state, field in raw:
        prefix = field + "." if field else ""
        if not pool_name:
            raise FabricError("no pool: give 'pool' (for all items) or a 'pool' per item", field=prefix + "pool")
        check_pool_name(pool_name, field=prefix + "pool")
        name = check_owner(owner_name, field=prefix + "owner")
        if item_state not in STATES:
            raise FabricError("must be one of %s" % ", ".join(STATES), field=prefix + "state")
        key = (pool_name, name)
        if key in seen:
            raise FabricError("owner '%s' in pool '%s' is already listed at %s; list each owner once"
                              % (name, pool_name, seen[key] or "owner"), field=prefix + "owner")
        seen[key] = field
        requests.append({"pool": pool_name, "owner": name, "state": item_state, "field": prefix + "owner"})
    return requests
