#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vm
short_description: Declarative libvirt VMs for VO workloads on grid worker nodes
version_added: "0.1.0"
description:
  - Creates, updates, starts, pauses, shuts down and removes libvirt/QEMU virtual machines from a
    declarative spec (not raw XML) - vCPUs, memory, copy-on-write overlay disks on staged VO base
    images, NICs with anti-spoofing filters, a cloud-init NoCloud seed, and provenance metadata.
  - A changed spec updates the persistent definition in place (UUID and MAC addresses are kept) and
    reports O(ignore:restart_required) when the running VM does not have it yet.
  - O(vms) manages many VMs in one call; the top-level options are the defaults of every item.
  - Before any change, every VM in the call is checked against the host (sizes, pools, base volumes,
    networks), so a mistake in one item changes nothing.
author:
  - skygrid.fabric contributors (@skygrid)
requirements:
  - genisoimage, mkisofs or xorriso on the hypervisor when O(cloud_init) is used
extends_documentation_fragment:
  - skygrid.fabric.libvirt
attributes:
  check_mode:
    support: full
    description:
      - Reports what would be defined, created, started or removed, and changes nothing.
      - A pool, network or staged image that does not exist yet (a new node, where earlier tasks of the run
        create them) is planned on with a warning; without check mode each is an error.
  diff_mode:
    support: full
    description: Shows each VM's spec before and after, keyed by VM name.
