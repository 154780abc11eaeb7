# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: vm_table
short_description: A table of VMs with their provenance, address and batch state
version_added: "0.1.0"
description:
  - One line per VM - name, VO, trust class, image id, the start of the image's sha512, endorser,
    address and batch state - under a header line, for a C(debug) task to print.
author:
  - skygrid.fabric contributors (@skygrid)
options:
  _input:
    description: VMs as M(skygrid.fabric.vm_info) returns them.
    type: list
    elements: dict
    required: true
  batch:
    description: C({vm name - batch state}), for example from M(skygrid.fabric.batch_node) results.
    type: dict
"""

EXAMPLES = r"""
- name: Show what runs here
  ansible.builtin.debug:
    msg: "{{ info.vms | skygrid.fabric.vm_table }}"
"""

RETURN = r"""
_value:
  description: The lines of the table.
  type: list
  elements: str
"""

COLUMNS = ("%-20s", "%-6s", "%-6s", "%-28s", "%-13s", "%-56s", "%-16s", "%s")
HEADER = ("VM", "VO", "class", "image id", "sha512", "endorser", "IP", "batch")


def vm_table(vms, batch=None):
    fmt = " ".join(COLUMNS)
    lines = [fmt % HEADER]
    for vm in vms:
        meta = vm.get("metadata") or {}
        lines.append(fmt % (vm.get("name"), meta.get("vo", "-"), meta.get("trust_class", "-"), meta.get("image_id", "-"),
                            (meta.get("image_sha512") or "-")[:12], meta.get("endorser_dn", "-"),
                            ",".join(vm.get("addresses") or []) or "-", (batch or {}).get(vm.get("name"), "-")))
    return lines


class FilterModule:
    def filters(self):
        return {"vm_table": vm_table}
