"""Edge and vendor backends through the engine: ExecuTorch, LiteRT, CoreML, TensorFlow, TensorRT.

One real ``enn_nb.export(reference_model, "all")`` (isolated, no cache) serves the conformance of the
five backends and the "all nine at once" check; the deferred TensorRT plan is checked file by file.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

import enn_nb
from enn_nb.engine import sidecar as sc

from tests.fixtures.conformance import assert_backend_conforms

EDGE = ["executorch", "litert", "coreml", "tensorflow", "tensorrt"]
ALL = ["onnx", "ort", "pt2", "aoti", *EDGE]


@pytest.fixture(scope="module")
def all_nine(trained_model, tmp_path_factory):
    """One export of the reference model to every backend, as a user would run it."""
    out = tmp_path_factory.mktemp("all-nine")
    started = time.perf_counter()
    report = enn_nb.export(trained_model, "all", out_dir=out, cache=False, metadata={"run": "edge"})
    return {"report": report, "out": out, "seconds": time.perf_counter() - started}


def _sidecar(all_nine, name):
    return sc.read(all_nine["report"][name].sidecar)


# -- conformance -------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("backend", EDGE)
def test_backend_conforms(all_nine, backend, trained_model):
    data = assert_backend_conforms(all_nine["report"], backend)
    assert data["metadata"] == {"run": "edge"}
    assert data["inputs"][0]["name"] == "features" and data["outputs"][0]["name"] == "prediction"
    assert data["inputs"][0]["shape"][1:] == [trained_model.in_dim]
    assert data["outputs"][0]["shape"][1:] == list(trained_model.out_shape)
    if backend == "tensorrt":  # an engine has no metadata slot; the TensorRT-ready ONNX carries them
        assert data["embedded_metadata"] is False
        assert {f["path"] for f in data["files"]} >= {"model.trt.onnx", "model.trt-profile.json"}
        return
    assert data["embedded_metadata"] is True
    if backend != "coreml":  # the pipeline reads embedded metadata back after parity
        assert data["details"].get("metadata_roundtrip") is True


@pytest.mark.slow
def test_executorch_is_dynamic_bounded_and_reports_delegation(all_nine):
    data = _sidecar(all_nine, "executorch")
    assert data["dynamic_batch"] is True
    assert {c["batch_size"] for c in data["parity"]["cases"]} == {1, 7}
    details = data["details"]
    assert details["delegate"] == "xnnpack" and details["batch_bounds"] == [1, 64]
    assert 0 < details["delegated_ratio"] < 1 and details["delegated_subgraphs"] >= 1
    assert details["delegated_nodes"] + details["non_delegated_nodes"] > 0
    assert sum(details["non_delegated_ops"].values()) == details["non_delegated_nodes"]
    assert any("bounded to [1, 64]" in n for n in data["notes"])
    assert data["format"]["methods"] == ["forward", "enn_nb_essentials"]


@pytest.mark.slow
def test_litert_says_why_it_is_static_and_that_it_computes_in_float32(all_nine):
    data = _sidecar(all_nine, "litert")
    assert data["dynamic_batch"] is False
    assert data["inputs"][0]["shape"] == [2, 38]
    assert [c["batch_size"] for c in data["parity"]["cases"]] == [2, 2]
    assert any("static at batch 2" in n and "could not lower a dynamic batch" in n and "dynamic_batch=True" in n
               for n in data["notes"])
    assert any("float64" in n and "float32" in n for n in data["notes"])
    assert data["details"]["float64_demoted"]["tensors"] > 0
    assert data["details"]["metadata_entry"] == "enn_nb_essentials"


@pytest.mark.slow
def test_coreml_parity_is_unavailable_on_linux_and_the_spec_is_checked(all_nine):
    data = _sidecar(all_nine, "coreml")
    if sys.platform != "darwin":
        assert data["parity"]["status"] == "skipped"
        assert data["parity"]["reason"] == "CoreML prediction requires macOS"
    assert data["directory_artifact"] is True and data["artifact"] == "model.mlpackage"
    assert data["inputs"] == [{"name": "features", "shape": ["batch", 38], "dtype": "float32"}]
    check = data["details"]["spec_check"]
    assert check["passed"] is True and check["specification_version"] >= 7
    assert data["details"]["batch_bounds"] == [1, 64]
    assert data["format"]["minimum_deployment_target"] == "iOS16"


@pytest.mark.slow
def test_tensorflow_records_the_float32_path_and_its_cost(all_nine):
    data = _sidecar(all_nine, "tensorflow")
    assert data["dynamic_batch"] is True and data["directory_artifact"] is True
    demoted = data["details"]["float64_demoted"]
    assert demoted["tensors"] > 0 and demoted["ops"] > 0
    # what the float64 -> float32 rewrite alone changes, measured on onnxruntime
    assert 0 < demoted["onnxruntime_max_abs_diff"] < 1e-4
    assert data["parity"]["max_abs_err"] < 1e-4
    assert any("float32" in n for n in data["notes"])
    assert data["details"]["onnx2tf_args"]["keep_shape_absolutely_input_names"] == ["features"]
    assets = {f["path"] for f in data["files"]}
    assert {"model.savedmodel/assets/enn_nb_essentials.json", "model.savedmodel/assets/enn_nb_io.json"} <= assets


@pytest.mark.slow
def test_tensorflow_essentials_are_a_tracked_savedmodel_asset(all_nine):
    tf = pytest.importorskip("tensorflow")
    artifact = Path(all_nine["out"]) / "model.savedmodel"
    loaded = tf.saved_model.load(str(artifact))
    asset = Path(loaded.essentials.asset_path.numpy().decode())
    assert asset.parent.name == "assets" and asset.is_file()
    assert json.loads(asset.read_text()) == _sidecar(all_nine, "tensorflow")["embedded"]


# -- TensorRT: deferred here, buildable later from the sidecar alone ------------------------------------
@pytest.mark.slow
def test_tensorrt_deferred_plan_is_buildable_from_the_sidecar_alone(all_nine, trained_model):
    onnx = pytest.importorskip("onnx")
    result = all_nine["report"]["tensorrt"]
    data = _sidecar(all_nine, "tensorrt")
    if data["status"] != "deferred":  # a CUDA host with TensorRT builds for real
        assert data["status"] == "ok" and data["details"]["engine"]["compute_capability"]
        return
    assert result.status == "deferred" and data["deferred"].startswith("TensorRT is not installed here")
    assert data["parity"]["status"] == "not_run" and data["error"] is None
    out = Path(all_nine["out"])
    details = data["details"]
    trt_onnx = out / details["onnx"]["file"]
    assert trt_onnx.name == "model.trt.onnx" and sc.sha256_file(trt_onnx) == details["onnx"]["sha256"]
    model = onnx.load(str(trt_onnx))
    onnx.checker.check_model(model, full_check=True)
    props = {p.key: p.value for p in model.metadata_props}
    essentials = _sidecar(all_nine, "onnx")["embedded"]
    assert {k: props.get(k) for k in essentials} == essentials
    doubles = [i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.DOUBLE]
    assert doubles == []
    assert details["lint"]["status"] == "passed" and details["lint"]["failing_nodes"] == 0
    profile = {"features": {"min": [1, 38], "opt": [8, 38], "max": [64, 38]}}
    assert details["profile"] == profile
    assert json.loads((out / details["profile_file"]).read_text()) == profile
    assert details["build"]["trtexec"] == (
        "trtexec --onnx=model.trt.onnx --saveEngine=model.engine --minShapes=features:1x38 "
        "--optShapes=features:8x38 --maxShapes=features:64x38 --memPoolSize=workspace:2048M --noTF32"
    )
    assert details["build"]["enn_nb"] == "enn-nb build-trt model.engine.enn.json"
    assert Path(result.sidecar).name == "model.engine.enn.json"
    assert (out / "model.vectors.safetensors").is_file()  # parity inputs for the later build


@pytest.mark.slow
def test_build_trt_without_tensorrt_says_so_and_exits_non_zero(all_nine, capsys):
    from enn_nb.surfaces.cli import main
    from enn_nb.engine.backends.tensorrt import build_unavailable_reason
    from enn_nb.surfaces.cli.export import EXIT_UNAVAILABLE

    if build_unavailable_reason() is None:
        pytest.skip("this machine can build TensorRT engines")
    sidecar = all_nine["report"]["tensorrt"].sidecar
    before = Path(sidecar).read_bytes()
    code = main(["build-trt", str(sidecar)])
    err = capsys.readouterr().err
    assert code == EXIT_UNAVAILABLE == 2
    assert "cannot build the engine on this machine: TensorRT is not installed here" in err
    assert "enn-nb build-trt model.engine.enn.json" in err and "trtexec --onnx=model.trt.onnx" in err
    assert Path(sidecar).read_bytes() == before  # nothing was touched
    # another backend's sidecar is refused whatever the machine
    assert main(["build-trt", str(all_nine["report"]["executorch"].sidecar)]) == 1
    assert "is a `executorch` sidecar, not a `tensorrt` one" in capsys.readouterr().err


# -- all nine at once -----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.multiprocess
def test_all_nine_at_once_one_capture_one_sidecar_each(all_nine, artifacts_dir):
    report = all_nine["report"]
    statuses = {r.backend: r.status for r in report}
    assert list(statuses) == ALL
    from enn_nb.engine.backends.tensorrt import build_unavailable_reason

    expected = {**dict.fromkeys(ALL, "ok"), "tensorrt": "deferred" if build_unavailable_reason() else "ok"}
    assert statuses == expected
    out = Path(all_nine["out"])
    sidecars = sorted(p.name for p in out.glob("*.enn.json"))
    assert len(sidecars) == 9 and len({sc.read(out / s)["backend"] for s in sidecars}) == 9
    artifacts = [r.artifact for r in report if r.status == "ok"]
    assert len(artifacts) == 8 and all(Path(a).exists() for a in artifacts)
    # one capture shared by all nine, one shared ONNX for the four ONNX consumers
    assert report.capture_s > 0 and {r.timings["capture"] for r in report} == {report.capture_s}
    onnx_users = ["onnx", "ort", "tensorflow", "tensorrt"]
    assert {report[n].timings["onnx"] for n in onnx_users} == {report.onnx_s}
    lines = [f"{'backend':<11} {'status':<9} {'convert s':>9} {'verify s':>8} {'total s':>8}"]
    for r in report:
        t = r.timings
        lines.append(f"{r.backend:<11} {r.status:<9} {t.get('convert', 0):>9.2f} {t.get('verify', 0):>8.2f} {t['total']:>8.2f}")
    lines.append(f"capture {report.capture_s:.2f} s, shared onnx {report.onnx_s:.2f} s, "
                 f"export wall time {all_nine['seconds']:.1f} s")
    (artifacts_dir / "export_all_nine_timings.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# -- availability ---------------------------------------------------------------------------------------
def test_backends_lists_all_nine_with_availability_here(capsys):
    from enn_nb.surfaces.cli import main

    table = enn_nb.backends()
    rows = {r.name: r for r in table}
    assert list(rows) == ALL
    for name in EDGE:
        assert rows[name].available, (name, rows[name].reason)
    if sys.platform != "darwin":
        assert rows["coreml"].runtime_available is False
        assert rows["coreml"].runtime_reason == "CoreML prediction requires macOS"
    from enn_nb.engine.backends.tensorrt import build_unavailable_reason

    if build_unavailable_reason() is not None:  # converts (deferred plan) but cannot build/run engines
        assert rows["tensorrt"].available is True and rows["tensorrt"].runtime_available is False
        assert rows["tensorrt"].runtime_reason.startswith(("TensorRT is not installed", "TensorRT needs a CUDA GPU"))
    assert main(["backends"]) == 0
    text = capsys.readouterr().out
    for name in ALL:
        assert f"\n{name} " in text
    if sys.platform != "darwin":
        assert "CoreML prediction requires macOS" in text


@pytest.mark.parametrize(
    ("backend", "module", "extra"),
    [
        ("executorch", "executorch", "executorch"),
        ("litert", "litert_torch", "litert"),
        ("litert", "ai_edge_litert", "litert"),
        ("coreml", "coremltools", "coreml"),
        ("tensorflow", "onnx2tf", "tensorflow"),
        ("tensorflow", "tensorflow", "tensorflow"),
        ("tensorrt", "polygraphy", "tensorrt"),
    ],
)
def test_a_missing_package_gives_one_line_with_the_extra(monkeypatch, backend, module, extra):
    monkeypatch.setitem(sys.modules, module, None)
    row = {r.name: r for r in enn_nb.backends()}[backend]
    assert row.available is False
    assert row.reason == f"`{module}` is not installed; install it with: %pip install 'enn-nb[{extra}]'"
    assert "\n" not in row.reason and row.install == f"%pip install 'enn-nb[{extra}]'"


def test_a_missing_tensorrt_defers_instead_of_making_the_backend_unavailable(monkeypatch):
    from enn_nb.engine.registry import get_backend

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    backend = get_backend("tensorrt")
    assert backend.unavailable_reason() is None
    assert backend.runtime_unavailable_reason() == (
        "TensorRT is not installed here (it installs on a CUDA host only: %pip install 'enn-nb[tensorrt]')"
    )


def test_convert_without_the_package_raises_the_install_hint(monkeypatch, tmp_path):
    from enn_nb.errors import MissingDependencyError
    from enn_nb.engine.backends.coreml import CoremlBackend

    monkeypatch.setitem(sys.modules, "coremltools", None)
    with pytest.raises(MissingDependencyError) as info:
        CoremlBackend().convert(None, tmp_path / "m.mlpackage", {})  # type: ignore[arg-type]
    assert info.value.extra == "coreml" and "%pip install 'enn-nb[coreml]'" in str(info.value)


def test_listing_backends_imports_no_converter():
    import subprocess

    code = (
        "import sys, enn_nb; enn_nb.backends(); "
        "heavy = [m for m in ('executorch', 'litert_torch', 'ai_edge_litert', 'coremltools', 'tensorflow', "
        "'onnx2tf', 'polygraphy', 'tensorrt') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_tensorrt_profile_and_build_commands_follow_the_options():
    import torch

    from enn_nb.engine.backends.base import TensorInfo
    from enn_nb.engine.backends.tensorrt import TensorrtBackend, build_commands, make_profile

    class Job:
        batch_range = (1, 8, 64)
        example_inputs = (torch.zeros(2, 38),)

    inputs = [TensorInfo("features", ["batch", 38], "float32")]
    opts = {**TensorrtBackend.default_options, "min_batch": 2, "opt_batch": 16, "max_batch": 128, "fp16": True,
            "tf32": True, "builder_optimization_level": 5}
    profile = make_profile(inputs, Job(), opts, dynamic=True)  # type: ignore[arg-type]
    assert profile == {"features": {"min": [2, 38], "opt": [16, 38], "max": [128, 38]}}
    assert make_profile(inputs, Job(), TensorrtBackend.default_options, dynamic=False) == {  # type: ignore[arg-type]
        "features": {"min": [2, 38], "opt": [2, 38], "max": [2, 38]}
    }
    cmds = build_commands("m.trt.onnx", "m.engine", profile, opts)
    assert cmds["trtexec"] == (
        "trtexec --onnx=m.trt.onnx --saveEngine=m.engine --minShapes=features:2x38 --optShapes=features:16x38 "
        "--maxShapes=features:128x38 --memPoolSize=workspace:2048M --builderOptimizationLevel=5 --fp16"
    )
    assert cmds["fp16_on_tensorrt_11"].startswith("python -m modelopt.onnx.autocast --onnx_path m.trt.onnx")
    with pytest.raises(ValueError, match=r"1 <= min <= opt <= max, got min=9, opt=8, max=64"):
        make_profile(inputs, Job(), {**TensorrtBackend.default_options, "min_batch": 9}, dynamic=True)  # type: ignore[arg-type]


def test_options_are_checked_with_the_allowed_values(tmp_path):
    from enn_nb.engine.backends.coreml import CoremlBackend
    from enn_nb.engine.backends.executorch import ExecutorchBackend

    with pytest.raises(ValueError, match=r"`executorch` option `delegate` is 'qnn'; allowed values: 'xnnpack', 'portable'"):
        ExecutorchBackend().convert(None, tmp_path / "m.pte", {"delegate": "qnn"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`coreml` option `compute_precision` is 'int8'"):
        CoremlBackend().convert(None, tmp_path / "m.mlpackage", {"compute_precision": "int8"})  # type: ignore[arg-type]


def test_captured_output_holds_native_prints_and_restores_the_streams(capfd):
    import os

    from enn_nb.engine.backends._edge_common import captured_output

    with captured_output() as log:
        print("python-level noise")
        os.write(1, b"fd-1 noise\n")
        os.write(2, b"fd-2 noise\n")
    print("after")
    seen = capfd.readouterr()
    assert "noise" not in seen.out + seen.err and "after" in seen.out
    assert "python-level noise" in log.text and "fd-1 noise" in log.text and "fd-2 noise" in log.text
