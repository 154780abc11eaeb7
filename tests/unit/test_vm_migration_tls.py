"""Live migration over TLS encrypts the migration stream too (VIR_MIGRATE_TLS), not only the control link."""

import pytest

libvirt = pytest.importorskip("libvirt")

from ansible_collections.skygrid.fabric.plugins.module_utils.reconcile import Reconciler  # noqa: E402
from ansible_collections.skygrid.fabric.plugins.module_utils.vm.migration import Migration, migrate_over_tls  # noqa: E402


@pytest.mark.parametrize("uri, asked, expected", [
    ("qemu+tls://wn043.example.org/system", None, True),
    ("qemu+ssh://wn043.example.org/system", None, False),
    ("qemu+tcp://10.254.0.2/system", None, False),
    ("qemu+ssh://wn043.example.org/system", True, True),
    ("qemu+tls://wn043.example.org/system", False, False),
])
def test_tls_follows_the_destination_uri_unless_asked(uri, asked, expected):
    assert migrate_over_tls(uri, asked) is expected


class FakeDomain:
    def __init__(self):
        self.flags = None

    def XMLDesc(self, flags):  # noqa: N802 - libvirt's name
        return "<domain type='qemu'><name>sgunit</name></domain>"

    def migrate3(self, dst, params, flags):
        self.flags = flags

    def name(self):
        return "sgunit"


@pytest.mark.parametrize("uri, has_tls", [("qemu+tls://wn043/system", True), ("qemu+ssh://wn043/system", False)])
def test_the_migration_call_carries_the_tls_flag(uri, has_tls):
    dom = FakeDomain()
    Migration(None, object(), uri, {"migrate_timeout": 10}, Reconciler(check_mode=False))._migrate(dom, {"disks": []}, [])
    assert bool(dom.flags & libvirt.VIR_MIGRATE_TLS) is has_tls
    assert dom.flags & libvirt.VIR_MIGRATE_LIVE
