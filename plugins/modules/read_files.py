#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: read_files
short_description: Read several small files of a host in one call (keys, configuration), base64-encoded
version_added: "0.4.0"
description:
  - Reads every file of O(paths) in one module run and returns their contents base64-encoded, as
    M(ansible.builtin.slurp) does for one file. A loop of C(slurp) costs a module run per file; the
    contextualisation of a host's VMs reads a slurm.conf and a munge key per VO from the batch server,
    on every converge.
  - Reads only; never changes anything.
  - Contents may be secrets (munge keys) - run it with C(no_log) whenever a path may hold one.
author:
  - skygrid.fabric contributors (@skygrid)
attributes:
  check_mode:
    support: full
    description: Reads only, in check mode too.
  diff_mode:
    support: none
    description: Reads only.
options:
  paths:
    description: The files to read (at most 1 MiB each).
    type: list
    elements: path
    required: true
  missing_ok:
    description: A missing file is returned with C(exists=false) instead of failing.
    type: bool
    default: false
seealso:
  - module: ansible.builtin.slurp
"""

EXAMPLES = r"""
- name: Read each VO cluster's slurm.conf and munge key on the batch server
  skygrid.fabric.read_files:
    paths:
      - /etc/slurm/vo/atlas/slurm.conf
      - /etc/munge/vo/atlas.key
    missing_ok: true
  delegate_to: batch.example.org
  register: vo_files
  no_log: true  # a munge key

- name: Use one
  ansible.builtin.debug:
    msg: "{{ vo_files.files['/etc/slurm/vo/atlas/slurm.conf'].content | b64decode }}"
"""

RETURN = r"""
files:
  description: Each path read, in the order given.
  returned: always
  type: dict
  contains:
    exists:
      description: Whether the file exists.
      type: bool
    content:
      description: Its content, base64-encoded (empty when it does not exist).
      type: str
  sample: {"/etc/slurm/vo/atlas/slurm.conf": {"exists": true, "content": "Q2x1c3Rlck5hbWU9YXRsYXMK"}}
"""

from ansible_collections.skygrid.fabric.plugins.module_utils import host_files
from ansible_collections.skygrid.fabric.plugins.module_utils.module_base import FabricModule


class ReadFilesModule(FabricModule):
    supports_check_mode = True  # reads only
    argument_spec = dict(
        paths=dict(type="list", elements="path", required=True),
        missing_ok=dict(type="bool", default=False),
    )

    def run(self):
        return {"files": host_files.read(self.params["paths"], missing_ok=self.params["missing_ok"])}


def main():
    ReadFilesModule().execute()


if __name__ == "__main__":
    main()
