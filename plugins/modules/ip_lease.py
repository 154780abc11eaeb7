#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ip_lease
short_description: Allocate and release IP addresses, MAC addresses and host names from named pools
version_added: "0.1.0"
description:
  - Hands each owner (a VM) a stable IP address, MAC address and host name from a named address pool,
    and takes them back. Run it on the site's IPAM host (usually with C(delegate_to)); any host with
    Python and its C(sqlite3) module will do.
  - With O(state=present) the owner's existing lease is returned unchanged; an owner without one gets
    the lowest free address of the pool and a MAC derived from the pool and owner names (the same pair
    always gets the same MAC, unless that MAC is already taken, when the next derived one is used).
  - The leases live in one SQLite database (O(db)) in WAL mode. Every call is one C(BEGIN IMMEDIATE)
    transaction, so concurrent runs (several pipelines at once) queue for a moment rather than hand out
    an address twice, and the database itself refuses a duplicate IP, MAC or owner within a pool.
  - O(leases) allocates and releases many owners in one call and one transaction. When any item fails
    (a full pool, an invalid owner name) nothing is changed.
  - A full pool fails, naming the pool, its size and how many addresses are in use.
  - When a pool's definition has changed so that existing leases no longer fit it (outside the subnet
    or range, now the gateway or reserved, MAC outside the prefix), those leases are returned in
    RV(stale) with a warning, and asking for such an owner's lease fails until it is released.
  - O(export) writes the pools' leases, atomically, as a dnsmasq configuration file, a hosts file or
    a DNS zone fragment, or returns them as reservations for a libvirt network.
author:
  - skygrid.fabric contributors (@skygrid)
attributes:
  check_mode:
    support: full
    description: Reports the addresses and MACs it would hand out or release, and the files it would write;
      writes nothing (no database is created either).
  diff_mode:
    support: full
    description: Shows each lease before and after (keyed C(pool/owner)), changed pool definitions and the
      content of exported files.
