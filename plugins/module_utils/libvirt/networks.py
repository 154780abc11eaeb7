# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt networks as an ObjectKind: DHCP reservations change live and persistently, without a restart."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt import network_spec
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.connection import libvirt, libvirt_errors, lookup
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.objects import ObjectKind


class NetworkKind(ObjectKind):
    noun = "network"

    def __init__(self, conn, name):
        super().__init__(conn)
        self.name = name

    def lookup(self, name):
        return lookup(self.conn.networkLookupByName, name)

    def define(self, xml):
        return self.conn.networkDefineXML(xml)

    def to_xml(self, spec, uuid=None):
        return network_spec.to_xml(self.name, spec, uuid=uuid)

    def from_xml(self, xml):
        return network_spec.from_xml(xml)

    def start(self, obj):
        try:
            obj.create()
        except libvirt.libvirtError as exc:
            message = exc.get_error_message() or ""
            # libvirt's words differ by mode: "Network is already in use by interface X" (the bridge has an
            # address), "error creating bridge interface X: File exists"
            if "already in use by interface" not in message and not ("bridge interface" in message and "File exists" in message):
                raise
            bridge = ET.fromstring(obj.XMLDesc(0)).find("bridge").get("name")
            # A bridge of that name outlived the network that made it (libvirt reinstalled or crashed, an older
            # definition removed) or belongs to another tool: libvirt will not take it over.
            raise FabricError("network %s cannot start: its bridge %s already exists on this host and is not this "
                              "network's (a bridge an earlier libvirt network or another tool left). If nothing uses it, "
                              "remove it (ip link delete %s) and run again; otherwise give the network another bridge "
                              "name" % (self.name, bridge, bridge), field="bridge")

    def xml_of(self, obj, inactive):
        return obj.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE if inactive else 0)

    def adopt_defaults(self, wanted, current):
        if wanted["bridge"] is None:  # libvirt names the bridge (virbrN) when the spec does not
            wanted["bridge"] = current["bridge"]
        if wanted["hosts"] is None:  # reservations not managed by this call: keep them
            wanted["hosts"] = current["hosts"]

    def live_keys(self, wanted, current):
        if wanted["hosts"] == current["hosts"] or not wanted["address"]:
            return []
        if any(wanted[key] != current[key] for key in ("address", "prefix")):
            return []  # the subnet itself changes: a redefinition carries the hosts along
        return ["hosts"]

    def live_update(self, obj, wanted, current, reconciler):
        """DHCP host reservations: add, change and remove them in the running dnsmasq and the saved
        definition at once (virNetworkUpdate), so attached VMs keep their connectivity."""
        old = {host["mac"]: host for host in current["hosts"]}
        new = {host["mac"]: host for host in wanted["hosts"]}
        flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
        if obj.isActive():
            flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
        steps = []
        for mac in sorted(set(old) - set(new)):
            steps.append(("remove DHCP host %s (%s)" % (mac, old[mac]["ip"]), libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, old[mac]))
        for mac in sorted(set(old) & set(new)):
            if old[mac] != new[mac]:
                # MODIFY matches on the MAC; a delete + add also lets the IP change safely.
                steps.append(("remove DHCP host %s (%s)" % (mac, old[mac]["ip"]), libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, old[mac]))
                steps.append(("add DHCP host %s -> %s" % (mac, new[mac]["ip"]), libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, new[mac]))
        for mac in sorted(set(new) - set(old)):
            steps.append(("add DHCP host %s -> %s" % (mac, new[mac]["ip"]), libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, new[mac]))
        for description, command, host in steps:
            reconciler.act("%s in network %s" % (description, self.name), self._update, obj, command, host, flags)

    @staticmethod
    def _update(obj, command, host, flags):
        with libvirt_errors("updating the DHCP hosts", "hosts"):
            obj.update(command, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1, network_spec.host_xml(host), flags)

    def restart_blockers(self, obj):
        attached = []
        for dom in self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            root = ET.fromstring(dom.XMLDesc(0))
            for iface in root.findall("devices/interface"):
                source = iface.find("source")
                if iface.get("type") == "network" and source is not None and source.get("network") == self.name:
                    attached.append("VM %s" % dom.name())
                    break
        return sorted(attached)
