"""host_config: key = value settings, whole files, kernel tunables and device nodes in one pass."""

from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt import host_config
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.reconcile import Reconciler

QEMU_CONF = """# qemu.conf
#user = "root"
#group = "root"
dynamic_ownership = 0
dynamic_ownership = 0
security_driver = "selinux"
"""


def test_settings_replace_the_last_line_uncomment_and_append():
    wanted = {"user": '"libvirt-qemu"', "dynamic_ownership": "1", "remember_owner": "1"}
    text = host_config.apply_settings(QEMU_CONF, wanted)
    lines = text.splitlines()
    assert 'user = "libvirt-qemu"' in lines and '#user = "root"' not in lines
    assert lines.count("dynamic_ownership = 0") == 1 and lines[4] == "dynamic_ownership = 1"
    assert lines[-1] == "remember_owner = 1" and '#group = "root"' in lines


def test_settings_of_reads_the_effective_values():
    assert host_config.settings_of(QEMU_CONF, ["user", "dynamic_ownership", "security_driver"]) == {
        "user": None, "dynamic_ownership": "0", "security_driver": '"selinux"'}


def test_converge_settings_changes_once_then_nothing(tmp_path):
    conf = tmp_path / "qemu.conf"
    conf.write_text(QEMU_CONF)
    os.chmod(conf, 0o644)
    items = [{"path": str(conf), "values": {"user": '"libvirt-qemu"'}, "mode": "0600"}]
    first = Reconciler()
    host_config.converge(first, settings=items)
    assert first.changed and first.before[str(conf)] == {"user": None}
    assert first.after[str(conf)] == {"user": '"libvirt-qemu"'}
    assert stat.S_IMODE(os.stat(conf).st_mode) == 0o600 and 'user = "libvirt-qemu"' in conf.read_text()
    second = Reconciler()
    host_config.converge(second, settings=items)
    assert not second.changed and second.actions == []


def test_check_mode_reports_and_writes_nothing(tmp_path):
    conf = tmp_path / "libvirtd.conf"
    conf.write_text("listen_tls = 1\n")
    target = tmp_path / "sub" / "fact.json"
    rec = Reconciler(check_mode=True)
    host_config.converge(rec, settings=[{"path": str(conf), "values": {"listen_tls": "0"}}],
                         files=[{"path": str(target), "content": "{}\n", "mode": "0644"}])
    assert rec.changed and len(rec.actions) == 3  # the setting, the directory, the file
    assert conf.read_text() == "listen_tls = 1\n" and not target.parent.exists()


def test_files_exact_content_mode_and_parents(tmp_path):
    target = tmp_path / "facts.d" / "skygrid.fact"
    item = {"path": str(target), "content": '{"cpus": 2}\n', "mode": "0644", "parents": True}
    rec = Reconciler()
    host_config.converge(rec, files=[item])
    assert target.read_text() == '{"cpus": 2}\n' and rec.before == {} and rec.after[str(target)] == item["content"]
    os.chmod(target, 0o666)
    again = Reconciler()
    host_config.converge(again, files=[item])
    assert again.actions == ["set the mode of %s to 0644" % target]
    assert not [name for name in os.listdir(target.parent) if name.startswith(".")]  # no temporary left


def test_files_without_parents_name_the_field(tmp_path):
    with pytest.raises(FabricError) as err:
        host_config.converge(Reconciler(), files=[{"path": str(tmp_path / "no" / "f"), "content": "",
                                                   "parents": False}])
    assert err.value.field == "files[0].path" and "parents: true" in str(err.value)


@pytest.mark.parametrize("item, field", [
    ({"path": "relative/qemu.conf", "values": {}}, "settings[0].path"),
    ({"path": "/etc/../etc/qemu.conf", "values": {}}, "settings[0].path"),
    ({"path": "/tmp/x.conf", "values": {"bad key": "1"}}, "settings[0].values"),
    ({"path": "/tmp/x.conf", "values": {"user": "a\nlisten_tcp = 1"}}, "settings[0].values"),
    ({"path": "/tmp/x.conf", "values": {}, "mode": "rw-r--r--"}, "settings[0].mode"),
])
def test_bad_settings_name_the_field(item, field):
    with pytest.raises(FabricError) as err:
        host_config.converge(Reconciler(check_mode=True), settings=[item])
    assert err.value.field == field


