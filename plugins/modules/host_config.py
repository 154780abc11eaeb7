#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: host_config
short_description: A hypervisor host's settings, files, kernel tunables and device nodes in one pass
version_added: "0.2.0"
description:
  - Converges the host-level configuration of a VM host in one module call - C(key = value) lines in
    config files such as libvirt's C(qemu.conf) (the rest of each file is left alone), whole files,
    runtime kernel tunables under C(/sys) or C(/proc/sys), and the group and mode of device nodes
    such as C(/dev/kvm).
  - One call instead of a task per line keeps a converge that changes nothing cheap, which matters when
    a CI pipeline converges hundreds of worker nodes.
  - Files are written atomically (a temporary file beside the target, then a rename), keeping the old
    owner; a kill leaves either the old or the new file.
author:
  - skygrid.fabric contributors (@skygrid)
options:
  settings:
    description:
      - C(key = value) lines to set. The last line setting a key, or a commented-out C(#key =) line, is
        replaced; a key not in the file is appended. A missing file is created.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: The config file.
        type: path
        required: true
      values:
        description: Setting name to its value, written as given (quote strings yourself, as libvirt wants).
        type: dict
        required: true
      mode:
        description: The file's mode, quoted octal such as V('0600').
        type: str
  files:
    description: Files with exactly this content.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: The file.
        type: path
        required: true
      content:
        description: The whole content.
        type: str
        required: true
      mode:
        description: The file's mode, quoted octal.
        type: str
        default: "0644"
      parents:
        description: Create a missing parent directory (mode 0755).
        type: bool
        default: true
  kernel:
    description:
      - Runtime kernel tunables, path to value, for example C(/sys/kernel/mm/ksm/run). Written only when
        they differ; they do not survive a reboot by themselves (persist them with O(files), for example a
        C(tmpfiles.d) entry). A path that does not exist is an error (the kernel lacks the feature).
    type: dict
    default: {}
  devices:
    description: Device nodes whose group and mode to set, as a udev rule would where udev does not run.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: The device node.
        type: path
        required: true
      group:
        description: Its group.
        type: str
      mode:
        description: Its mode, quoted octal.
        type: str
      missing_ok:
        description: Skip a node that does not exist (for example C(/dev/kvm) on a host without KVM).
        type: bool
        default: true
  commands:
    description:
      - Commands run in order after everything above is written, to put it to work (start a daemon, apply
        firewall rules). Not run in check mode. One that exits non-zero fails the task with its output.
    type: list
    elements: dict
    default: []
    suboptions:
      argv:
        description: The program and its arguments (no shell).
        type: list
        elements: str
        required: true
      environment:
        description: Environment variables to add for it.
        type: dict
        default: {}
      changed_regex:
        description:
          - A regular expression searched in its standard output (multi-line); a match makes it a change.
            Without one, running the command is not a change.
        type: str
attributes:
  check_mode:
    support: full
    description: Reports what would change and changes nothing.
  diff_mode:
    support: full
    description: Before and after of every setting, file, tunable and device changed.
seealso:
  - module: skygrid.fabric.hypervisor_info
"""

EXAMPLES = r"""
- name: Run QEMU unprivileged, keep /dev/kvm usable and KSM on, in one pass
  skygrid.fabric.host_config:
    settings:
      - path: /etc/libvirt/qemu.conf
        mode: "0600"
        values: {user: '"libvirt-qemu"', group: '"libvirt-qemu"', dynamic_ownership: "1"}
    devices:
      - {path: /dev/kvm, group: kvm, mode: "0660"}
    kernel:
      /sys/kernel/mm/ksm/run: "1"
    files:
      - path: /etc/tmpfiles.d/skygrid-ksm.conf
        content: "w /sys/kernel/mm/ksm/run - - - - 1\n"

- name: Write the firewall rules and apply them in the same run
  skygrid.fabric.host_config:
    files:
      - path: /etc/skygrid/vm-isolation.rules
        content: "{{ lookup('ansible.builtin.template', 'vm-isolation.rules.j2') }}"
    commands:
      - argv: [/usr/local/sbin/skygrid-vm-isolation]
        changed_regex: "^changed$"
"""

RETURN = r"""
config_changed:
  description: Whether a setting, file, kernel tunable or device changed (or would), the commands aside.
  returned: always
  type: bool
commands:
  description: Each command's outcome, in order (in check mode none ran).
  returned: always
  type: list
  elements: dict
  contains:
    argv:
      description: The command.
      type: list
      elements: str
    ran:
      description: Whether it ran.
      type: bool
    rc:
      description: Its exit status.
      type: int
      returned: when it ran
    changed:
      description: Whether its output matched O(commands[].changed_regex).
      type: bool
    stdout_lines:
      description: Its standard output, line by line.
      type: list
      elements: str
actions:
  description: What was changed (or would be, in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: ["set user, group in /etc/libvirt/qemu.conf", "set the group of /dev/kvm to kvm"]
"""

from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt import host_config
from ansible_collections.skygrid.fabric.plugins.module_utils.module_base import FabricModule


class HostConfigModule(FabricModule):
    supports_check_mode = True
    argument_spec = dict(
        settings=dict(type="list", elements="dict", default=[], options=dict(
            path=dict(type="path", required=True),
            values=dict(type="dict", required=True),
            mode=dict(type="str"),
        )),
        files=dict(type="list", elements="dict", default=[], options=dict(
            path=dict(type="path", required=True),
            content=dict(type="str", required=True),
            mode=dict(type="str", default="0644"),
            parents=dict(type="bool", default=True),
        )),
        kernel=dict(type="dict", default={}),
        devices=dict(type="list", elements="dict", default=[], options=dict(
            path=dict(type="path", required=True),
            group=dict(type="str"),
            mode=dict(type="str"),
            missing_ok=dict(type="bool", default=True),
        )),
        commands=dict(type="list", elements="dict", default=[], options=dict(
            argv=dict(type="list", elements="str", required=True),
            environment=dict(type="dict", default={}),
            changed_regex=dict(type="str"),
        )),
    )

    def run(self):
        host_config.converge(self.reconciler, settings=self.params["settings"], files=self.params["files"],
                             kernel=self.params["kernel"], devices=self.params["devices"])
        config_changed = self.reconciler.changed
        commands = host_config.run_commands(self.reconciler, self.params["commands"])
        return {"config_changed": config_changed, "commands": commands}


def main():
    HostConfigModule().execute()


if __name__ == "__main__":
    main()
