# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # The connection every libvirt module of the collection takes.
    DOCUMENTATION = r"""
options:
  uri:
    description: libvirt connection URI of the hypervisor.
    type: str
    default: qemu:///system
requirements:
  - libvirt-python (or the distribution's python3-libvirt) on the hypervisor
"""
