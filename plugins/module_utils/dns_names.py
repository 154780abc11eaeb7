# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host names and DNS domains, checked once for every place they end up in a file or a command line
(dnsmasq ``dhcp-host`` lines, libvirt network XML, ``scontrol``/``qmgr`` arguments). ``\\Z``, never ``$``:
``$`` also matches before a trailing newline, which would carry a second line into those files."""

from __future__ import annotations

import re

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

LABEL_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def is_dns_name(text):
    """Dot-separated labels of 1-63 letters, digits and hyphens, at most 253 characters (a trailing dot allowed)."""
    if not isinstance(text, str):
        return False
    text = text[:-1] if text.endswith(".") else text
    return 0 < len(text) <= 253 and all(LABEL_RE.match(label) for label in text.split("."))


def check_domain(domain, field):
    """A DNS domain, lower-cased without its trailing dot; None for none."""
    if domain is None or domain == "":
        return None
    if not isinstance(domain, str) or len(domain.rstrip(".")) > 240 or not is_dns_name(domain):
        raise FabricError("%r is not a valid DNS domain: dot-separated labels of 1-63 letters, digits and "
                          "hyphens, for example 'vm.example.org'" % (domain,), field=field)
    return domain.rstrip(".").lower()


def check_host_name(name, field):
    """A host name (one label or a dotted name): what DHCP and DNS hand out."""
    if not is_dns_name(name):
        raise FabricError("%r is not a valid host name: letters, digits and hyphens, dot-separated labels of at "
                          "most 63 characters (no spaces, commas or newlines)" % (name,), field=field)
    return name
