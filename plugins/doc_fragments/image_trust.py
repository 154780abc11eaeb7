# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # Whom a VO's signed image list must come from (image_list, vo_image): endorsers, their pinned CAs, CRLs, http.
    DOCUMENTATION = r"""
options:
  endorsers:
    description:
      - The VO's endorsers the site accepts (trust class 2). A list signed by anyone else is refused.
      - DNs in OpenSSL slash form (C(/C=CH/O=CERN/CN=Jane Endorser)); C(Email=) and C(emailAddress=)
        are the same attribute.
      - Each endorser pins its CA by the certificate itself, not only by name - give exactly one of
        O(endorsers[].ca_sha256) and O(endorsers[].ca_cert). The signer's chain must end at that
        certificate; a certificate with the right names made by another CA (even one in O(ca_path)) is refused.
    type: list
    elements: dict
    suboptions:
      dn:
        description: Subject DN of the endorser's certificate.
        type: str
        required: true
      ca:
        description: Subject DN of the CA that issued it.
        type: str
        required: true
      ca_sha256:
        description:
          - SHA-256 fingerprint of that CA's certificate, which must be in O(ca_path)
            (C(openssl x509 -in <CA>.pem -noout -fingerprint -sha256) prints it; colons optional).
        type: str
      ca_cert:
        description: A file on the host holding that CA's certificate (PEM), instead of O(endorsers[].ca_sha256).
        type: path
  ca_path:
    description:
      - Directory of trusted CA certificates in OpenSSL hashed form (C(<hash>.0) files) and their CRLs
        (C(<hash>.r0)), as the IGTF distribution and C(fetch-crl) install them.
    type: path
    default: /etc/grid-security/certificates
  crl_check:
    description:
      - Check that no certificate of the signer's chain is revoked, with the CRLs in O(ca_path).
        A missing or out-of-date CRL is then an error (run C(fetch-crl)).
      - V(false) accepts lists without revocation checks - a revoked endorser is then accepted too.
    type: bool
    default: true
  allow_http:
    description:
      - Accept an C(http://) list URL. Over plain http anyone on the path can withhold a new list or
        replay an old one (until it expires), so it needs this consent; https and file URLs do not.
    type: bool
    default: false
"""
