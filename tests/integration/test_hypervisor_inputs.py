"""The hypervisor role refuses, before any change, a VM network that cannot be isolated and a migration
listener that would bind everywhere or accept any certificate of the CA."""

from __future__ import annotations

import pytest
from test_batch_roles import playbook

TLS = {"hypervisor_migration_transport": "tls", "hypervisor_migration_tls_cacert": "/etc/pki/CA/cacert.pem",
       "hypervisor_migration_tls_cert": "/etc/pki/libvirt/servercert.pem",
       "hypervisor_migration_tls_key": "/etc/pki/libvirt/private/serverkey.pem"}


@pytest.mark.parametrize("settings, words", [
    ({"hypervisor_networks": [{"name": "sgval-net", "mode": "nat", "cidr": "192.168.250.0/24"}]},
     "sgval-net name no bridge"),
    (dict(TLS, hypervisor_migration_tls_allowed_dns=["CN=wn*.example.org"]), "hypervisor_migration_listen_address"),
    (dict(TLS, hypervisor_migration_listen_address="10.254.0.1"), "hypervisor_migration_tls_allowed_dns"),
])
def test_refused_before_any_change(tmp_path, settings, words):
    play = [{"hosts": "localhost", "gather_facts": True, "tasks": [
        {"name": "Validate", "ansible.builtin.include_role": {"name": "skygrid.fabric.hypervisor", "tasks_from": "validate"},
         "vars": settings}]}]
    rc, output = playbook(tmp_path, play)
    assert rc != 0 and words in output, output[-2000:]
