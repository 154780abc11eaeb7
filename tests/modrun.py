"""Run a skygrid.fabric module the way Ansible does on the target: as a separate Python process
reading its arguments from a JSON file, with check and diff mode passed as Ansible passes them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(ROOT, "collections")


class ModuleResult(dict):
    @property
    def failed(self):
        return bool(self.get("failed"))


def run_module(name, args, check=False, diff=False, env=None):
    """Run plugins/modules/<name>.py with ``args``; return its JSON result (with ``rc``)."""
    payload = dict(args, _ansible_check_mode=check, _ansible_diff=diff)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": payload}, handle)
        path = handle.name
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "ansible_collections.skygrid.fabric.plugins.modules." + name, path],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False,
            env=dict(os.environ, PYTHONPATH=COLLECTIONS, **(env or {})))
    finally:
        os.unlink(path)
    try:
        result = ModuleResult(json.loads(proc.stdout))
    except ValueError:
        raise AssertionError("module %s printed no JSON (rc=%d)\nstdout: %s\nstderr: %s"
                             % (name, proc.returncode, proc.stdout, proc.stderr))
    result["rc"] = proc.returncode
    return result
