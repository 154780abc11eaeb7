# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The option shapes the image modules share, defined once: the trust options (image_list, vo_image) and one
image to stage (vo_image's top level and each of its ``images`` items)."""

from __future__ import annotations

from ansible_collections.skygrid.fabric.plugins.module_utils.images import image_list
from ansible_collections.skygrid.fabric.plugins.module_utils.images.names import STAGED_FORMATS


def trust_options():
    """Whom a VO's signed image list must come from (doc fragment skygrid.fabric.image_trust): the endorsers,
    each the subject DN of its signing certificate, the DN of its CA and that CA pinned (one of ca_sha256,
    ca_cert); the CA directory; revocation checks; consent to http."""
    endorser = dict(dn=dict(type="str", required=True), ca=dict(type="str", required=True),
                    ca_sha256=dict(type="str"), ca_cert=dict(type="path"))
    return dict(
        endorsers=dict(type="list", elements="dict", options=endorser),
        ca_path=dict(type="path", default=image_list.DEFAULT_CA_PATH),
        crl_check=dict(type="bool", default=True),
        allow_http=dict(type="bool", default=False),
    )


def image_selector_options(image_required):
    """One image: named in the VO's list (``image``, ``version``) or pinned by the inventory (``image_url``,
    ``sha512``, ``size``, ``format``). ``image`` is required in an ``images`` item, optional at the top level."""
    image = dict(type="str", required=True) if image_required else dict(type="str")
    return dict(
        image=image,
        version=dict(type="str"),
        image_url=dict(type="str"),
        sha512=dict(type="str"),
        size=dict(type="int"),
        format=dict(type="str", choices=list(STAGED_FORMATS)),
    )


def vos_items(site_vos, prune=False, allow_http=False):
    """The ``vos`` option of vo_image from the site's VOs (``fabric_vos``: name -> {trust_class, images,
    image_list_url, endorsers, prune, allow_http, ...}), in name order: the VOs with images to stage or to
    prune. ``prune`` and ``allow_http`` are the site's defaults a VO may override."""
    items = []
    for name in sorted(site_vos or {}):
        vo = site_vos[name] or {}
        vo_prune = bool(vo.get("prune", prune))
        if not vo.get("images") and not vo_prune:
            continue
        trust_class = int(vo.get("trust_class", 2))
        item = {"vo": name, "trust_class": trust_class, "images": list(vo.get("images") or []), "prune": vo_prune,
                "allow_http": bool(vo.get("allow_http", allow_http))}
        if trust_class == 2:
            item.update(list_url=vo.get("image_list_url"), endorsers=vo.get("endorsers"))
        items.append(item)
    return items
