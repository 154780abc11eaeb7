"""The fault harness is importable as ``harness``; the site's test bed must be up (make testbed)."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import pytest  # noqa: E402

import harness  # noqa: E402
from sitebox import start_site_in_a_box  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def site_ready():
    """Libvirt, Slurm and the demo's VO side (CA, endorsers, signed lists on 127.0.0.1), as make demo has them."""
    start_site_in_a_box()


@pytest.fixture()
def converged_campaign(tmp_path, capsys):
    """Runs ``harness.campaign`` over the given faults and returns its printed report, having checked what
    every campaign run must show: each fault ran, converged and leaked nothing, and no secret is in a log."""
    def run(names):
        results, hits = harness.campaign(names, str(tmp_path))
        report = capsys.readouterr().out
        print(report)
        assert [result[0].name for result in results] == list(names)
        assert all(result[1] == "converged" for result in results), report
        assert all(not result[2] for result in results), report
        assert not hits, report
        return report
    return run