def test_kernel_tunables_only_under_sys_and_must_exist(tmp_path):
    with pytest.raises(FabricError) as err:
        host_config.converge(Reconciler(check_mode=True), kernel={"/etc/passwd": "1"})
    assert err.value.field == "kernel./etc/passwd"
    with pytest.raises(FabricError) as err:
        host_config.converge(Reconciler(check_mode=True), kernel={"/sys/kernel/mm/no_such_feature/run": "1"})
    assert "lacks the feature" in str(err.value)


def test_kernel_tunable_already_set_is_left_alone():
    path = "/proc/sys/kernel/ostype"  # readable everywhere; comparing is all this does
    value = open(path).read().strip()
    rec = Reconciler(check_mode=True)
    host_config.converge(rec, kernel={path: value})
    assert not rec.changed
    host_config.converge(rec, kernel={path: value + "x"})
    assert rec.actions == ["set %s to %sx" % (path, value)]


def test_devices_group_and_mode(tmp_path):
    import grp
    try:
        kvm = grp.getgrnam("kvm")
    except KeyError:
        pytest.skip("no kvm group here")
    node = tmp_path / "kvm"
    node.write_text("")
    os.chown(node, 0, 0)
    os.chmod(node, 0o600)
    item = {"path": str(node), "group": "kvm", "mode": "0660"}
    rec = Reconciler()
    host_config.converge(rec, devices=[item])
    assert os.stat(node).st_gid == kvm.gr_gid and stat.S_IMODE(os.stat(node).st_mode) == 0o660
    assert len(rec.actions) == 2
    again = Reconciler()
    host_config.converge(again, devices=[item, {"path": str(tmp_path / "absent"), "group": "kvm"}])
    assert not again.changed
    with pytest.raises(FabricError) as err:
        host_config.converge(Reconciler(), devices=[{"path": str(node), "group": "no-such-group-sg"}])
    assert err.value.field == "devices[0].group"


def test_commands_run_in_order_with_their_environment_and_report_a_change_only_on_a_match(tmp_path):
    log = tmp_path / "log"
    rec = Reconciler()
    outcomes = host_config.run_commands(rec, [
        {"argv": ["sh", "-c", 'echo "first $WHO" >> %s; echo "already running"' % log], "environment": {"WHO": "a"},
         "changed_regex": "^started$"},
        {"argv": ["sh", "-c", "echo second >> %s; echo noise; echo started" % log], "changed_regex": "^started$"},
    ])
    assert log.read_text() == "first a\nsecond\n"
    assert [o["changed"] for o in outcomes] == [False, True]
    assert outcomes[1]["stdout_lines"] == ["noise", "started"] and outcomes[1]["rc"] == 0
    assert rec.changed and rec.actions == ["ran sh -c echo second >> %s; echo noise; echo started (it changed something)" % log]


def test_commands_without_a_regex_are_no_change():
    rec = Reconciler()
    assert host_config.run_commands(rec, [{"argv": ["echo", "started"]}])[0]["changed"] is False
    assert not rec.changed


def test_commands_do_not_run_in_check_mode(tmp_path):
    marker = tmp_path / "ran"
    rec = Reconciler(check_mode=True)
    outcomes = host_config.run_commands(rec, [{"argv": ["touch", str(marker)], "changed_regex": "."}])
    assert not marker.exists() and outcomes[0]["ran"] is False and not rec.changed


def test_a_failing_command_stops_the_run_naming_it_with_its_output(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(FabricError) as info:
        host_config.run_commands(Reconciler(), [
            {"argv": ["sh", "-c", "echo 'rules did not apply' >&2; exit 3"]},
            {"argv": ["touch", str(marker)]},
        ])
    assert info.value.field == "commands[0].argv"
    assert "exited with 3" in str(info.value) and "rules did not apply" in str(info.value)
    assert not marker.exists()  # the next command never ran


def test_a_missing_program_names_the_field():
    with pytest.raises(FabricError) as info:
        host_config.run_commands(Reconciler(), [{"argv": ["true"]}, {"argv": ["/nonexistent/skygrid-start"]}])
    assert info.value.field == "commands[1].argv" and "/nonexistent/skygrid-start" in str(info.value)
