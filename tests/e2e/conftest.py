"""The site in a box for end-to-end tests: this machine as a one-node Slurm site (inventories/local),
with the demo's signed VO images served from 127.0.0.1. Playbooks run as a site admin runs them."""

from __future__ import annotations

import os
import sys

import pytest

from sitebox import INVENTORY, ROOT, run_playbook, sh


@pytest.fixture(scope="session")
def site():
    """Libvirt, Slurm and the VO side ready; the site not converted."""
    sh("bash", os.path.join(ROOT, "scripts", "testbed.sh"), "start")
    sh("bash", os.path.join(ROOT, "scripts", "slurm-testbed.sh"), "start")
    sh(sys.executable, os.path.join(ROOT, "scripts", "site_in_a_box", "prepare.py"))
    rc, out = run_playbook("revert_worker_nodes")  # whatever an earlier run left
    assert rc == 0, out[-3000:]
    yield INVENTORY
    run_playbook("revert_worker_nodes")


@pytest.fixture(scope="session")
def converted_site(site):
    rc, out = run_playbook("convert_worker_nodes")
    assert rc == 0, out[-4000:]
    yield site
