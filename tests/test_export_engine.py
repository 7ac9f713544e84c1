"""The export engine on the reference model: onnx, ort, pt2, aoti for real, isolated, with parity, sidecars, cache."""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import enn_nb
from enn_nb.errors import ParityError
from enn_nb.engine import sidecar
from enn_nb.engine.parity import load_vectors
from enn_nb.model.spec import ModelSpec

from tests.fixtures.conformance import assert_backend_conforms
from tests.fixtures.models import ApproxGeluNet, TinyMLP

BACKENDS = ["onnx", "ort", "pt2", "aoti"]


@pytest.fixture(scope="module", autouse=True)
def cache_store(tmp_path_factory):
    """The export cache's store of this module's shared export (each test else gets an empty one)."""
    path = tmp_path_factory.mktemp("enn-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("ENN_NB_CACHE_DIR", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def exported(trained_model, tmp_path_factory):
    """One real export of the reference model to the four backends, isolated."""
    out = tmp_path_factory.mktemp("export")
    # The isolated children see this as the system temp folder, so a test can check what lands there.
    system_tmp = tmp_path_factory.mktemp("system-tmp")
    events: list[dict] = []
    started = time.perf_counter()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(system_tmp))
        report = enn_nb.export(trained_model, BACKENDS, out_dir=out, progress=events.append, metadata={"run": "test"})
    return {
        "report": report,
        "events": events,
        "out": out,
        "system_tmp": system_tmp,
        "seconds": time.perf_counter() - started,
    }


@pytest.mark.slow
def test_aoti_leaves_nothing_in_the_system_temp_folder(exported):
    assert exported["report"]["aoti"].status == "ok"
    # torch puts AOTI's precompiled headers (~300 MB) under <tmp>/torchinductor_<user> regardless of
    # TORCHINDUCTOR_CACHE_DIR; the backend moves them into the inductor cache folder.
    left = sorted(p.name for p in exported["system_tmp"].iterdir() if p.name.startswith("torchinductor"))
    assert left == []
    headers = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]) / "precompiled_headers"
    assert any(headers.glob("*.gch")), "AOTI compiled without its precompiled headers"


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_conforms(exported, backend):
    data = assert_backend_conforms(exported["report"], backend)
    assert data["metadata"] == {"run": "test"}
    assert data["details"].get("metadata_roundtrip") is True
    assert data["dynamic_batch"] is True and data["dynamic_dims"] == {"batch": {"min": 1, "max": None}}
    assert {c["batch_size"] for c in data["parity"]["cases"]} == {1, 7}


@pytest.mark.slow
def test_sidecar_describes_the_model_the_io_and_the_switches(exported, trained_model):
    report = exported["report"]
    spec = ModelSpec.from_model(trained_model).to_dict()
    onnx = sidecar.read(report["onnx"].sidecar)
    assert onnx["spec"] == spec
    assert onnx["source"]["kind"] == "model" and onnx["source"]["model_class"].endswith("ReferenceModel")
    assert onnx["inputs"] == [{"name": "features", "shape": ["batch", trained_model.in_dim], "dtype": "float32"}]
    assert onnx["outputs"] == [{"name": "prediction", "shape": ["batch", *trained_model.out_shape], "dtype": "float32"}]
    assert onnx["format"]["opset"] >= 18 and onnx["format"]["ir_version"] >= 8 and onnx["format"]["external_data"] is False
    assert {"onnx", "onnxruntime", "torch", "enn_nb", "python"} <= set(onnx["versions"])
    assert {"os", "machine", "cpu", "python"} <= set(onnx["host"])
    names = {d["name"]: d for d in onnx["deviations"]}
    assert names["blocks.0.attn.impl"]["from"] == "flex" and names["blocks.0.attn.impl"]["to"] == "math"
    assert names["blocks.0.fc1.fused"]["from"] is True and names["scaler.calibration"]["to"] == "static"
    assert {"capture", "onnx", "convert", "verify", "sidecar", "total"} <= set(onnx["timings"])
    ort = sidecar.read(report["ort"].sidecar)
    assert ort["format"]["optimization_level"] == "extended"
    assert any(f["path"] == "model.ort.required_operators.config" and f["role"] == "extra" for f in ort["files"])
    aoti = sidecar.read(report["aoti"].sidecar)
    assert aoti["artifact"] == "model.aoti.pt2" and aoti["embedded"]["enn_nb.schema"] == "enn_nb.export/1"
    assert json.loads(aoti["embedded"]["enn_nb.model.spec"]) == spec


@pytest.mark.slow
def test_capture_once_lower_many(exported):
    report = exported["report"]
    assert report.capture_s > 0 and report.onnx_s > 0
    assert {r.timings["capture"] for r in report} == {report.capture_s}
    assert report["onnx"].timings["onnx"] == report["ort"].timings["onnx"] == report.onnx_s
    assert "onnx" not in report["pt2"].timings
    assert all(r.timings["convert"] > 0 and r.timings["total"] >= r.timings["convert"] for r in report)


