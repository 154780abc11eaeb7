"""The fault harness is importable as ``harness``; the site's test bed must be up (make testbed)."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import pytest  # noqa: E402

from sitebox import start_site_in_a_box  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def site_ready():
    """Libvirt, Slurm and the demo's VO side (CA, endorsers, signed lists on 127.0.0.1), as make demo has them."""
    start_site_in_a_box()
