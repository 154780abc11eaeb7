# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One VM: its spec and domain XML (spec.py), the module options (args.py), the cloud-init seed
(cloud_init.py), the lifecycle (lifecycle.py), live/offline migration (migration.py) and what vm_info
reports (report.py)."""
