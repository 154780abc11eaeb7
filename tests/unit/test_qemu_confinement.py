"""The hypervisor warns where no security driver confines QEMU."""

from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt import host

CAPS = ("<capabilities><host><secmodel><model>%s</model><doi>0</doi></secmodel>"
        "<secmodel><model>dac</model><doi>0</doi></secmodel></host></capabilities>")


class Conn:
    def __init__(self, model):
        self.model = model

    def getCapabilities(self):  # noqa: N802 - libvirt's name
        return CAPS % self.model


def test_models_are_read_from_the_capabilities():
    assert host.security_models(Conn("apparmor")) == ["apparmor", "dac"]


def test_dac_alone_is_warned_about():
    warning = host.confinement_warning(host.security_models(Conn("none")))
    assert "no security driver confines QEMU" in warning and "none, dac" in warning and "AppArmor" in warning


def test_apparmor_or_selinux_is_enough():
    assert host.confinement_warning(["apparmor", "dac"]) is None
    assert host.confinement_warning(["selinux", "dac"]) is None