options:
  pool:
    description:
      - Name of the pool to allocate from or release to; the default for O(leases) items.
      - With only O(export), the pool to export.
    type: str
  pools:
    description:
      - Pool definitions, keyed by pool name (typically from the site's inventory). A pool used by the call
        must be defined here or by an earlier call (the definition is stored in the database with the
        pool's first lease, and updated when the one given here differs).
      - C(cidr) (required) is the subnet, for example C(10.20.0.0/22) or C(fd00:20::/64).
      - C(range) is a dict of C(start) and C(end), the addresses to hand out, inside C(cidr). The default
        is the whole subnet less the network and broadcast addresses (IPv4) or, for IPv6, the bounded
        range C(<subnet>::1) to C(<subnet>::ffff) (65535 addresses); give a C(range) for other IPv6
        addresses.
      - C(gateway) is the subnet's router; it is never handed out.
      - C(reserved) is a list of addresses never handed out, each an address, a C(first-last) range or a subnet.
      - C(dns_domain) is the domain of the owners' host names; the FQDN is C(<owner>.<dns_domain>).
      - C(mac_prefix) (default C(52:54:00)) is the first 1-5 octets of the pool's MAC addresses. It must be
        locally administered and unicast (bit 0x02 of the first octet set, bit 0x01 clear), so it cannot
        clash with real hardware.
      - Unknown keys are an error (a mistyped C(gateway) must not go unnoticed).
    type: dict
    default: {}
  owner:
    description:
      - The owner of the lease, normally the VM name. It becomes the host name, so it must be a valid
        RFC 1123 host name label (1-63 letters, digits and hyphens, no hyphen at either end). Owners
        compare case-insensitively and are returned in lower case.
    type: str
  state:
    description:
      - V(present) returns the owner's lease, allocating one when there is none.
      - V(absent) releases it (nothing to do when there is none); the address is free for the next owner.
      - The default for O(leases) items.
    type: str
    choices: [present, absent]
    default: present
  leases:
    description: Many owners in one call and one transaction, processed in order.
    type: list
    elements: dict
    suboptions:
      owner:
        description: The owner, as O(owner).
        type: str
        required: true
      pool:
        description: Its pool (default O(pool)).
        type: str
      state:
        description: V(present) or V(absent) (default O(state)).
        type: str
        choices: [present, absent]
  db:
    description:
      - The SQLite database on the IPAM host; created (with its directory) by the first allocation.
      - Next to it, SQLite keeps C(<db>-wal) and C(<db>-shm) while it is in use, and concurrent runs queue
        on a lock file C(<db>.lock). Back up the database with C(sqlite3 <db> .backup <file>), not by copying.
      - A file that is not an IPAM database, or is damaged, is reported and left untouched.
      - A missing or empty O(db) is created only when no C(<db>.lock) or C(<db>-wal) shows that a database
        was in use there; otherwise the call fails, since an empty database would hand out addresses already
        leased. Restore the backup, or remove C(<db>.lock) to start afresh on purpose.
      - Keep it on a local file system (WAL mode does not work over NFS).
    type: path
    default: /var/lib/skygrid/ipam.sqlite
  timeout:
    description:
      - Seconds to wait for another run holding the database before failing.
      - The failure names the lock files and, where C(/proc/locks) tells, the processes holding them; nothing is changed.
    type: float
    default: 30
  export:
    description:
      - Export the leases of pools after the allocations and releases of this call.
      - Files are written atomically (a temporary file in the same directory renamed over the old one),
        only when their content changes. Leases whose address is outside their pool's subnet are left out.
    type: dict
    suboptions:
      format:
        description:
          - V(dnsmasq) writes C(dhcp-host=<mac>,<ip>,<name>) lines, for dnsmasq's C(conf-file) or C(conf-dir).
          - V(hosts) writes C(<ip> <fqdn> <name>) lines, for C(/etc/hosts) or dnsmasq's C(addn-hosts).
          - V(zone) writes a DNS zone fragment of A/AAAA records (FQDNs), for C($INCLUDE).
          - V(libvirt) writes nothing and returns RV(reservations) for a libvirt network's DHCP hosts.
        type: str
        choices: [dnsmasq, hosts, zone, libvirt]
        required: true
      path:
        description: The file to write; required except for V(libvirt). Its directory must exist.
        type: path
      pools:
        description:
          - The pools to export. Default the pools of this call's leases, else O(pool), else every pool
            in the database.
        type: list
        elements: str
notes:
  - Leases for one VM's several NICs come from several pools (one call per pool, or one O(leases) list).
  - dnsmasq reads C(conf-file) and C(conf-dir) files when it starts, so restart it (a handler) after the file changed.
seealso:
  - module: skygrid.fabric.vm
"""

EXAMPLES = r"""
- name: Lease an address for a VM on the IPAM host
  skygrid.fabric.ip_lease:
    pool: vmnet
    pools:
      vmnet:
        cidr: 10.20.0.0/22
        range: {start: 10.20.0.10, end: 10.20.3.250}
        gateway: 10.20.0.1
        reserved: [10.20.0.2-10.20.0.9, 10.20.1.0/28]
        dns_domain: vm.example.org
    owner: wn042-atlas-1
  delegate_to: "{{ fabric_ipam_host }}"
  register: lease

- name: Use it for the VM's NIC
  skygrid.fabric.vm:
    name: wn042-atlas-1
    nics:
      - network: vmnet
        ip: "{{ lease.lease.ip }}"
        mac: "{{ lease.lease.mac }}"

- name: Lease addresses for every VM slot of a host in one transaction
  skygrid.fabric.ip_lease:
    pool: vmnet
    pools: "{{ fabric_ip_pools }}"
    leases: "{{ vm_slots | map(attribute='name') | map('community.general.dict_kv', 'owner') }}"
  delegate_to: "{{ fabric_ipam_host }}"
  register: slot_leases

- name: Release the lease of a removed VM and regenerate the dnsmasq hosts
  skygrid.fabric.ip_lease:
    pool: vmnet
    owner: wn042-atlas-1
    state: absent
    export:
      format: dnsmasq
      path: /etc/dnsmasq.d/skygrid-vmnet.conf
  delegate_to: "{{ fabric_ipam_host }}"
  notify: Restart dnsmasq

- name: Host reservations for a libvirt network
  skygrid.fabric.ip_lease:
    pool: vmnet
    export:
      format: libvirt
  delegate_to: "{{ fabric_ipam_host }}"
  register: vmnet_hosts
"""

RETURN = r"""
lease:
  description: The lease of O(owner) (after the call; for O(state=absent) the one released, if any).
  returned: when O(owner) is given
  type: dict
  contains:
    pool:
      description: Pool name.
      type: str
    owner:
      description: Owner (lower case).
      type: str
    state:
      description: The state asked for.
      type: str
    ip:
      description: The address (with O(state=absent), the one released; null when there was none).
      type: str
    mac:
      description: The MAC address.
      type: str
    fqdn:
      description: Fully qualified host name (the owner when the pool has no C(dns_domain)).
      type: str
    prefix:
      description: Prefix length of the pool's subnet.
      type: int
    gateway:
      description: The pool's gateway, if it has one.
      type: str
    changed:
      description: Whether this lease was allocated or released by the call.
      type: bool
  sample:
    pool: vmnet
    owner: wn042-atlas-1
    state: present
    ip: 10.20.0.10
    mac: "52:54:00:3e:a1:07"
    fqdn: wn042-atlas-1.vm.example.org
    prefix: 22
    gateway: 10.20.0.1
    changed: true
leases:
  description: One result per O(leases) item, in order, each shaped like RV(lease).
  returned: when O(leases) is given
  type: list
  elements: dict
stale:
  description:
    - Leases of the pools used by the call that no longer fit the pool's definition, with the reasons.
      Release them (O(state=absent)) and allocate again, or restore the definition.
  returned: always
  type: list
  elements: dict
  sample:
    - pool: vmnet
      owner: wn001-cms-1
      ip: 10.20.4.3
      mac: "52:54:00:11:22:33"
      reasons: ["outside the subnet 10.20.0.0/22"]
usage:
  description: Per pool used by the call, its C(size) (addresses it can hand out), C(in_use) (leases) and C(free).
  returned: always
  type: dict
  sample: {vmnet: {size: 1006, in_use: 12, free: 994}}
export:
  description: What O(export) did.
  returned: when O(export) is given
  type: dict
  contains:
    format:
      description: The format.
      type: str
    path:
      description: The file written (null for V(libvirt)).
      type: str
    pools:
      description: The pools exported.
      type: list
      elements: str
    count:
      description: Number of entries.
      type: int
    changed:
      description: Whether the file was (or would be) rewritten.
      type: bool
reservations:
  description: With O(export.format=libvirt), the DHCP host reservations for a libvirt network, sorted by address.
  returned: when O(export.format=libvirt)
  type: list
  elements: dict
  sample:
    - {mac: "52:54:00:3e:a1:07", ip: 10.20.0.10, name: wn042-atlas-1}
actions:
  description: Everything done (or, in check mode, that would be done), in order.
  returned: always
  type: list
  elements: str
"""

from ansible_collections.skygrid.fabric.plugins.module_utils.ipam import transaction
from ansible_collections.skygrid.fabric.plugins.module_utils.ipam.exports import EXPORT_FORMATS
from ansible_collections.skygrid.fabric.plugins.module_utils.ipam.pool import STATES, build_requests
from ansible_collections.skygrid.fabric.plugins.module_utils.ipam.store import DEFAULT_DB, DEFAULT_TIMEOUT
from ansible_collections.skygrid.fabric.plugins.module_utils.module_base import FabricModule


class IpLeaseModule(FabricModule):
    supports_check_mode = True
    argument_spec = dict(
        pool=dict(type="str"),
        pools=dict(type="dict", default={}),
        owner=dict(type="str"),
        state=dict(type="str", default="present", choices=list(STATES)),
        leases=dict(type="list", elements="dict", options=dict(
            owner=dict(type="str", required=True),
            pool=dict(type="str"),
            state=dict(type="str", choices=list(STATES)),
        )),
        db=dict(type="path", default=DEFAULT_DB),
        timeout=dict(type="float", default=DEFAULT_TIMEOUT),
        export=dict(type="dict", options=dict(
            format=dict(type="str", required=True, choices=list(EXPORT_FORMATS)),
            path=dict(type="path"),
            pools=dict(type="list", elements="str"),
        )),
    )
    module_kwargs = dict(mutually_exclusive=[("owner", "leases")],
                         required_one_of=[("owner", "leases", "export")])

    def run(self):
        params = self.params
        requests = build_requests(params["pool"], params["owner"], params["state"], params["leases"])
        report = transaction.run(params["db"], params["pools"], requests, self.reconciler, export=params["export"],
                                 pool=params["pool"], timeout=params["timeout"])
        leases = report.pop("leases")
        if params["owner"]:
            report["lease"] = leases[0]
        elif params["leases"] is not None:
            report["leases"] = leases
        if report["stale"]:
            for name in sorted({lease["pool"] for lease in report["stale"]}):
                listed = [lease for lease in report["stale"] if lease["pool"] == name]
                self.module.warn("pool %s: %d lease(s) no longer fit its definition, for example %s %s (%s); release "
                                 "them and allocate again, or restore the definition (see 'stale')"
                                 % (name, len(listed), listed[0]["owner"], listed[0]["ip"],
                                    "; ".join(listed[0]["reasons"])))
        return report


def main():
    IpLeaseModule().execute()


if __name__ == "__main__":
    main()