def test_one_torch_export_serves_every_backend(tmp_path, monkeypatch):
    calls = []
    real = torch.export.export

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.export, "export", counting)  # test-only spy, the library patches nothing
    report = enn_nb.export(TinyMLP(), "onnx,pt2", out_dir=tmp_path, example_inputs=torch.randn(4, 6),
                           isolate=False, cache=False)
    assert [r.status for r in report] == ["ok", "ok"]
    assert len(calls) == 1


@pytest.mark.slow
def test_vectors_hold_eager_outputs_with_fast_paths_on(exported, trained_model):
    report = exported["report"]
    cases, ins, outs = load_vectors(report.vectors)
    assert report.vectors.name == "model.vectors.safetensors"
    assert ins == ["features"] and outs == ["prediction"]
    assert [c.key for c in cases] == ["b1", "b7", "s2a", "s2b"]
    assert trained_model.blocks[0].attn.impl == "flex"  # the fast path the user trained with
    for case in cases:
        with torch.no_grad():
            expected = trained_model.forward_export(torch.from_numpy(case.inputs[0])).numpy()
        np.testing.assert_array_equal(case.expected[0], expected)
        codes = case.inputs[0][:, -2:]
        assert np.all(codes == np.round(codes)) and codes.min() >= 0  # categorical columns hold valid codes


@pytest.mark.slow
def test_progress_events_in_order(exported):
    events = exported["events"]
    assert events[0] == {"backend": None, "stage": "capture", "status": "running", "index": 0, "total": 4}
    assert events[1]["stage"] == "capture" and events[1]["status"] == "ok"
    for i, name in enumerate(BACKENDS):
        mine = [(e["stage"], e["status"]) for e in events if e["backend"] == name]
        assert mine == [("convert", "running"), ("verify", "running"), ("done", "ok")]
        assert all(e["index"] == i and e["total"] == 4 for e in events if e["backend"] == name)


@pytest.mark.slow
def test_report_renders_as_html_text_and_json(exported):
    report = exported["report"]
    html = report._repr_html_()
    assert html.startswith("<table") and html.count("<tr>") == 5
    for name in BACKENDS:
        assert f"<code>{name}</code>" in html
    text = str(report)
    assert "capture" in text and all(name in text for name in BACKENDS) and "model.aoti.pt2" in text
    data = json.loads(report.to_json())
    assert [r["status"] for r in data["results"]] == ["ok"] * 4
    assert data["results"][0]["parity"]["status"] == "passed" and data["capture_s"] == report.capture_s


@pytest.mark.slow
def test_unchanged_model_hits_the_cache(exported, trained_model, tmp_path, cache_store, monkeypatch):
    monkeypatch.setenv("ENN_NB_CACHE_DIR", str(cache_store))  # the store the module's export filled
    out = exported["out"]
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()}
    report = enn_nb.export(trained_model, BACKENDS, out_dir=out, metadata={"run": "test"})
    assert all(r.status == "ok" and r.cached for r in report)
    assert report.capture_s == 0.0
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()}
    sidecars = {name for name in before if name.endswith(".enn.json")}
    # no artifact or vectors file was rewritten; only each sidecar was replaced (a new file, never written
    # into) to record this export's provenance and timings, the first export's under `cached_from`
    assert {k: v for k, v in after.items() if k not in sidecars} == {k: v for k, v in before.items() if k not in sidecars}
    assert all(after[name][0] != before[name][0] for name in sidecars)
    assert all(r.timings.keys() == {"cache_lookup", "total"} for r in report)
    assert all(sidecar.read(r.sidecar)["cached_from"]["timings"]["convert"] > 0 for r in report)
    # another folder: the artifacts come from the cache store, byte for byte
    again = enn_nb.export(trained_model, BACKENDS, out_dir=tmp_path, metadata={"run": "test"})
    assert all(r.cached for r in again)
    for name in BACKENDS:
        assert again[name].files == report[name].files
    assert_backend_conforms(again, "pt2")


@pytest.mark.slow
def test_changed_weights_or_options_miss_the_cache(exported, trained_model, tmp_path):
    changed = copy.deepcopy(trained_model)
    with torch.no_grad():
        changed.load_head.bias.add_(0.5)
    report = enn_nb.export(changed, "pt2", out_dir=tmp_path, isolate=False, metadata={"run": "test"})
    assert report["pt2"].status == "ok" and not report["pt2"].cached
    other = enn_nb.export(trained_model, "pt2", out_dir=tmp_path, isolate=False, metadata={"run": "other"})
    assert not other["pt2"].cached


