"""vm_info's listing (module_utils/vm/report.py) on a host where other runs add and remove VMs meanwhile."""

from __future__ import annotations

import pytest

libvirt = pytest.importorskip("libvirt")

from ansible_collections.skygrid.fabric.plugins.module_utils.vm import report  # noqa: E402


def libvirt_error(code):
    exc = libvirt.libvirtError("domain error")
    exc.err = (code, 0, "domain error", 2, None, None, None, 0, 0)
    return exc


class VanishedDomain:
    """A domain that was listed and then undefined before it was read."""

    def __init__(self, code):
        self.code = code

    def isPersistent(self):
        raise libvirt_error(self.code)


class Conn:
    def __init__(self, domains):
        self.domains = domains

    def listAllDomains(self, flags=0):
        return self.domains


def test_a_domain_undefined_while_listed_is_left_out():
    assert report.describe_all(Conn([VanishedDomain(libvirt.VIR_ERR_NO_DOMAIN)])) == []


def test_other_libvirt_errors_still_fail():
    with pytest.raises(libvirt.libvirtError):
        report.describe_all(Conn([VanishedDomain(libvirt.VIR_ERR_INTERNAL_ERROR)]))
