"""host_files.read: several files in one pass, base64, with clear errors naming the path."""

from __future__ import annotations

import base64

import pytest

from ansible_collections.skygrid.fabric.plugins.module_utils import host_files
from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError


def test_reads_each_file_in_order_as_base64(tmp_path):
    key, conf = tmp_path / "atlas.key", tmp_path / "slurm.conf"
    key.write_bytes(bytes(range(256)))  # binary, as a munge key is
    conf.write_text("ClusterName=atlas\n")
    found = host_files.read([str(conf), str(key)])
    assert list(found) == [str(conf), str(key)]
    assert base64.b64decode(found[str(key)]["content"]) == bytes(range(256))
    assert found[str(conf)] == {"exists": True, "content": base64.b64encode(b"ClusterName=atlas\n").decode()}


def test_a_missing_file_is_named_unless_allowed(tmp_path):
    missing = str(tmp_path / "lhcb" / "slurm.conf")
    with pytest.raises(FabricError) as error:
        host_files.read([missing])
    assert missing in str(error.value) and error.value.field == "paths"
    assert host_files.read([missing], missing_ok=True) == {missing: {"exists": False, "content": ""}}


def test_a_directory_or_an_oversized_file_is_refused(tmp_path):
    with pytest.raises(FabricError, match="is a directory"):
        host_files.read([str(tmp_path)], missing_ok=True)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 65)
    with pytest.raises(FabricError, match="larger than 64 bytes"):
        host_files.read([str(big)], max_bytes=64)
    assert host_files.read([str(big)], max_bytes=65)[str(big)]["exists"]
