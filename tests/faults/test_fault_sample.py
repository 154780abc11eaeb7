"""A sample of the fault campaign inside `make test`: a playbook killed while it starts the VMs and while
it removes them; each must converge on the next run and leave nothing after a revert; no munge key in
any log, one at -vvv. The whole campaign is `make faults` (tests/faults/harness.py)."""

from __future__ import annotations

import harness


def test_sample_of_faults_converges_and_leaks_nothing(converged_campaign):
    converged_campaign(harness.SAMPLE)
