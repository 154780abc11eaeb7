# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VO images: endorsed HEPiX image lists (image_list.py) and staging an image into a libvirt directory
pool so that a volume either is the endorsed image or is not there at all (staging.py)."""