options:
  name:
    description:
      - Name of the VM (also its hostname and the prefix of its volumes).
      - 1-63 letters, digits, C(-), C(_) or C(.), starting and ending with a letter or digit.
      - Required unless O(vms) is given.
    type: str
  vms:
    description:
      - Several VMs in one call. Each item takes the same keys as the top-level VM options
        (O(name) required); a key an item leaves out takes the top-level value.
      - An item's O(vms[].cloud_init.user_data) is masked in the output like the top-level one.
    type: list
    elements: dict
    suboptions:
      name:
        description: As the top-level O(name); required in every item.
        type: str
      state:
        description: As the top-level O(state).
        type: str
        choices: [present, running, paused, shutdown, absent]
      vcpus:
        description: As the top-level O(vcpus).
        type: int
      memory_mb:
        description: As the top-level O(memory_mb).
        type: int
      virt_type:
        description: As the top-level O(virt_type).
        type: str
        choices: [auto, kvm, qemu]
      cpu_mode:
        description: As the top-level O(cpu_mode).
        type: str
      machine:
        description: As the top-level O(machine).
        type: str
      default_pool:
        description: As the top-level O(default_pool).
        type: str
      disks:
        description: As the top-level O(disks).
        type: list
        elements: dict
        suboptions:
          pool:
            description: As O(disks[].pool).
            type: str
          base_volume:
            description: As O(disks[].base_volume).
            type: str
          volume:
            description: As O(disks[].volume).
            type: str
          size_gb:
            description: As O(disks[].size_gb).
            type: int
          format:
            description: As O(disks[].format).
            type: str
            choices: [qcow2, raw]
          readonly:
            description: As O(disks[].readonly).
            type: bool
            default: false
      nics:
        description: As the top-level O(nics).
        type: list
        elements: dict
        suboptions:
          network:
            description: As O(nics[].network).
            type: str
          bridge:
            description: As O(nics[].bridge).
            type: str
          user:
            description: As O(nics[].user).
            type: bool
            default: false
          mac:
            description: As O(nics[].mac).
            type: str
          ip:
            description: As O(nics[].ip).
            type: str
          filter:
            description: As O(nics[].filter).
            type: str
          model:
            description: As O(nics[].model).
            type: str
            default: virtio
      allow_address_spoofing:
        description: As the top-level O(allow_address_spoofing).
        type: bool
      cloud_init:
        description: As the top-level O(cloud_init).
        type: dict
        suboptions:
          user_data:
            description: As O(cloud_init.user_data); never shown in the module's output.
            type: raw
          meta_data:
            description: As O(cloud_init.meta_data).
            type: raw
          network_config:
            description: As O(cloud_init.network_config).
            type: raw
      seed_pool:
        description: As the top-level O(seed_pool).
        type: str
      kernel:
        description: As the top-level O(kernel).
        type: str
      initrd:
        description: As the top-level O(initrd).
        type: str
      cmdline:
        description: As the top-level O(cmdline).
        type: str
      metadata:
        description: As the top-level O(metadata).
        type: dict
      autostart:
        description: As the top-level O(autostart).
        type: bool
      console_log:
        description: As the top-level O(console_log).
        type: str
      shutdown_timeout:
        description: As the top-level O(shutdown_timeout).
        type: int
      force:
        description: As the top-level O(force).
        type: bool
  state:
    description:
      - V(present) defines the VM and leaves its run state alone.
      - V(running) defines and starts it (resumes a paused VM).
      - V(paused) defines and starts it paused, or pauses a running one.
      - V(shutdown) asks the guest to power off (ACPI) and waits up to O(shutdown_timeout); then,
        with O(force=true), powers it off, otherwise fails.
      - V(absent) powers the VM off, undefines it and deletes the overlay disks and seed volume this
        module created for it (never a base image, never a volume attached with O(disks[].volume)).
        Succeeds when the VM is already gone, and removes such volumes left by an interrupted run.
    type: str
    choices: [present, running, paused, shutdown, absent]
    default: present
  vcpus:
    description: Number of virtual CPUs; at most the host's logical CPUs.
    type: int
    default: 1
  memory_mb:
    description: Memory in MiB; at least 32 and at most the host's memory.
    type: int
    default: 1024
  virt_type:
    description:
      - V(kvm) for hardware virtualisation, V(qemu) for software emulation (TCG).
      - V(auto) takes kvm when libvirt offers it and, on a local host, the CPU has VT-x/AMD-V.
    type: str
    choices: [auto, kvm, qemu]
    default: auto
  cpu_mode:
    description: libvirt CPU mode (for example C(host-passthrough)); defaults to host-passthrough for kvm and none for qemu.
    type: str
  machine:
    description: QEMU machine type; C(pc) matches any C(pc-i440fx-*) expansion libvirt makes.
    type: str
    default: pc
  default_pool:
    description: Storage pool for disks that name no O(disks[].pool).
    type: str
    default: default
  disks:
    description:
      - Disks in order (vda, vdb, ...). Give O(disks[].base_volume) for a copy-on-write qcow2
        overlay on a staged image, O(disks[].size_gb) for an empty disk, or O(disks[].volume) to
        attach an existing volume.
      - Overlays and empty disks are named C(<name>-<target>.qcow2) and belong to the VM.
    type: list
    elements: dict
    default: []
    suboptions:
      pool:
        description: Storage pool of the disk (default O(default_pool)).
        type: str
      base_volume:
        description:
          - Volume in the same pool the overlay is based on (a staged VO image).
          - When M(skygrid.fabric.vo_image) staged it, the VM is started only while the file is the bytes
            its provenance record vouches for (re-hashed when its size or mtime moved); otherwise the
            start fails naming the file.
        type: str
      volume:
        description: An existing volume to attach as is (not deleted with the VM).
        type: str
      size_gb:
        description: Size of an empty disk, or the minimum size of an overlay, in GiB.
        type: int
      format:
        description: Format of an attached O(disks[].volume); created disks are qcow2.
        type: str
        choices: [qcow2, raw]
      readonly:
        description: Attach the disk read-only.
        type: bool
        default: false
  nics:
    description: Network interfaces in order.
    type: list
    elements: dict
    default: []
    suboptions:
      network:
        description: libvirt network to attach to.
        type: str
      bridge:
        description: Host bridge to attach to (instead of O(nics[].network)).
        type: str
      user:
        description:
          - User-mode networking (QEMU's own NAT, no host network set-up, no root), instead of
            O(nics[].network) or O(nics[].bridge); what C(qemu:///session) on a desktop has. Takes no
            O(nics[].ip) or O(nics[].filter).
        type: bool
        default: false
      mac:
        description:
          - MAC address. Left out, an existing interface keeps its MAC, and a new one gets a MAC
            derived from the VM name (C(52:54:00:...)), the same every run.
        type: str
      ip:
        description:
          - The VM's address on this interface. It is also the only source address libvirt's
            C(clean-traffic) filter lets the VM use, so a VM cannot spoof another's address.
          - Required unless O(allow_address_spoofing=true).
        type: str
      filter:
        description:
          - libvirt nwfilter on the interface; defaults to C(clean-traffic) when O(nics[].ip) is
            given. V(none) attaches no filter and needs O(allow_address_spoofing=true).
        type: str
      model:
        description: NIC model.
        type: str
        default: virtio
  allow_address_spoofing:
    description:
      - Every NIC needs O(nics[].ip) and keeps an anti-spoofing filter (C(clean-traffic) by default);
        without them root in the VM can send with any source IP and MAC address on that network.
      - V(true) accepts that risk for this VM, allowing NICs without O(nics[].ip) and O(nics[].filter=none).
    type: bool
    default: false
  cloud_init:
    description:
      - Contextualisation through a cloud-init NoCloud seed volume (ISO 9660 labelled C(cidata))
        named C(<name>-cidata.iso), attached read-only after the disks.
      - The seed is rewritten when its content changes; a running VM reads it at its next boot.
    type: dict
    suboptions:
      user_data:
        description:
          - user-data as a string, or a dict written as C(#cloud-config).
          - Never shown in the module's output (it may carry credentials), at the top level and in
            O(vms) items.
        type: raw
      meta_data:
        description: meta-data as a string, or a dict merged over C(instance-id) and C(local-hostname) (both the VM name).
        type: raw
      network_config:
        description: network-config (version 1 or 2) as a string or a dict.
        type: raw
  seed_pool:
    description: Storage pool for the seed volume (default the first disk's pool).
    type: str
  kernel:
    description: Kernel for direct boot (a path on the hypervisor).
    type: str
  initrd:
    description: Initial ramdisk for direct boot.
    type: str
  cmdline:
    description: Kernel command line for direct boot.
    type: str
  metadata:
    description:
      - Provenance kept in the domain's libvirt C(<metadata>) (namespace C(urn:skygrid:fabric:vm:1)),
        so M(skygrid.fabric.vm_info) can tell which image, of which VO, runs where.
      - Known keys C(vo), C(trust_class) (1 site image, 2 VO image, 3 user image), C(image_id),
        C(image_sha512) (checked), and any other lower-case key.
      - Updated on a running VM too, without a restart.
    type: dict
    default: {}
  autostart:
    description: Start the VM when libvirtd starts.
    type: bool
    default: false
  console_log:
    description: File the serial console is logged to (default C(/var/log/libvirt/qemu/<name>-console.log)); empty for none.
    type: str
  shutdown_timeout:
    description: Seconds O(state=shutdown) waits for the guest to power off.
    type: int
    default: 120
  force:
    description: With O(state=shutdown), power the VM off when the guest has not shut down in time.
    type: bool
    default: false
  parallel:
    description:
      - How many VMs of O(vms) are changed at the same time (starting a VM is dominated by QEMU's
        own start-up, which overlaps well). V(1) changes them one after the other.
      - Results, actions and the diff are always reported in the order of O(vms).
    type: int
    default: 4
  migrate_to:
    description:
      - Live-migrate the running VM O(name) to the hypervisor at this libvirt URI (for example
        C(qemu+ssh://wn043/system) or C(qemu+tls://wn043/system)) and make it persistent there.
      - Only O(name), O(uri) and the C(migrate_*) options apply; the spec is not changed.
      - A VM already running on the destination is V(changed=false).
      - The VM's own volumes (overlays, seed) stay where both hosts share them (the destination has a
        volume of that name in the pool of that name); otherwise the overlay is created there on the
        same base image, which must be staged on both hosts, its blocks are copied during the move,
        and the source's copies are deleted afterwards.
    type: str
  migrate_uri:
    description: Address the migration data goes to (for example C(tcp://10.254.0.2) on a migration network).
    type: str
  migrate_tls:
    description:
      - Encrypt the migration stream itself (libvirt's C(VIR_MIGRATE_TLS), QEMU's native TLS; the hosts'
        C(qemu.conf) needs its C(migrate_tls_x509_cert_dir) certificates).
      - Left unset, on whenever O(migrate_to) is a C(qemu+tls://) URI - TLS on the control connection
        alone would still send the VM's memory, with any keys and proxies in it, in clear.
    type: bool
  migrate_timeout:
    description: Seconds a migration may take; then it is aborted and the VM keeps running on the source.
    type: int
    default: 600
  migrate_copy_storage:
    description:
      - V(auto) copies the VM's own volumes the destination does not have; V(always) copies them and
        refuses when the destination already has one; V(never) requires shared storage.
    type: str
    choices: [auto, always, never]
    default: auto
notes:
  - All VMs of one call share one libvirt connection.
seealso:
  - module: skygrid.fabric.vm_info
  - module: skygrid.fabric.hypervisor_info
"""

EXAMPLES = r"""
- name: Run an ATLAS worker VM on a staged, endorsed CernVM image
  skygrid.fabric.vm:
    name: wn042-atlas-1
    state: running
    vcpus: 8
    memory_mb: 16384
    disks:
      - pool: vo-images
        base_volume: atlas-cernvm-4.8.qcow2
        size_gb: 40
    nics:
      - network: vmnet
        ip: 10.20.0.17
        mac: 52:54:00:14:00:11
    cloud_init:
      user_data:
        hostname: wn042-atlas-1
        runcmd: [[systemctl, start, pbs_mom]]
    metadata:
      vo: atlas
      trust_class: 2
      image_id: 6a9d3c0e-1f0b-4b4e-8d65-7cf4a1b2c3d4
    autostart: true

- name: Many VMs in one call (top-level keys are defaults for every item)
  skygrid.fabric.vm:
    state: running
    vcpus: 2
    memory_mb: 4096
    vms:
      - name: wn042-lhcb-1
        disks: [{pool: vo-images, base_volume: lhcb-cernvm.qcow2}]
      - name: wn042-lhcb-2
        disks: [{pool: vo-images, base_volume: lhcb-cernvm.qcow2}]

- name: Drain done - shut the VM down, powering it off after two minutes
  skygrid.fabric.vm:
    name: wn042-atlas-1
    state: shutdown
    shutdown_timeout: 120
    force: true

- name: Move the VM to another worker node, copying its overlay
  skygrid.fabric.vm:
    name: wn042-atlas-1
    migrate_to: qemu+ssh://wn043.example.org/system
  register: moved

- name: Remove the VM with its overlay and seed
  skygrid.fabric.vm:
    name: wn042-atlas-1
    state: absent
"""

RETURN = r"""
vm:
  description: The result for the VM, when one was given with O(name).
  returned: when O(name) is used
  type: dict
  contains:
    name:
      description: VM name.
      type: str
    state:
      description: The state asked for.
      type: str
    changed:
      description: Whether this VM changed.
      type: bool
    restart_required:
      description: The VM runs with an older definition; restart it to apply the new one.
      type: bool
    uuid:
      description: The domain UUID (absent in check mode for a VM not yet defined).
      type: str
    spec:
      description: The normalised spec (disks with their volume names and targets, NICs with their MACs).
      type: dict
    actions:
      description: What was (or, in check mode, would be) done for this VM.
      type: list
      elements: str
    shutdown:
      description: C(graceful) or C(forced), when the VM was shut down.
      type: str
  sample:
    name: wn042-atlas-1
    state: running
    changed: true
    restart_required: false
    uuid: 0b7c2f7e-8d7a-4b1e-9a41-2f1e5f3c9d10
    actions: ["create volume vo-images/wn042-atlas-1-vda.qcow2 on atlas-cernvm-4.8.qcow2", "define VM wn042-atlas-1", "start VM wn042-atlas-1"]
vms:
  description: One result per item of O(vms), in order, each shaped like RV(vm).
  returned: when O(vms) is used
  type: list
  elements: dict
migration:
  description: The outcome of O(migrate_to).
  returned: when O(migrate_to) is used
  type: dict
  contains:
    migrated:
      description: Whether the VM was (or, in check mode, would be) moved.
      type: bool
    already_there:
      description: The VM already ran on the destination.
      type: bool
    seconds:
      description: How long the migration took.
      type: float
    copied_disks:
      description: Disk targets whose blocks were copied.
      type: list
      elements: str
  sample: {name: wn042-atlas-1, migrated: true, destination: qemu+ssh://wn043.example.org/system, seconds: 4.2, copied_disks: [vda]}
restart_required:
  description: True when any VM of the call needs a restart to run its new definition.
  returned: always
  type: bool
actions:
  description: Everything done (or, in check mode, that would be done), in order.
  returned: always
  type: list
  elements: str
"""

from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.connection import connection
from ansible_collections.skygrid.fabric.plugins.module_utils.module_base import FabricModule
from ansible_collections.skygrid.fabric.plugins.module_utils.vm.args import VM_ITEM_OPTIONS, VM_OPTIONS, vm_items
from ansible_collections.skygrid.fabric.plugins.module_utils.vm.lifecycle import VmLifecycle
from ansible_collections.skygrid.fabric.plugins.module_utils.vm.migration import COPY_MODES, Migration


class VmModule(FabricModule):
    supports_check_mode = True
    argument_spec = dict(VM_OPTIONS, uri=dict(type="str", default="qemu:///system"),
                         vms=dict(type="list", elements="dict", options=VM_ITEM_OPTIONS),
                         parallel=dict(type="int", default=4),
                         migrate_to=dict(type="str"),
                         migrate_uri=dict(type="str"),
                         migrate_timeout=dict(type="int", default=600),
                         migrate_copy_storage=dict(type="str", default="auto", choices=list(COPY_MODES)),
                         migrate_tls=dict(type="bool"))
    module_kwargs = dict(mutually_exclusive=[("name", "vms"), ("migrate_to", "vms")],
                         required_one_of=[("name", "vms")])

    def run(self):
        if self.params["migrate_to"]:
            return self._migrate()
        items = vm_items(self.params)
        with connection(self.params["uri"]) as conn:
            lifecycle = VmLifecycle(conn, self.params["uri"], self.reconciler)
            plans = [lifecycle.plan(item) for item in items]
            results = lifecycle.apply_all(plans, workers=self.params["parallel"])
        summary = {"restart_required": any(result["restart_required"] for result in results)}
        if self.params.get("vms"):
            summary["vms"] = results
        else:
            summary["vm"] = results[0]
        return summary

    def _migrate(self):
        with connection(self.params["uri"]) as src, connection(self.params["migrate_to"]) as dst:
            result = Migration(src, dst, self.params["migrate_to"], self.params, self.reconciler).run(self.params["name"])
        result["changed"] = self.reconciler.changed
        return {"migration": result, "restart_required": False}


def main():
    VmModule().execute()


if __name__ == "__main__":
    main()
