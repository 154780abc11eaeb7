"""The fault harness is importable as ``harness``; the site's test bed must be up (make testbed)."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import pytest  # noqa: E402

from sitebox import ROOT, sh  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def site_ready():
    """Libvirt, Slurm and the demo's VO side (CA, endorsers, signed lists on 127.0.0.1), as make demo has them."""
    sh("bash", os.path.join(ROOT, "scripts", "testbed.sh"), "start")
    sh("bash", os.path.join(ROOT, "scripts", "slurm-testbed.sh"), "start")
    sh(sys.executable, os.path.join(ROOT, "scripts", "site_in_a_box", "prepare.py"))
