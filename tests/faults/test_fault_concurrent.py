"""Two runs at once on the site in a box: convert with rebalance, and two converts. The run lock
(skygrid.fabric.run_lock) makes one wait for the other and name it; then no slot, address, MAC or QEMU
process exists twice, a further convert changes nothing, and a revert leaves nothing."""

from __future__ import annotations

import harness


def test_two_runs_at_once_wait_for_each_other_and_duplicate_nothing(converged_campaign):
    report = converged_campaign(harness.CONCURRENT)
    lines = [line for line in report.splitlines() if line.startswith("fault=concurrent")]
    # each pair: the later run named the one it waited for (or they happened not to overlap at all)
    assert all(" waited " in line or "one ran after the other" in line for line in lines), report
