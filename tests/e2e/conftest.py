"""The site in a box for end-to-end tests: this machine as a one-node Slurm site (inventories/local),
with the demo's signed VO images served from 127.0.0.1. Playbooks run as a site admin runs them."""

from __future__ import annotations

import pytest

from sitebox import INVENTORY, run_playbook, start_site_in_a_box


@pytest.fixture(scope="session")
def site():
    """Libvirt, Slurm and the VO side ready; the site not converted."""
    start_site_in_a_box()
    rc, out = run_playbook("revert_worker_nodes")  # whatever an earlier run left
    assert rc == 0, out[-3000:]
    yield INVENTORY
    run_playbook("revert_worker_nodes")


@pytest.fixture(scope="session")
def converted_site(site):
    rc, out = run_playbook("convert_worker_nodes")
    assert rc == 0, out[-4000:]
    yield site
