"""Which cluster each VO's VMs join: the site's for site-built images only."""

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils.batch import domains
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

VOS = {"atlas": {"trust_class": 2}, "lhcb": {}, "users": {"trust_class": "3"}, "ops": {"trust_class": 1}}


def test_only_site_built_vos_join_the_site_cluster():
    assert domains.site_built_vos(VOS) == ["ops"]
    env = domains.batch_env(VOS, "slurm", "/etc/slurm/vo/")
    assert env == {"atlas": {"SLURM_CONF": "/etc/slurm/vo/atlas/slurm.conf"},
                   "lhcb": {"SLURM_CONF": "/etc/slurm/vo/lhcb/slurm.conf"},  # class 2 by default
                   "users": {"SLURM_CONF": "/etc/slurm/vo/users/slurm.conf"},
                   "ops": {}}


def test_torque_has_one_server():
    assert domains.batch_env(VOS, "torque") == {vo: {} for vo in VOS}


def test_a_bad_trust_class_names_the_field():
    with pytest.raises(FabricError) as err:
        domains.site_built_vos({"atlas": {"trust_class": "high"}})
    assert err.value.field == "trust_class"
