# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt objects: the one connection (connection.py), the generic define/start/stop/undefine
reconciliation of networks and pools (objects.py, object_module.py), networks, pools, volumes (storage.py)
and the hypervisor facts (host.py). Nothing here knows about batch systems or VOs."""
