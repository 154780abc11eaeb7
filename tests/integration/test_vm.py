"""skygrid.fabric.vm against the live libvirtd: every state transition, idempotency, check mode,
diff, the vms list, the tiny guest reading its NoCloud seed and DHCP lease, and each error."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from conftest import BASE_VOLUME, GUEST_IP, GUEST_MAC, NET_PREFIX, NETWORK, POOL, PREFIX, URI, wait_for
from modrun import run_module

pytestmark = pytest.mark.libvirt
libvirt = pytest.importorskip("libvirt")


def vm(**args):
    args.setdefault("uri", URI)
    args.setdefault("virt_type", "qemu")
    args.setdefault("memory_mb", 64)
    return args


def ok(result):
    assert not result.failed, result.get("msg")
    return result


def dom_state(conn, name):
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return "absent"
    return {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
            libvirt.VIR_DOMAIN_SHUTOFF: "shutoff"}.get(dom.state()[0], dom.state()[0])


def volumes(pool):
    pool.refresh(0)
    return set(pool.listVolumes())


def test_state_transitions_are_idempotent(conn, pool, base_volume):
    name = PREFIX + "-states"
    spec = vm(name=name, disks=[{"pool": POOL, "base_volume": BASE_VOLUME}])
    steps = [("present", "shutoff"), ("running", "running"), ("paused", "paused"),
             ("running", "running"), ("paused", "paused"), ("present", "paused")]
    for state, expected in steps:
        first = ok(run_module("vm", dict(spec, state=state)))
        assert dom_state(conn, name) == expected, state
        again = ok(run_module("vm", dict(spec, state=state)))
        assert again["changed"] is False, (state, again["actions"])
    assert first["vm"]["spec"]["disks"][0]["volume"] == name + "-vda.qcow2"
    # No OS answers ACPI here: shutdown must time out, fail clearly and leave the VM running...
    failed = run_module("vm", dict(spec, state="shutdown", shutdown_timeout=1))
    assert failed.failed and failed["field"] == "shutdown_timeout" and "force: true" in failed["msg"]
    assert dom_state(conn, name) == "running"  # a paused VM is resumed so it can see the event
    # ...and with force it powers the VM off.
    forced = ok(run_module("vm", dict(spec, state="shutdown", shutdown_timeout=1, force=True)))
    assert forced["vm"]["shutdown"] == "forced" and dom_state(conn, name) == "shutoff"
    assert ok(run_module("vm", dict(spec, state="shutdown")))["changed"] is False
    # paused from shut off starts paused
    ok(run_module("vm", dict(spec, state="paused")))
    assert dom_state(conn, name) == "paused"
    gone = ok(run_module("vm", dict(spec, state="absent")))
    assert gone["changed"] and dom_state(conn, name) == "absent"
    assert name + "-vda.qcow2" not in volumes(pool) and BASE_VOLUME in volumes(pool)
    assert ok(run_module("vm", dict(spec, state="absent")))["changed"] is False


def test_check_mode_changes_nothing_and_diff_shows_the_spec(conn, pool, base_volume):
    name = PREFIX + "-check"
    spec = vm(name=name, state="running", disks=[{"pool": POOL, "base_volume": BASE_VOLUME}],
              cloud_init={"user_data": "#cloud-config\n{}\n"})
    result = ok(run_module("vm", spec, check=True, diff=True))
    assert result["changed"] is True
    assert result["actions"] == ["create volume %s/%s-vda.qcow2 on %s" % (POOL, name, BASE_VOLUME),
                                 "write NoCloud seed %s/%s-cidata.iso" % (POOL, name),
                                 "define VM " + name, "start VM " + name]
    assert result["diff"]["before"] == {} and result["diff"]["after"][name]["vcpus"] == 1
    assert dom_state(conn, name) == "absent"
    assert not {name + "-vda.qcow2", name + "-cidata.iso"} & volumes(pool)
    # Once it exists, check mode predicts a stop without doing it.
    ok(run_module("vm", spec))
    stop = ok(run_module("vm", dict(spec, state="absent"), check=True))
    assert stop["changed"] and stop["actions"][:2] == ["power off VM " + name, "undefine VM " + name]
    assert dom_state(conn, name) == "running"
    ok(run_module("vm", dict(spec, state="absent")))


def test_check_mode_plans_a_vm_on_a_pool_and_network_not_defined_yet(conn):
    """A play's check run on a new node: the pool and network the hypervisor role defines earlier in the run
    are not there. The VM is planned with a warning naming each; a real run fails naming the pool."""
    name = PREFIX + "-newnode"
    spec = vm(name=name, state="running", disks=[{"pool": PREFIX + "-no-pool", "base_volume": BASE_VOLUME}],
              nics=[{"network": PREFIX + "-no-net", "ip": NET_PREFIX + ".32"}],
              cloud_init={"user_data": "#cloud-config\n{}\n"})
    result = ok(run_module("vm", spec, check=True))
    assert result["changed"] is True and result["actions"] == [
        "create volume %s-no-pool/%s-vda.qcow2 on %s" % (PREFIX, name, BASE_VOLUME),
        "write NoCloud seed %s-no-pool/%s-cidata.iso" % (PREFIX, name), "define VM " + name, "start VM " + name]
    warnings = " ".join(str(warning) for warning in result.get("warnings", []))
    assert "storage pool '%s-no-pool' does not exist (yet)" % PREFIX in warnings
    assert "libvirt network '%s-no-net' does not exist (yet)" % PREFIX in warnings
    assert dom_state(conn, name) == "absent"
    real = run_module("vm", spec)
    assert real.failed and real["field"] == "disks[0].pool" and "does not exist" in real["msg"]


def test_update_in_place_keeps_uuid_and_macs(conn, pool, base_volume, network):
    name = PREFIX + "-update"
    spec = vm(name=name, state="running", disks=[{"pool": POOL, "base_volume": BASE_VOLUME}],
              nics=[{"network": NETWORK, "ip": NET_PREFIX + ".31"}], metadata={"vo": "atlas"})
    created = ok(run_module("vm", spec))["vm"]
    bigger = ok(run_module("vm", dict(spec, vcpus=2, memory_mb=96), diff=True))
    assert bigger["changed"] and bigger["restart_required"] is True
    assert bigger["vm"]["uuid"] == created["uuid"]
    assert bigger["vm"]["spec"]["nics"][0]["mac"] == created["spec"]["nics"][0]["mac"]
    assert bigger["diff"]["before"][name]["vcpus"] == 1 and bigger["diff"]["after"][name]["vcpus"] == 2
    assert conn.lookupByName(name).info()[3] == 1  # the running VM keeps its old size until restarted
    # The same spec again: nothing to change, but the restart is still pending.
    again = ok(run_module("vm", dict(spec, vcpus=2, memory_mb=96)))
    assert again["changed"] is False and again["restart_required"] is True
    # Metadata changes reach the running VM without a restart.
    ok(run_module("vm", dict(spec, state="shutdown", force=True, shutdown_timeout=0)))
    ok(run_module("vm", dict(spec, vcpus=2, memory_mb=96)))
    relabel = ok(run_module("vm", dict(spec, vcpus=2, memory_mb=96, metadata={"vo": "lhcb", "trust_class": 2})))
    assert relabel["changed"] and relabel["restart_required"] is False
    info = ok(run_module("vm_info", {"uri": URI, "name": name}))["vms"][0]
    assert info["metadata"] == {"vo": "lhcb", "trust_class": "2"} and info["vcpus"] == 2
    ok(run_module("vm", dict(spec, state="absent")))


def test_vms_list_in_one_call(conn, pool, base_volume):
    names = ["%s-list-%d" % (PREFIX, i) for i in range(4)]
    call = vm(state="running", disks=[{"pool": POOL, "base_volume": BASE_VOLUME}],
              vms=[{"name": n} for n in names[:3]] + [{"name": names[3], "state": "present", "vcpus": 2}])
    result = ok(run_module("vm", call))
    assert [r["name"] for r in result["vms"]] == names and all(r["changed"] for r in result["vms"])
    assert [dom_state(conn, n) for n in names] == ["running"] * 3 + ["shutoff"]
    assert result["vms"][3]["spec"]["vcpus"] == 2
    assert ok(run_module("vm", call))["changed"] is False
    info = ok(run_module("vm_info", {"uri": URI}))
    assert set(names) <= {v["name"] for v in info["vms"]}
    gone = ok(run_module("vm", dict(call, state="absent", vms=[{"name": n, "state": "absent"} for n in names])))
    assert all(r["changed"] for r in gone["vms"])
    assert all(dom_state(conn, n) == "absent" for n in names)
    assert not {n + "-vda.qcow2" for n in names} & volumes(pool)


def test_tiny_guest_boots_reads_seed_and_gets_its_lease(conn, pool, base_volume, network, guest, tmp_path):
    name = PREFIX + "-guest"
    marker = uuid.uuid4().hex
    log = "/var/log/libvirt/qemu/%s-console.log" % name
    spec = vm(name=name, state="running", memory_mb=256, kernel=guest["kernel"], initrd=guest["initrd"],
              cmdline="console=ttyS0 quiet", console_log=log,
              disks=[{"pool": POOL, "base_volume": BASE_VOLUME}],
              nics=[{"network": NETWORK, "mac": GUEST_MAC, "ip": GUEST_IP}],
              cloud_init={"user_data": "#cloud-config\n#skygrid-marker: %s\n" % marker,
                          "meta_data": {"local-hostname": "sgtest-guest"}},
              metadata={"vo": "atlas", "trust_class": 2, "image_id": "sgtest-image"})
    if os.path.exists(log):
        os.unlink(log)  # console logs are appended to: start from an empty one
    ok(run_module("vm", spec))

    def console():
        try:
            with open(log, errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    wait_for(lambda: "SKYGRID-IP: " in console(), 90, what="the guest's DHCP lease in " + log)
    text = console()
    assert "SKYGRID-MARKER: " + marker in text
    assert "SKYGRID-IP: " + GUEST_IP in text
    assert "SKYGRID-SEED-BEGIN meta-data" in text and "sgtest-guest" in text
    info = wait_for(lambda: [v for v in ok(run_module("vm_info", {"uri": URI, "name": name}))["vms"]
                             if GUEST_IP in v["addresses"]], 30, what="the lease in vm_info")[0]
    assert info["metadata"]["vo"] == "atlas" and info["nics"][0]["ip"] == GUEST_IP
    assert info["nics"][0]["filter"] == "clean-traffic"
    assert ok(run_module("vm", spec))["changed"] is False
    # A graceful shutdown: the guest handles the ACPI power button.
    down = ok(run_module("vm", dict(spec, state="shutdown", shutdown_timeout=60)))
    assert down["vm"]["shutdown"] == "graceful"
    assert "SKYGRID-GUEST: poweroff" in console()
    ok(run_module("vm", dict(spec, state="absent")))
    assert not {name + "-vda.qcow2", name + "-cidata.iso"} & volumes(pool)


def _file_mode(pool, volume_name):
    pool.refresh(0)
    return os.stat(pool.storageVolLookupByName(volume_name).path()).st_mode & 0o777


def test_seed_volume_is_readable_by_its_owner_only(conn, pool, base_volume):
    name = PREFIX + "-seedmode"
    seed = name + "-cidata.iso"
    spec = vm(name=name, disks=[{"pool": POOL, "base_volume": BASE_VOLUME}],
              cloud_init={"user_data": "#cloud-config\n#secret: one\n"})
    ok(run_module("vm", spec))
    assert _file_mode(pool, seed) == 0o600
    # A seed an older release left world-readable is remade private, content unchanged or not.
    os.chmod(pool.storageVolLookupByName(seed).path(), 0o644)
    pool.refresh(0)
    assert ok(run_module("vm", spec))["changed"] is True
    assert _file_mode(pool, seed) == 0o600
    os.chmod(pool.storageVolLookupByName(seed).path(), 0o644)
    pool.refresh(0)
    ok(run_module("vm", dict(spec, cloud_init={"user_data": "#cloud-config\n#secret: two\n"})))
    assert _file_mode(pool, seed) == 0o600
    ok(run_module("vm", dict(spec, state="absent")))


def test_absent_removes_volumes_left_by_an_interrupted_run(conn, pool):
    name = PREFIX + "-orphan"
    pool.createXML("<volume><name>%s-vda.qcow2</name><capacity>1048576</capacity>"
                   "<target><format type='qcow2'/></target></volume>" % name, 0)
    pool.createXML("<volume><name>%s-keep.qcow2</name><capacity>1048576</capacity></volume>" % name, 0)
    result = ok(run_module("vm", vm(name=name, state="absent")))
    assert result["actions"] == ["delete volume %s/%s-vda.qcow2" % (POOL, name)]
    assert volumes(pool) & {name + "-vda.qcow2", name + "-keep.qcow2"} == {name + "-keep.qcow2"}
    pool.storageVolLookupByName(name + "-keep.qcow2").delete(0)


def test_switching_base_image_in_place_is_refused(conn, pool, base_volume):
    name = PREFIX + "-rebase"
    pool.createXML("<volume><name>sgtest-other.qcow2</name><capacity>1048576</capacity>"
                   "<target><format type='qcow2'/></target></volume>", 0)
    spec = vm(name=name, disks=[{"pool": POOL, "base_volume": BASE_VOLUME}])
    ok(run_module("vm", spec))
    refused = run_module("vm", dict(spec, disks=[{"pool": POOL, "base_volume": "sgtest-other.qcow2"}]))
    assert refused.failed and refused["field"] == "disks[0].base_volume" and "state: absent" in refused["msg"]
    ok(run_module("vm", dict(spec, state="absent")))
    pool.storageVolLookupByName("sgtest-other.qcow2").delete(0)


@pytest.mark.parametrize("args, field, words", [
    ({"disks": [{"pool": POOL, "base_volume": "nope.qcow2"}]}, "disks[0].base_volume", "stage the image"),
    ({"disks": [{"pool": "sgtest-nopool", "size_gb": 1}]}, "disks[0].pool", "libvirt_pool"),
    ({"nics": [{"network": "sgtest-nonet", "ip": NET_PREFIX + ".32"}]}, "nics[0].network", "libvirt_network"),
    ({"nics": [{"network": NETWORK}]}, "nics[0].ip", "allow_address_spoofing: true"),
    ({"nics": [{"network": NETWORK, "ip": NET_PREFIX + ".32", "filter": "none"}]}, "nics[0].filter",
     "allow_address_spoofing: true"),
    ({"name": "bad name!"}, "name", "letters, digits"),
    ({"vcpus": 4096}, "vcpus", "logical CPUs"),
    ({"memory_mb": 64 * 1024 * 1024}, "memory_mb", "lower memory_mb"),
    ({"uri": "qemu+unix:///system?socket=/nonexistent/sock"}, "uri", "cannot connect to libvirtd"),
])
def test_errors_name_the_field_and_change_nothing(conn, pool, base_volume, network, args, field, words):
    name = PREFIX + "-err"
    result = run_module("vm", vm(**dict({"name": name, "state": "running"}, **args)))
    assert result.failed and result["field"] == field and words in result["msg"], result
    assert result["changed"] is False
    assert dom_state(conn, name) == "absent"


def test_one_bad_item_in_a_list_changes_nothing(conn, pool, base_volume):
    good, bad = PREFIX + "-good", PREFIX + "-bad"
    result = run_module("vm", vm(state="running", vms=[
        {"name": good, "disks": [{"pool": POOL, "base_volume": BASE_VOLUME}]},
        {"name": bad, "disks": [{"pool": POOL, "base_volume": "missing.qcow2"}]}]))
    assert result.failed and result["field"] == "disks[0].base_volume"
    assert dom_state(conn, good) == "absent" and good + "-vda.qcow2" not in volumes(pool)
    dup = run_module("vm", vm(vms=[{"name": good}, {"name": good}]))
    assert dup.failed and dup["field"] == "vms[1].name"
    typo = run_module("vm", vm(vms=[{"name": good, "vcpu": 2}]))
    assert typo.failed and "vms.vcpu" in typo["msg"] and dom_state(conn, good) == "absent"


@pytest.mark.parametrize("check", [True, False])
def test_secrets_in_vms_items_never_appear_in_the_result(conn, pool, base_volume, check):
    secret, nested = "munge-" + uuid.uuid4().hex, "token-" + uuid.uuid4().hex
    names = [PREFIX + "-nolog-1", PREFIX + "-nolog-2"]
    call = vm(disks=[{"pool": POOL, "base_volume": BASE_VOLUME}], vms=[
        {"name": names[0], "cloud_init": {"user_data": "#cloud-config\n#key: %s\n" % secret}},
        {"name": names[1], "cloud_init": {"user_data": {"write_files": [{"content": nested}]}}}])
    result = run_module("vm", call, check=check, diff=True)
    assert not result.failed, result.get("msg")
    assert "invocation" in result
    text = json.dumps(result)
    assert secret not in text and nested not in text
    failed = run_module("vm", dict(call, vms=call["vms"] + [{"name": PREFIX + "-nolog-3", "disks": [
        {"pool": POOL, "base_volume": "missing.qcow2"}], "cloud_init": {"user_data": secret}}]))
    assert failed.failed and secret not in json.dumps(failed)
    ok(run_module("vm", vm(vms=[{"name": n, "state": "absent"} for n in names])))
