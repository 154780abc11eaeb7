#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vo_image
short_description: Stage endorsed VO images into a libvirt pool as read-only base volumes, with provenance
version_added: "0.1.0"
description:
  - Stages VM images into a libvirt directory pool (type C(dir), C(fs) or C(netfs)) so that a volume
    either is exactly the image its endorser vouched for or is not there at all, and records where
    it came from.
  - "Trust classes: V(1) a site image, pinned in the inventory by O(image_url), O(sha512) and O(size);
    V(2) a VO image, taken from the VO's image list, which is fetched and verified on every run
    (S/MIME signature, endorser in O(endorsers), CA in O(ca_path), not expired - see
    M(skygrid.fabric.image_list)); V(3) a user image, pinned like class 1 and refused unless
    O(allow_user_images=true)."
  - Staging downloads the image into a staging directory inside the pool (C(.skygrid/staging),
    not a volume name), resuming an interrupted download with an HTTP Range request, stops at the
    declared size, and computes the sha512 while streaming. C(qemu-img info) detects the format -
    only qcow2 and raw are staged, a qcow2 that names a backing file or an external data file is
    refused, and a format other than the one declared is refused; so is a virtual size above
    O(max_virtual_size_gb). C(qemu-img info) runs with its memory and CPU time capped. A raw image is
    converted to qcow2.
    The volume is made read-only (0444), its provenance record written, and it is published by an
    atomic rename under its final name, C(<vo>+<image id>[+<version>].qcow2) (no part may hold
    C(+), so two images never share a name); then the pool is refreshed.
  - Any refusal leaves nothing under the final name and no partial file, except an interrupted
    download, which is kept in the staging directory and resumed by the next run.
  - "A full pool filesystem: before downloading (also in check mode), the image's declared size is
    compared with the space available in the pool's filesystem, and before converting a raw image, the
    size C(qemu-img measure) gives; an image that does not fit fails naming the pool, its path, the bytes
    needed and available, and changes nothing. If the filesystem fills up anyway (something else wrote
    there meanwhile), the run fails the same way and removes its partial files rather than keeping them
    for a resume, giving the space back to VMs that write on that filesystem; the images already
    staged are untouched."
  - A volume already staged with the same VO, image id, version and sha512 is left alone
    (C(changed=false)); its read-only mode is checked, and its bytes are re-hashed when its size or
    mtime differs from its provenance record (a change is refused). M(skygrid.fabric.vm) makes the
    same check before it starts a VM on a staged volume.
  - O(state=absent) removes the matching staged images (every version unless O(version) is given),
    refusing, and removing nothing, when a VM uses one (the error names the VMs).
  - O(prune=true) removes this VO's staged images of the same trust class that the current list
    (class 2) or this call's images (classes 1 and 3) no longer contain and that no VM uses;
    images in use are kept and reported in RV(kept).
  - A VM uses a volume when its disk is the volume or an overlay on it (the base volume
    M(skygrid.fabric.vm) records in the domain's metadata), or when a qcow2 in the pool is backed by it.
extends_documentation_fragment:
  - skygrid.fabric.image_trust
author:
  - skygrid.fabric contributors (@skygrid)
requirements:
  - libvirt-python (or the distribution's python3-libvirt) on the hypervisor
  - qemu-img and, for trust class 2, openssl on the hypervisor
attributes:
  check_mode:
    support: full
    description:
      - Fetches and verifies the image list, reports what would be staged, replaced or removed, and changes nothing.
      - A pool that does not exist yet (a new node, whose pool an earlier task of the run creates) is planned
        into with a warning; without check mode a missing pool is an error.
  diff_mode:
    support: full
    description: Shows each volume's provenance record before and after, keyed by volume name.
options:
  uri:
    description: libvirt connection URI of the hypervisor (the module runs on it).
    type: str
    default: qemu:///system
  pool:
    description: The storage pool (type C(dir), C(fs) or C(netfs)) the images are staged into.
    type: str
    required: true
  vo:
    description:
      - The VO the images belong to; the first part of each volume name.
      - One of O(vo) and O(vos) is required.
    type: str
  vos:
    description:
      - Several VOs in one call (O(state=present) only), each with its own images, list and endorsers; the
        other options (O(pool), O(ca_path), O(crl_check), O(provenance_log), ...) hold for all of them. A
        converge that stages the images of every VO of a site costs one module run, not one per VO.
      - A VO that fails does not stop the others - they are staged - and the task then fails naming each
        VO that failed and why (RV(failed_vos)).
      - With O(vos), O(vo), O(image), O(images), O(list_url), O(endorsers), O(trust_class) and O(prune) go in
        its items.
    type: list
    elements: dict
    suboptions:
      vo:
        description: As O(vo).
        type: str
        required: true
      trust_class:
        description: As O(trust_class).
        type: int
        choices: [1, 2, 3]
        default: 2
      images:
        description: As O(images).
        type: list
        elements: dict
        suboptions:
          image:
            description: As O(image).
            type: str
            required: true
          version:
            description: As O(version).
            type: str
          image_url:
            description: As O(image_url).
            type: str
          sha512:
            description: As O(sha512).
            type: str
          size:
            description: As O(size).
            type: int
          format:
            description: As O(format).
            type: str
            choices: [qcow2, raw]
      list_url:
        description: As O(list_url).
        type: str
      endorsers:
        description: As O(endorsers).
        type: list
        elements: dict
        suboptions:
          dn:
            description: As O(endorsers[].dn).
            type: str
            required: true
          ca:
            description: As O(endorsers[].ca).
            type: str
            required: true
          ca_sha256:
            description: As O(endorsers[].ca_sha256).
            type: str
          ca_cert:
            description: As O(endorsers[].ca_cert).
            type: path
      allow_http:
        description: As O(allow_http), for this VO's list and images (default the top-level O(allow_http)).
        type: bool
      prune:
        description: As O(prune).
        type: bool
        default: false
  state:
    description:
      - V(present) stages the images, V(absent) removes them.
      - V(verify) re-hashes the staged images of O(vo) (those named by O(image)/O(images), default all)
        against their provenance records, whatever their mtime, and fails naming each one whose bytes
        changed or that is missing; it never removes anything (RV(verified)).
    type: str
    choices: [present, absent, verify]
    default: present
  trust_class:
    description:
      - V(1) site image (pinned by O(image_url), O(sha512), O(size)), V(2) VO image from a signed
        list (O(list_url), O(endorsers), O(ca_path)), V(3) user image (pinned; needs O(allow_user_images)).
      - Recorded in the provenance.
      - Default V(2) (with O(vos), each item has its own).
    type: int
    choices: [1, 2, 3]
  allow_user_images:
    description: Accept trust class 3 images (the site's C(fabric_allow_user_images)).
    type: bool
    default: false
  image:
    description:
      - One image. For class 2 its identifier (C(dc:identifier)) or title (C(dc:title)) in the list;
        for classes 1 and 3 the identifier the site gives it.
      - With O(state=absent), the identifier or title of the staged image.
    type: str
  version:
    description:
      - With O(image), the version. Class 2 - the list's C(hv:version) to stage (default the newest
        of the images that match O(image)). Classes 1 and 3 - part of the volume name.
      - With O(state=absent), only that version is removed (default all).
    type: str
  image_url:
    description: With O(image), the image's URL (C(https://), C(http://) or C(file://)); classes 1 and 3 only.
    type: str
  sha512:
    description: With O(image), the image's sha512; classes 1 and 3 only.
    type: str
  size:
    description: With O(image), the image's size in bytes (the download is cut off beyond it); classes 1 and 3 only.
    type: int
  format:
    description: With O(image), the declared format; the detected one must match. Classes 1 and 3 only.
    type: str
    choices: [qcow2, raw]
  images:
    description: Several images in one call (one list fetch), each like the top-level image options.
    type: list
    elements: dict
    suboptions:
      image:
        description: Identifier or title, as O(image).
        type: str
        required: true
      version:
        description: As O(version).
        type: str
      image_url:
        description: As O(image_url).
        type: str
      sha512:
        description: As O(sha512).
        type: str
      size:
        description: As O(size).
        type: int
      format:
        description: As O(format).
        type: str
        choices: [qcow2, raw]
  list_url:
    description: URL of the VO's signed image list (class 2).
    type: str
  prune:
    description:
      - Remove this VO's staged images that are no longer wanted and not in use (see above).
      - Default V(false) (with O(vos), each item has its own).
    type: bool
  max_virtual_size_gb:
    description:
      - The largest virtual size (GiB) an image may have; a larger one is refused. A qcow2 of 1 PiB
        virtual size is a small download, and every VM overlay on it inherits that size.
    type: int
    default: 1024
  provenance_log:
    description: A file to append one JSON line to for every image staged, removed or pruned (the site's provenance log).
    type: path
  validate_certs:
    description: Verify the TLS certificates of https URLs.
    type: bool
    default: true
  timeout:
    description: Seconds to wait for a server to answer (per request, not for the whole download).
    type: int
    default: 60
notes:
  - Runs one staging at a time per pool (a lock in the private C(/run/skygrid/locks)); a second run waits
    up to an hour, then finds the work done. Removing, pruning or replacing a staged volume and creating
    an overlay on one (M(skygrid.fabric.vm)) exclude each other, so an image is never removed under a VM
    that is starting on it.
  - The provenance records are in C(<pool dir>/.skygrid/provenance/<volume>.provenance.json); libvirt
    lists the C(.skygrid) directory as one volume of type C(dir).
  - Only pools whose volumes are files on this host are supported (not C(logical) or other block pools).
seealso:
  - module: skygrid.fabric.image_list
  - module: skygrid.fabric.vm
"""

EXAMPLES = r"""
- name: Stage the newest endorsed CernVM image of ATLAS, and prune what ATLAS withdrew
  skygrid.fabric.vo_image:
    pool: vo-images
    vo: atlas
    image: CernVM 4.8 worker
    list_url: https://atlas-images.example.org/atlas.image_list
    endorsers:
      - dn: /DC=ch/DC=cern/OU=Organic Units/OU=Users/CN=atlasimg/CN=123456/CN=ATLAS Image Endorser
        ca: /DC=ch/DC=cern/CN=CERN Grid Certification Authority
        ca_sha256: "{{ cern_grid_ca_sha256 }}"   # the CA itself, not only its name
    prune: true
    provenance_log: /var/log/skygrid/vo_images.jsonl
  register: atlas_image

- name: Run a VM on it, with its provenance in the VM's metadata
  skygrid.fabric.vm:
    name: wn042-atlas-1
    state: running
    disks: [{pool: vo-images, base_volume: "{{ atlas_image.image.volume }}"}]
    metadata:
      vo: atlas
      trust_class: "{{ atlas_image.image.trust_class }}"
      image_id: "{{ atlas_image.image.image_id }}"
      image_sha512: "{{ atlas_image.image.sha512 }}"

- name: A site image (trust class 1), pinned in the inventory
  skygrid.fabric.vo_image:
    pool: vo-images
    vo: ops
    trust_class: 1
    image: site-el9-worker
    version: "2026.01"
    image_url: https://repo.site.example/images/el9-worker-2026.01.qcow2
    sha512: "{{ site_el9_sha512 }}"
    size: 1073741824

- name: Stage the images of every VO of the site in one call (a VO that fails does not stop the others)
  skygrid.fabric.vo_image:
    pool: vo-images
    vos:
      - vo: atlas
        images: [{image: CernVM 4.8 worker}]
        list_url: https://atlas-images.example.org/atlas.image_list
        endorsers: "{{ atlas_endorsers }}"
        prune: true
      - vo: ops
        trust_class: 1
        images: [{image: site-el9-worker, image_url: "https://repo.site.example/el9.qcow2", sha512: "{{ el9_sha512 }}", size: 1073741824}]

- name: Remove an image no VM uses any more (fails, naming the VMs, while one does)
  skygrid.fabric.vo_image:
    pool: vo-images
    vo: atlas
    image: 6a9d3c0e-1f0b-4b4e-8d65-7cf4a1b2c3d4
    state: absent
"""

RETURN = r"""
images:
  description: One result per image asked for, in order.
  returned: always
  type: list
  elements: dict
  contains:
    image_id:
      description: The image identifier.
      type: str
    title:
      description: The image title (class 2).
      type: str
    version:
      description: The image version.
      type: str
    volume:
      description: The volume name in the pool.
      type: str
    pool:
      description: The pool.
      type: str
    path:
      description: The volume's file.
      type: str
    sha512:
      description: The image's sha512 (of the image as endorsed, before any conversion).
      type: str
    trust_class:
      description: 1, 2 or 3.
      type: int
    changed:
      description: Whether this image was (or in check mode would be) staged or replaced.
      type: bool
    provenance:
      description: The provenance record (see RV(image.provenance)).
      type: dict
image:
  description: The result of the one image given with O(image) and O(state=present), shaped like an item of RV(images).
  returned: when O(image) is given and O(state=present)
  type: dict
  contains:
    provenance:
      description:
        - The provenance record kept next to the volume. C(staged_at) is null in check mode.
        - Keys C(schema), C(vo), C(trust_class), C(pool), C(volume), C(path), C(image_id),
          C(image_title), C(image_version), C(sha512), C(size), C(source_uri), C(declared_format),
          C(source_format), C(converted), C(volume_bytes), C(list_id), C(list_title), C(list_uri),
          C(list_url), C(list_version), C(list_expires), C(endorser_dn), C(endorser_ca),
          C(staged_at), C(staged_by), C(host).
      type: dict
  sample:
    image_id: 6a9d3c0e-1f0b-4b4e-8d65-7cf4a1b2c3d4
    title: CernVM 4.8 worker
    version: "4.8.2"
    volume: atlas+6a9d3c0e-1f0b-4b4e-8d65-7cf4a1b2c3d4+4.8.2.qcow2
    pool: vo-images
    path: /var/lib/libvirt/images/vo/atlas+6a9d3c0e-1f0b-4b4e-8d65-7cf4a1b2c3d4+4.8.2.qcow2
    trust_class: 2
    changed: true
    provenance:
      vo: atlas
      trust_class: 2
      image_id: 6a9d3c0e-1f0b-4b4e-8d65-7cf4a1b2c3d4
      image_version: "4.8.2"
      endorser_dn: /DC=ch/DC=cern/OU=Organic Units/OU=Users/CN=atlasimg/CN=123456/CN=ATLAS Image Endorser
      endorser_ca: /DC=ch/DC=cern/CN=CERN Grid Certification Authority
      list_id: 4f1a2c8e-0b9d-4e61-a4d7-53f0c0a1b2c3
      source_uri: https://atlas-images.example.org/cernvm-4.8.2.qcow2
      staged_at: "2026-01-06T03:00:12Z"
image_list:
  description: The verified list the images came from (class 2).
  returned: when O(trust_class=2) and O(state=present)
  type: dict
  contains:
    identifier:
      description: C(dc:identifier) of the list.
      type: str
    url:
      description: Where it was fetched from.
      type: str
    expires:
      description: C(dc:date:expires), UTC.
      type: str
    endorser:
      description: The signer, C(dn) and C(ca).
      type: dict
removed:
  description: Volumes removed by O(state=absent) (or that would be, in check mode).
  returned: always
  type: list
  elements: str
pruned:
  description: Volumes removed by O(prune) (or that would be, in check mode).
  returned: always
  type: list
  elements: str
verified:
  description:
    - With O(state=verify), one item per staged image checked - C(volume), C(status) (V(ok); V(changed) or
      V(missing), which fail the task; V(unverifiable) for a converted image staged by a release that
      kept no hash of the file, a warning) and C(detail).
  returned: when O(state=verify)
  type: list
  elements: dict
  sample: [{volume: "atlas+img+1.qcow2", status: ok, detail: "re-hashed: sha512 as staged"}]
vos:
  description:
    - With O(vos), each VO's result, shaped like a one-VO call's (C(images), C(removed), C(pruned), C(kept),
      C(image_list)), by VO name; a VO that failed is absent (see RV(failed_vos)).
  returned: when O(vos) is given
  type: dict
  sample: {atlas: {images: [], removed: [], pruned: [], kept: []}}
failed_vos:
  description: With O(vos), the VOs whose staging failed, each with its error message.
  returned: when O(vos) is given
  type: dict
  sample: {lhcb: "vos[1].list_url: the list's signature does not verify"}
kept:
  description: Volumes O(prune) would have removed but kept because they are in use, with their users.
  returned: always
  type: list
  elements: dict
  sample: [{volume: atlas+old+1.qcow2, users: ["VM wn042-atlas-1"]}]
"""

import contextlib

from ansible_collections.skygrid.fabric.plugins.module_utils.images import image_list
from ansible_collections.skygrid.fabric.plugins.module_utils.images.args import image_selector_options, trust_options
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.images.formats import DEFAULT_MAX_VIRTUAL_SIZE_GB, GIB
from ansible_collections.skygrid.fabric.plugins.module_utils.images.names import check_trust_class
from ansible_collections.skygrid.fabric.plugins.module_utils.images.staging import ImageStager
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.connection import connection
from ansible_collections.skygrid.fabric.plugins.module_utils.module_base import FabricModule

IMAGE_KEYS = ("version", "image_url", "sha512", "size", "format")


# The options that describe one VO's images; with ``vos`` they go in its items.
VO_KEYS = ("vo", "image", "images", "list_url", "endorsers", "trust_class", "prune")


class VoImageModule(FabricModule):
    supports_check_mode = True
    argument_spec = dict(
        uri=dict(type="str", default="qemu:///system"),
        pool=dict(type="str", required=True),
        vo=dict(type="str"),
        vos=dict(type="list", elements="dict", options=dict(
            vo=dict(type="str", required=True),
            trust_class=dict(type="int", default=2, choices=[1, 2, 3]),
            images=dict(type="list", elements="dict", options=image_selector_options(image_required=True)),
            list_url=dict(type="str"),
            endorsers=trust_options()["endorsers"],
            allow_http=dict(type="bool"),
            prune=dict(type="bool", default=False),
        )),
        state=dict(type="str", default="present", choices=["present", "absent", "verify"]),
        trust_class=dict(type="int", choices=[1, 2, 3]),
        allow_user_images=dict(type="bool", default=False),
        **image_selector_options(image_required=False),
        images=dict(type="list", elements="dict", options=image_selector_options(image_required=True)),
        list_url=dict(type="str"),
        **trust_options(),
        prune=dict(type="bool"),
        max_virtual_size_gb=dict(type="int", default=DEFAULT_MAX_VIRTUAL_SIZE_GB),
        provenance_log=dict(type="path"),
        validate_certs=dict(type="bool", default=True),
        timeout=dict(type="int", default=60),
    )
    module_kwargs = dict(mutually_exclusive=[("image", "images"), ("vo", "vos")], required_one_of=[("vo", "vos")])

    def run(self):
        if self.params["vos"] is None:
            return self.run_vo(dict(self.params, trust_class=self.params["trust_class"] or 2,
                                    prune=bool(self.params["prune"])))
        return self.run_vos()

    def run_vos(self):
        """Each VO of ``vos`` in turn; one that fails does not stop the others, and the task fails naming each."""
        params = self.params
        if params["state"] != "present":
            raise FabricError("stages images (state present); give one VO with 'vo' to remove or verify", field="vos")
        for key in VO_KEYS:
            if params[key] is not None:
                raise FabricError("goes in each item of 'vos' when 'vos' is given", field=key)
        results, failed = {}, {}
        for index, item in enumerate(params["vos"]):
            if item["vo"] in results or item["vo"] in failed:
                raise FabricError("names VO %s twice" % item["vo"], field="vos[%d].vo" % index)
            vo_params = dict(params, image=None)
            vo_params.update((key, item[key]) for key in ("vo", "trust_class", "images", "list_url", "endorsers", "prune"))
            if item["allow_http"] is not None:
                vo_params["allow_http"] = item["allow_http"]
            try:
                results[item["vo"]] = self.run_vo(vo_params)
            except FabricError as exc:
                failed[item["vo"]] = "vos[%d] (%s).%s" % (index, item["vo"], exc)
        if failed:
            raise FabricError("staging failed for %s: %s" % (", ".join(failed), "; ".join(failed.values())),
                              field="vos", vos=results, failed_vos=failed)
        return {"vos": results, "failed_vos": failed}

    @staticmethod
    def selectors(params):
        if params["image"] is None:
            for key in IMAGE_KEYS:
                if params[key] is not None:
                    raise FabricError("goes with 'image' (for several images give it in each item of 'images')", field=key)
            return [dict(item, path="images[%d]." % index) for index, item in enumerate(params["images"] or [])]
        item = {key: params[key] for key in IMAGE_KEYS}
        item.update(image=params["image"], path="")
        return [item]

    def lock(self, stager):
        return contextlib.nullcontext() if self.module.check_mode else stager.store.lock()

    def run_vo(self, params):
        """One VO's staging, removal or verification, from the module's options or one item of ``vos``."""
        selectors = self.selectors(params)
        result = {"images": [], "removed": [], "pruned": [], "kept": []}
        if params["state"] == "verify":
            return dict(result, verified=self.verify(params, selectors))
        if params["state"] == "absent":
            if params["prune"]:
                raise FabricError("goes with state present (it removes what the list no longer holds)", field="prune")
            if not selectors:
                raise FabricError("name the staged image(s) to remove with 'image' or 'images'", field="image")
            with connection(params["uri"]) as conn:
                stager = self.stager(conn, params)
                with self.lock(stager):
                    result["removed"] = stager.remove(stager.matching_records(selectors))
            self.warn_all(stager)
            return result
        check_trust_class(params["trust_class"], params["allow_user_images"])
        if not selectors and not params["prune"]:
            raise FabricError("give the image(s) to stage with 'image' or 'images' (or only prune: true)", field="image")
        verified = self.verified_list(params) if params["trust_class"] == 2 else None
        with connection(params["uri"]) as conn:
            stager = self.stager(conn, params)
            if verified is not None:
                items = stager.from_list(verified, selectors)
                keep = set((image["identifier"], image["version"], image["sha512"]) for image in verified["images"])
                result["image_list"] = {"identifier": verified["identifier"], "url": verified["url"],
                                        "expires": verified["expires"], "endorser": verified["signer"]}
            else:
                items = stager.pinned(params["trust_class"], selectors)
                keep = set((item["image_id"], item["version"], item["sha512"]) for item in items)
            volumes = [item["volume"] for item in items]
            for index, item in enumerate(items):
                if volumes.index(item["volume"]) != index:
                    raise FabricError("selects the same image (volume %s) as an earlier item" % item["volume"],
                                      field=item["field"])
            with self.lock(stager):
                if verified is not None:
                    stager.check_list(verified)
                result["images"] = [stager.ensure(item) for item in items]
                if params["prune"]:
                    result["pruned"], result["kept"] = stager.prune(keep, (params["trust_class"],))
                if verified is not None and not self.module.check_mode:
                    stager.remember_list(verified)
        if params["image"] is not None:
            result["image"] = result["images"][0]
        self.warn_all(stager)
        return result

    def verify(self, params, selectors):
        if params["prune"]:
            raise FabricError("goes with state present (it removes what the list no longer holds)", field="prune")
        with connection(params["uri"]) as conn:
            stager = self.stager(conn, params)
            with self.lock(stager):
                records = stager.matching_records(selectors) if selectors else stager.vo_records()
                if selectors and not records:
                    raise FabricError("no staged image of VO %s matches; nothing to verify" % stager.vo, field="image")
                verified = stager.verify(records)
        self.warn_all(stager)
        return verified

    @staticmethod
    def verified_list(params):
        if not params["list_url"]:
            raise FabricError("is required for trust_class 2: the URL of the VO's signed image list (or use "
                              "trust_class 1 with image_url, sha512 and size for a site image)", field="list_url")
        if not params["endorsers"]:
            raise FabricError("is required for trust_class 2: the VO's endorsers (dn and ca) the site accepts",
                              field="endorsers")
        return image_list.load(params["list_url"], params["endorsers"], params["ca_path"], field="list_url",
                               timeout=params["timeout"], validate_certs=params["validate_certs"],
                               crl_check=params["crl_check"], allow_http=params["allow_http"])

    def stager(self, conn, params):
        if params["trust_class"] != 2 and params["list_url"]:
            raise FabricError("is only used for trust_class 2 (VO images); a class %d image is pinned by image_url, "
                              "sha512 and size" % params["trust_class"], field="list_url")
        if params["max_virtual_size_gb"] <= 0:
            raise FabricError("must be a positive number of GiB (default %d)" % DEFAULT_MAX_VIRTUAL_SIZE_GB,
                              field="max_virtual_size_gb")
        # A check run on a new node: the pool the hypervisor role would create earlier in the run is not there.
        return ImageStager(conn, params["pool"], params["vo"], self.reconciler, timeout=params["timeout"],
                           validate_certs=params["validate_certs"], provenance_log=params["provenance_log"],
                           max_virtual_size=params["max_virtual_size_gb"] * GIB,
                           plan_missing_pool=self.module.check_mode and params["state"] == "present")

    def warn_all(self, stager):
        for warning in stager.warnings:
            self.module.warn(warning)


def main():
    VoImageModule().execute()


if __name__ == "__main__":
    main()
