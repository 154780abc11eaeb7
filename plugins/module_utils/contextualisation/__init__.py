# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a VM is given to join its batch system: the cloud-init user-data the roles' ``vm_context`` hands the
vm module (slurm.py). Pure: files already read in, user-data out."""
