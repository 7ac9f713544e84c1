"""A deferred export completed later: the backend builds, the engine verifies and writes the sidecar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import enn_nb
from enn_nb.engine.complete import complete
from enn_nb.engine.registry import register_backend, unregister_backend
from enn_nb.errors import ExportError, PlatformUnavailableError

from tests.fixtures.backends import DeferredEchoBackend
from tests.fixtures.models import TinyMLP


@pytest.fixture
def deferred(tmp_path, monkeypatch):
    monkeypatch.delenv("ENN_TEST_CAN_BUILD", raising=False)
    register_backend(DeferredEchoBackend)
    try:
        report = enn_nb.export(TinyMLP(), "deferred-echo", out_dir=tmp_path, example_inputs=torch.randn(2, 6),
                               isolate=False, cache=False, metadata={"run": 7})
        yield report["deferred-echo"]
    finally:
        unregister_backend("deferred-echo")


def test_complete_builds_verifies_and_rewrites_the_sidecar_like_an_export(deferred, monkeypatch):
    assert deferred.status == "deferred" and deferred.artifact is None
    side = Path(deferred.sidecar)
    before = json.loads(side.read_text())
    with pytest.raises(PlatformUnavailableError, match="ENN_TEST_CAN_BUILD"):
        complete(side)
    assert json.loads(side.read_text()) == before  # a machine that cannot build leaves it untouched

    monkeypatch.setenv("ENN_TEST_CAN_BUILD", "1")
    result = complete(side)
    after = json.loads(side.read_text())
    assert result.status == "ok" and result.artifact == side.parent / "model.later.pt2" and result.artifact.is_file()
    assert after["status"] == "ok" and after["deferred"] is None and after["details"]["built"] is True
    # the normal finish: parity on the export's vectors with the recorded tolerance, files hashed
    assert after["parity"]["status"] == "passed" and after["parity"]["vectors"]["file"] == "model.vectors.safetensors"
    assert after["parity"]["tolerance"] == {"atol": 1e-4, "rtol": 1e-4}  # the backend's default
    assert {f["path"] for f in after["files"]} == {"model.later.pt2", "model.plan.pt2"}
    assert after["metadata"] == {"run": 7} and after["spec"] == before["spec"] and after["notes"] == before["notes"]
    assert enn_nb.verify(result.artifact).ok
    with pytest.raises(ExportError, match="only a `deferred` export"):
        complete(side)


def test_complete_writes_where_asked_in_the_sidecars_folder(deferred, monkeypatch, tmp_path):
    monkeypatch.setenv("ENN_TEST_CAN_BUILD", "1")
    side = Path(deferred.sidecar)
    with pytest.raises(ExportError, match="must be in the sidecar's folder"):
        complete(side, out=tmp_path / "elsewhere" / "model.later.pt2")
    with pytest.raises(ExportError, match="must end with `.later.pt2`"):
        complete(side, out="net.pt2")
    result = complete(side, out="net.later.pt2")  # a bare name: in the sidecar's folder
    assert result.status == "ok" and result.artifact == side.parent / "net.later.pt2"
    assert result.sidecar == side.parent / "net.later.pt2.enn.json"


def test_complete_refuses_a_vectors_file_that_is_a_symlink_out_of_the_folder(deferred, monkeypatch, tmp_path):
    monkeypatch.setenv("ENN_TEST_CAN_BUILD", "1")
    side = Path(deferred.sidecar)
    vectors = side.parent / "model.vectors.safetensors"  # the export's vectors, found by their stem
    outside = tmp_path.parent / f"{tmp_path.name}-outside.safetensors"
    vectors.rename(outside)
    vectors.symlink_to(outside)  # the same name, leading out of the artifact's folder
    before = side.read_text()
    with pytest.raises(ExportError, match="outside .*a symlink"):
        complete(side)
    assert side.read_text() == before  # refused before anything was built or rewritten
