"""What AWX / Ansible Automation Platform need: the EE metadata ansible-builder reads, the EE build
context it makes from it, and playbooks run through ansible-runner (the engine AWX uses) against the
site in a box (inventories/local) - in check mode, so they change nothing on this shared machine."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

ansible_runner = pytest.importorskip("ansible_runner")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def test_introspect_lists_the_collections_python_and_system_requirements():
    proc = subprocess.run([os.path.join(BIN, "ansible-builder"), "introspect", "--sanitize",
                           os.path.join(ROOT, "collections")], capture_output=True, text=True, check=True)
    data = yaml.safe_load(proc.stdout.split("\n", 1)[1])  # after the "# Dependency data" line
    assert any(line.startswith("libvirt-python") for line in data["python"])
    system = [line.split(" ", 1)[0] for line in data["system"]]
    assert {"libvirt-devel", "libvirt-dev", "libvirt-libs", "libvirt0", "gcc", "openssh-clients", "openssl"} <= set(system)


def test_bindep_accepts_the_system_requirements():
    # -b: list what is missing on this (Debian) host; rc 1 would mean missing, any parse error fails too.
    proc = subprocess.run([os.path.join(BIN, "bindep"), "-b", "-f", os.path.join(ROOT, "bindep.txt"), "compile"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_builder_makes_a_build_context_with_the_collection_requirements(tmp_path):
    """ansible-builder create: the Containerfile an image build would run (no engine is needed for this step)."""
    build = tmp_path / "ee"
    build.mkdir()
    subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", ROOT, "--output-path", str(build)],
                   check=True, capture_output=True)
    (tarball,) = [name for name in os.listdir(build) if name.endswith(".tar.gz")]
    (build / "requirements.yml").write_text(yaml.safe_dump({"collections": [{"name": tarball, "type": "file"}]}))
    (build / "execution-environment.yml").write_text(yaml.safe_dump({
        "version": 3,
        "images": {"base_image": {"name": "quay.io/ansible/awx-ee:latest"}},
        "dependencies": {"galaxy": "requirements.yml", "ansible_core": {"package_pip": "ansible-core==2.19.14"},
                         "ansible_runner": {"package_pip": "ansible-runner==2.4.3"}},
        "additional_build_files": [{"src": tarball, "dest": "."}],
    }))
    proc = subprocess.run([os.path.join(BIN, "ansible-builder"), "create", "-f", "execution-environment.yml",
                           "--output-filename", "Containerfile"], cwd=build, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    containerfile = (build / "context" / "Containerfile").read_text()
    assert "quay.io/ansible/awx-ee:latest" in containerfile and "introspect" in containerfile


def run_playbook(tmp_path, playbook, check=True):
    env = {"ANSIBLE_CONFIG": os.path.join(ROOT, "ansible.cfg"),
           "ANSIBLE_COLLECTIONS_PATH": os.path.join(ROOT, "collections"),
           "PATH": BIN + os.pathsep + os.environ.get("PATH", ""), "ANSIBLE_NOCOLOR": "1"}
    private = tmp_path / "runner"
    os.makedirs(private / "env")
    result = ansible_runner.run(private_data_dir=str(private), project_dir=ROOT, playbook=playbook,
                                inventory=os.path.join(ROOT, "inventories", "local"),
                                cmdline="--check" if check else None, envvars=env, quiet=True)
    return result, result.stdout.read()


@pytest.mark.usefixtures("site_in_a_box")
def test_rebalance_check_through_ansible_runner(tmp_path):
    result, stdout = run_playbook(tmp_path, "playbooks/rebalance.yml")
    assert result.status == "successful" and result.rc == 0, stdout[-3000:]
    tasks = {event["event_data"].get("task") for event in result.events if event["event"] == "runner_on_ok"}
    assert "Show the plan" in tasks and "Plan this run's moves" in tasks
    assert result.stats["changed"] == {}, stdout[-3000:]  # --check: the plan is printed, nothing moved
    assert result.stats["failures"] == {} and result.stats["dark"] == {}


@pytest.mark.usefixtures("site_in_a_box")
def test_convert_worker_nodes_check_through_ansible_runner(tmp_path):
    result, stdout = run_playbook(tmp_path, "playbooks/convert_worker_nodes.yml")
    assert result.status == "successful" and result.rc == 0, stdout[-3000:]
    assert result.stats["failures"] == {} and result.stats["dark"] == {}
    tasks = {event["event_data"].get("task") for event in result.events if event["event"] == "runner_on_ok"}
    assert {"Name every mistake in the inventory before anything changes", "Show the plan",
            "Stage, verify and prune each VO's images", "Start the slot VMs (overlay on the VO image, leased NIC, "
            "contextualisation, provenance)", "Record a successful converge and the slot plan in the host's metrics"} <= tasks
