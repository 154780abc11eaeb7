"""The playbooks AWX would run go against the site in a box, so its daemons and VO side must be up:
a fresh machine (CI) has none of them before this suite."""

import pytest

from sitebox import start_site_in_a_box


@pytest.fixture(scope="session")
def site_in_a_box():
    start_site_in_a_box()
