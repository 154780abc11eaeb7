"""A sample of the fault campaign inside `make test`: a playbook killed while it starts the VMs and while
it removes them; each must converge on the next run and leave nothing after a revert; no munge key in
any log, one at -vvv. The whole campaign is `make faults` (tests/faults/harness.py)."""

from __future__ import annotations

import harness


def test_sample_of_faults_converges_and_leaks_nothing(tmp_path, capsys):
    results, hits = harness.campaign(harness.SAMPLE, str(tmp_path))
    report = capsys.readouterr().out
    print(report)
    assert [result[0].name for result in results] == list(harness.SAMPLE)
    assert all(result[1] == "converged" for result in results), report
    assert all(not result[2] for result in results), report
    assert not hits, report
