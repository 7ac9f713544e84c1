"""finish: a unit's outcome becomes files in out_dir, a schema-valid sidecar and a BackendResult."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from enn_nb.engine import sidecar as sc
from enn_nb.engine.finish import RunInfo, finish, finish_unavailable
from enn_nb.engine.outcome import Crash, ErrorInfo, UnitResult
from enn_nb.engine.plan import Plan
from enn_nb.engine.registry import get_backend
from enn_nb.engine.report import BackendResult, ExportReport
from enn_nb.engine.settings import ExportSettings
from enn_nb.engine.vocabulary import STAGES, STATUSES
from enn_nb.errors import FastPathExportError, MissingDependencyError


def _info(out: Path, **settings) -> RunInfo:
    return RunInfo(
        settings=ExportSettings(names=("pt2",), out=out, metadata={"run": 1}, **settings),
        spec=None,
        source={"kind": "model", "model_class": "tests.Tiny"},
        report=ExportReport(results=[], out_dir=out),
    )


def _plan(name: str = "pt2") -> Plan:
    backend = get_backend(name)
    return Plan(0, name, backend, dict(backend.default_options), backend.default_tolerance)


def test_the_schema_uses_the_engine_vocabulary():
    props = sc.schema()["properties"]
    assert props["status"]["enum"] == list(STATUSES)
    assert props["stage"]["enum"] == [*STAGES, None]


def test_a_crashed_child_gives_a_crashed_result_with_its_signal_and_log(tmp_path):
    unit = UnitResult(stage="verify", crash=Crash(exit_code=-11, signal="SIGSEGV", log_tail="boom\n"))
    result = finish(_plan(), unit, _info(tmp_path), ["a note"], time.perf_counter())
    data = sc.read(result.sidecar)  # schema-valid
    assert result.status == data["status"] == "crashed" and result.stage == data["stage"] == "verify"
    assert data["error"] == {
        "type": "ChildProcessCrashed",
        "message": data["error"]["message"],
        "exit_code": -11,
        "signal": "SIGSEGV",
        "log_tail": "boom\n",
    }
    assert "SIGSEGV during the `verify` stage of `pt2`" in result.error
    assert data["notes"] == ["a note"] and data["metadata"] == {"run": 1} and data["artifact"] is None


def test_a_missing_package_in_the_child_is_unavailable_with_the_install_line(tmp_path):
    error = ErrorInfo.from_exception(MissingDependencyError("no", package="coremltools", extra="coreml"))
    result = finish(_plan(), UnitResult(stage="convert", error=error), _info(tmp_path), [], time.perf_counter())
    assert result.status == "unavailable" and result.stage == "convert"
    assert result.error.endswith("%pip install 'enn-nb[coreml]'") and "`coremltools`" in result.error


def test_a_fast_path_error_is_carried_on_the_result_without_rereading_the_sidecar(tmp_path):
    error = ErrorInfo.from_exception(FastPathExportError("`flex` made capture fail", fast_path="blocks.0.attn.impl"))
    result = finish(_plan(), UnitResult(stage="convert", error=error), _info(tmp_path), [], time.perf_counter())
    assert result.error_type == "FastPathExportError" and result.fast_path == "blocks.0.attn.impl"
    data = json.loads(Path(result.sidecar).read_text())
    assert data["error"]["fast_path"] == "blocks.0.attn.impl" and "traceback" in data["details"]
    assert BackendResult.from_sidecar(data, tmp_path, Path(result.sidecar), cached=True).fast_path == result.fast_path


def test_an_unavailable_backend_gets_a_sidecar_with_the_install_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "coremltools", None)
    plan = _plan("coreml")
    result = finish_unavailable(plan, plan.backend.unavailable_reason() or "", _info(tmp_path, stem="net"))
    data = sc.read(Path(result.sidecar))
    assert Path(result.sidecar).name == "net.mlpackage.enn.json"
    assert data["status"] == "unavailable" and data["stage"] == "availability" and data["deviations"] == []
    assert data["error"]["type"] == "MissingDependencyError"
    assert data["error"]["message"].endswith("%pip install 'enn-nb[coreml]'")


def test_finish_moves_the_files_and_hashes_them(tmp_path):
    import torch

    from enn_nb.engine.backends.base import Conversion, TensorInfo

    out = tmp_path / "out"
    out.mkdir()
    work = out / ".work" / "pt2"
    work.mkdir(parents=True)
    artifact = work / "model.pt2"
    artifact.write_bytes(b"not really an archive")
    (work / "model.pt2.data").write_bytes(b"x" * 10)
    conv = Conversion(artifact=artifact, inputs=[TensorInfo("features", ["batch", 6], "float32")],
                      outputs=[TensorInfo("output", ["batch", 3], "float32")], extra_files=[work / "model.pt2.data"],
                      dynamic_batch=True, notes=["from the backend"])
    parity = {"status": "passed", "max_abs_err": 0.0, "max_rel_err": 0.0, "cases": []}
    unit = UnitResult(conversion=conv, parity=parity, timings={"convert": 0.5})
    result = finish(_plan(), unit, _info(out), ["from the engine"], time.perf_counter())
    assert result.status == "ok" and result.artifact == out / "model.pt2" and not artifact.exists()
    data = sc.read(Path(result.sidecar))
    assert {f["path"]: f["role"] for f in data["files"]} == {"model.pt2": "artifact", "model.pt2.data": "external_data"}
    assert data["notes"] == ["from the engine", "from the backend"] and data["timings"]["convert"] == 0.5
    atol, rtol = get_backend("pt2").default_tolerance
    assert data["parity"]["tolerance"] == {"atol": atol, "rtol": rtol}
    assert data["inputs"][0]["shape"] == ["batch", 6] and data["dynamic_dims"] == {"batch": {"min": 1, "max": None}}
    assert torch.__version__.split("+")[0] in data["versions"]["torch"]


@pytest.mark.parametrize(("parity_status", "status"), [("passed", "ok"), ("failed", "mismatch"), ("skipped", "ok")])
def test_the_parity_outcome_decides_the_status(tmp_path, parity_status, status):
    from enn_nb.engine.backends.base import Conversion

    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "model.pt2").write_bytes(b"a")
    conv = Conversion(artifact=tmp_path / "w" / "model.pt2", inputs=[], outputs=[])
    parity = {"status": parity_status, "max_abs_err": 1.0, "cases": []}
    result = finish(_plan(), UnitResult(conversion=conv, parity=parity), _info(tmp_path), [], time.perf_counter())
    assert result.status == status and result.parity_status == parity_status and result.max_abs_err == 1.0
    assert result.parity["reference"] == "eager model with its fast paths on, eval mode"
