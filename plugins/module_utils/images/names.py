# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Names and trust of VO images: volume names that can only name a file in the pool, titles, trust
classes, checksums and formats."""

from __future__ import annotations

import re

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.images import image_list

STAGED_FORMATS = ("qcow2", "raw")
FORMAT_ALIASES = {"qcow2": "qcow2", "raw": "raw", "img": "raw"}
TRUST_CLASSES = (1, 2, 3)
# One component of a volume name: no '/', no leading '.', no '..' -- it can only name a file in the pool.
# No '+' either: that joins the parts, so a name splits back into its parts one way only.
NAME_PART_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9])?\Z")
# '+' is also outside every VM name (vm/spec.py NAME_RE), so the volumes VM removal sweeps by name
# (<vm>-vda.qcow2, <vm>-cidata.iso) can never be a staged image.
SEPARATOR = "+"


def name_part(value, what, field):
    text = "" if value is None else str(value)
    if not NAME_PART_RE.match(text) or ".." in text:
        raise FabricError("%s %r cannot be part of a volume name: it must be 1-128 letters, digits, '.', '_' or '-', "
                          "begin and end with a letter or digit, and hold no '..' or '/' (a name like that could "
                          "escape the pool directory) and no '+' (it separates the parts); nothing was staged"
                          % (what, value), field=field)
    return text


def volume_name(vo, image_id, version, field="image"):
    """``<vo>+<image id>[+<version>].qcow2``: every part checked, so the name stays inside the pool, and
    joined by a character no part holds, so two different images never share a name."""
    parts = [name_part(vo, "VO name", "vo"), name_part(image_id, "image identifier", field)]
    if version not in (None, ""):
        parts.append(name_part(version, "image version", field))
    return SEPARATOR.join(parts) + ".qcow2"


def check_title(title, field="image"):
    """Titles never become paths here; still refuse ones that look like an attempt to (or carry
    control characters into logs)."""
    if title is None:
        return
    if any(ord(char) < 32 or ord(char) == 127 for char in title) or title.strip() in (".", "..") \
            or title.startswith("/") or "../" in title or "/.." in title or "\\" in title:
        raise FabricError("image title %r looks like a file path or holds control characters; refusing an image "
                          "whose list entry tries to escape the pool directory. Ask the VO to fix its list"
                          % (title,), field=field)


def check_trust_class(trust_class, allow_user_images):
    if trust_class not in TRUST_CLASSES:
        raise FabricError("must be 1 (site image, sha512 pinned by the site), 2 (VO image from a signed list) or "
                          "3 (user image), got %r" % (trust_class,), field="trust_class")
    if trust_class == 3 and not allow_user_images:
        raise FabricError("class 3 (user-built) images are refused on this site; set fabric_allow_user_images: true "
                          "(allow_user_images) if the site accepts them", field="trust_class")


def normalise_sha512(value, field):
    text = str(value or "").strip().lower()
    if not image_list.SHA512_RE.match(text):
        raise FabricError("must be the image's sha512: 128 hexadecimal digits (sha512sum prints it)", field=field)
    return text


def normalise_format(value, field):
    if value in (None, ""):
        return None
    fmt = FORMAT_ALIASES.get(str(value).strip().lower())
    if fmt is None:
        raise FabricError("declared format %r is not staged here: only qcow2 and raw images are (other formats can "
                          "reference files on the host)" % (value,), field=field)
    return fmt
