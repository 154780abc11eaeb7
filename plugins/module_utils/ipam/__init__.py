# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Address management for ip_lease: pools of addresses, the SQLite lease store and its transactions, and
the exported dnsmasq/hosts/zone/libvirt files."""