def test_mismatch_beyond_tolerance_and_strict_parity_error(tmp_path):
    model = ApproxGeluNet().eval()
    x = torch.randn(4, 6)
    report = enn_nb.export(model, "pt2", out_dir=tmp_path, example_inputs=x, isolate=False, cache=False)
    result = report["pt2"]
    assert result.status == "mismatch" and result.artifact.exists()
    assert 1e-5 < result.max_abs_err < 0.1
    assert result.parity["tolerance"] == {"atol": 1e-5, "rtol": 1e-5}
    assert [c["passed"] for c in result.parity["cases"]] == [False, False]
    assert sidecar.read(result.sidecar)["status"] == "mismatch"
    assert model.approximate == "tanh"
    # a looser tolerance accepts it; strict mode raises with the numbers
    loose = enn_nb.export(model, "pt2", out_dir=tmp_path, example_inputs=x, isolate=False, cache=False,
                          tolerances={"pt2": (0.05, 0.05)})
    assert loose["pt2"].status == "ok" and loose["pt2"].parity["tolerance"] == {"atol": 0.05, "rtol": 0.05}
    with pytest.raises(ParityError) as info:
        enn_nb.export(model, "pt2", out_dir=tmp_path, example_inputs=x, isolate=False, cache=False, strict=True)
    err = info.value
    assert err.backend == "pt2" and err.max_abs_err == pytest.approx(result.max_abs_err)
    assert err.atol == 1e-5 and err.rtol == 1e-5 and err.batch_size in (1, 7)
    assert "max abs error" in str(err) and "tolerances=" in str(err)


def test_plain_module_needs_example_inputs_and_is_put_in_eval_for_export(tmp_path):
    model = TinyMLP()
    model.train()
    with pytest.raises(enn_nb.EnnError, match="example_inputs"):
        enn_nb.export(model, "pt2", out_dir=tmp_path, isolate=False)
    report = enn_nb.export(model, "pt2", out_dir=tmp_path, example_inputs=(torch.randn(3, 6),), isolate=False, cache=False)
    assert_backend_conforms(report, "pt2")
    assert model.training  # restored
    data = sidecar.read(report["pt2"].sidecar)
    assert data["spec"] is None and any(d["name"] == "training" for d in data["deviations"])


def test_static_batch_checks_two_draws_at_the_capture_batch(tmp_path):
    report = enn_nb.export(TinyMLP(), ["pt2"], out_dir=tmp_path, example_inputs=torch.randn(3, 6),
                           dynamic_batch=False, isolate=False, cache=False)
    data = assert_backend_conforms(report, "pt2")
    assert data["dynamic_batch"] is False
    assert [c["key"] for c in data["parity"]["cases"]] == ["s3a", "s3b"]
    assert data["inputs"][0]["shape"] == [3, 6]


def test_should_stop_cancels_the_remaining_backends(tmp_path):
    seen: list[dict] = []

    def stop() -> bool:
        return any(e["stage"] == "done" for e in seen)

    report = enn_nb.export(TinyMLP(), "pt2,onnx", out_dir=tmp_path, example_inputs=torch.randn(2, 6),
                           isolate=False, cache=False, progress=seen.append, should_stop=stop)
    assert [r.status for r in report] == ["ok", "cancelled"]
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "model.onnx.enn.json").exists()
    assert seen[-1] == {"backend": "onnx", "stage": "done", "status": "cancelled", "index": 1, "total": 2}


def test_external_data_when_the_weights_are_too_big_for_one_file(tmp_path, monkeypatch):
    from enn_nb.engine import capture

    monkeypatch.setattr(capture, "EXTERNAL_DATA_BYTES", 0)  # as if the weights were over 2 GB
    report = enn_nb.export(TinyMLP(), "onnx,ort", out_dir=tmp_path, example_inputs=torch.randn(2, 6),
                           isolate=False, cache=False)
    data = assert_backend_conforms(report, "onnx")
    assert data["format"]["external_data"] is True
    assert {f["path"]: f["role"] for f in data["files"]} == {"model.onnx": "artifact", "model.onnx.data": "external_data"}
    assert (tmp_path / "model.onnx.data").stat().st_size > 0
    assert_backend_conforms(report, "ort")  # the ORT converter found the data file beside the model


def test_provenance_is_recorded_when_run_in_an_ipython_cell(tmp_path):
    import hashlib

    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.user_ns.update(model=TinyMLP(), x=torch.randn(2, 6), out=str(tmp_path), enn_nb=enn_nb)
    cell = 'report = enn_nb.export(model, "pt2", out_dir=out, example_inputs=x, isolate=False, cache=False)\n'
    result = shell.run_cell(cell, store_history=True)
    result.raise_error()
    count = shell.execution_count - 1
    data = sidecar.read(shell.user_ns["report"]["pt2"].sidecar)
    prov = data["provenance"]
    assert prov["cell_sha256"] == hashlib.sha256(cell.encode()).hexdigest()
    assert prov["execution_count"] == count and "recorded_at" in prov
