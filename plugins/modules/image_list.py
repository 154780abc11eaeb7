#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_list
short_description: Fetch and verify a VO's signed HEPiX image list
version_added: "0.1.0"
description:
  - Fetches a Virtual Organisation's HEPiX image list (the format vmcatcher subscribes to) over
    https, http or from a file, verifies its S/MIME signature, and returns the endorser and the images.
  - The signature must cover the content (a detached PKCS#7 signature, C(multipart/signed), as
    C(openssl smime -sign) writes it); the signer's subject and issuer must be one of O(endorsers)
    and equal the list's own C(hv:endorser) C(hv:dn) and C(hv:ca); its chain must end at the CA
    certificate pinned for that endorser (O(endorsers[].ca_sha256) or O(endorsers[].ca_cert)); and it
    must verify against O(ca_path) only (the system trust store is not used), with revocation checked
    against the CRLs there (O(crl_check)).
  - An unsigned list, a list whose signature does not match its content, an unknown, untrusted,
    wrongly chained or revoked signer, a missing or out-of-date CRL, an C(http://) URL without
    O(allow_http), an expired list (C(dc:date:expires)) and a malformed list each fail with an error that
    says which and what to do. Only the content the signature covers is parsed.
  - Reads only; M(skygrid.fabric.vo_image) stages the images.
extends_documentation_fragment:
  - skygrid.fabric.image_trust
author:
  - skygrid.fabric contributors (@skygrid)
requirements:
  - the openssl command line tool on the host the module runs on
attributes:
  check_mode:
    support: full
    description: Runs everything (it only reads) and reports the same result.
  diff_mode:
    support: none
    description: Reads only.
options:
  url:
    description: URL of the signed image list (C(https://), C(http://) or C(file://)).
    type: str
    required: true
    aliases: [list_url]
  validate_certs:
    description: Verify the TLS certificate of an https O(url).
    type: bool
    default: true
  timeout:
    description: Seconds to wait for the server.
    type: int
    default: 30
notes:
  - The list is at most 16 MiB.
seealso:
  - module: skygrid.fabric.vo_image
"""

EXAMPLES = r"""
- name: Fetch and verify the ATLAS image list
  skygrid.fabric.image_list:
    url: https://atlas-images.example.org/atlas.image_list
    endorsers:
      - dn: /DC=ch/DC=cern/OU=Organic Units/OU=Users/CN=atlasimg/CN=123456/CN=ATLAS Image Endorser
        ca: /DC=ch/DC=cern/CN=CERN Grid Certification Authority
        ca_sha256: "{{ cern_grid_ca_sha256 }}"   # openssl x509 -in <CA>.pem -noout -fingerprint -sha256
    ca_path: /etc/grid-security/certificates
  register: atlas_list

- name: Show what the VO endorses
  ansible.builtin.debug:
    msg: "{{ item.identifier }} {{ item.title }} {{ item.version }} ({{ item.size }} bytes)"
  loop: "{{ atlas_list.images }}"
  loop_control:
    label: "{{ item.identifier }}"
"""

RETURN = r"""
image_list:
  description: The list's own fields.
  returned: success
  type: dict
  contains:
    identifier:
      description: C(dc:identifier) of the list.
      type: str
    title:
      description: C(dc:title).
      type: str
    description:
      description: C(dc:description).
      type: str
    created:
      description: C(dc:date:created), UTC.
      type: str
    expires:
      description: C(dc:date:expires), UTC.
      type: str
    source:
      description: C(dc:source).
      type: str
    uri:
      description: C(hv:uri), where the VO publishes the list.
      type: str
    url:
      description: Where it was fetched from (O(url)).
      type: str
    version:
      description: C(hv:version).
      type: str
  sample:
    identifier: 4f1a2c8e-0b9d-4e61-a4d7-53f0c0a1b2c3
    title: ATLAS endorsed images
    created: "2026-01-05T10:00:00Z"
    expires: "2026-02-05T10:00:00Z"
    uri: https://atlas-images.example.org/atlas.image_list
    url: https://atlas-images.example.org/atlas.image_list
    version: "12"
endorser:
  description: The endorser the list names (C(hv:endorser)), whose certificate signed it.
  returned: success
  type: dict
  contains:
    dn:
      description: Subject DN, OpenSSL slash form.
      type: str
    ca:
      description: Issuer DN.
      type: str
    creator:
      description: C(dc:creator).
      type: str
    email:
      description: C(hv:email).
      type: str
  sample:
    dn: /DC=ch/DC=cern/OU=Organic Units/OU=Users/CN=atlasimg/CN=123456/CN=ATLAS Image Endorser
    ca: /DC=ch/DC=cern/CN=CERN Grid Certification Authority
images:
  description: The endorsed images, in list order.
  returned: success
  type: list
  elements: dict
  contains:
    identifier:
      description: C(dc:identifier).
      type: str
    title:
      description: C(dc:title).
      type: str
    version:
      description: C(hv:version).
      type: str
    uri:
      description: C(hv:uri), where the image is downloaded from.
      type: str
    size:
      description: C(hv:size) in bytes.
      type: int
    sha512:
      description: C(sl:checksum:sha512), lower case.
      type: str
    format:
      description: C(hv:format), lower case.
      type: str
    hypervisor:
      description: C(hv:hypervisor).
      type: str
    arch:
      description: C(sl:arch).
      type: str
    os:
      description: C(sl:os).
      type: str
    osversion:
      description: C(sl:osversion).
      type: str
    vo:
      description: C(ad:vo) when the list gives it.
      type: str
  sample:
    - identifier: 6a9d3c0e-1f0b-4b4e-8d65-7cf4a1b2c3d4
      title: CernVM 4.8 worker
      version: "4.8.2"
      uri: https://atlas-images.example.org/cernvm-4.8.2.qcow2
      size: 2147483648
      sha512: 0d3f...e1
      format: qcow2
"""

from ansible_collections.skygrid.fabric.plugins.module_utils.images import image_list
from ansible_collections.skygrid.fabric.plugins.module_utils.images.args import trust_options
from ansible_collections.skygrid.fabric.plugins.module_utils.module_base import FabricModule


class ImageListModule(FabricModule):
    supports_check_mode = True
    argument_spec = dict(
        url=dict(type="str", required=True, aliases=["list_url"]),
        **trust_options(),
        validate_certs=dict(type="bool", default=True),
        timeout=dict(type="int", default=30),
    )

    def run(self):
        params = self.params
        verified = image_list.load(params["url"], params["endorsers"], params["ca_path"], field="url",
                                   timeout=params["timeout"], validate_certs=params["validate_certs"],
                                   crl_check=params["crl_check"], allow_http=params["allow_http"])
        images = verified.pop("images")
        endorser = verified.pop("endorser")
        verified.pop("signer")
        return {"changed": False, "image_list": verified, "endorser": endorser, "images": images}


def main():
    ImageListModule().execute()


if __name__ == "__main__":
    main()
