"""Models of every shape class users bring, through every backend available here, with parity.

GRU forecaster ``[B, T, F]``, ids + mask (positional and ``*args`` forwards), calendar codes as a
separate int input, a dict-output head. CoreML converts but cannot run on Linux: ``ok`` with parity
``skipped`` is "converted, not verified". Fallbacks must be visible: a note and ``conversion_path``.
"""

from __future__ import annotations

import json
import sys

import pytest

import enn_nb
from enn_nb.engine.registry import get_backend
from enn_nb.reference import zoo

BACKENDS = ("onnx", "ort", "pt2", "aoti", "executorch", "litert", "coreml", "tensorflow")
AVAILABLE = [name for name in BACKENDS if get_backend(name).unavailable_reason() is None]

#: The backends each model goes through: every one for the GRU (it meets the ExecuTorch, TensorFlow and
#: CoreML fallbacks); the others skip what they would only repeat (AOTInductor compiles the same kind of
#: program as pt2 captures; the *args and calendar models reach onnx2tf through the same shared ONNX).
PER_MODEL = {
    "gru_forecaster": BACKENDS,
    "ids_mask": tuple(b for b in BACKENDS if b != "aoti"),
    "ids_mask_args": ("onnx", "pt2", "executorch", "litert", "coreml"),
    "calendar_forecaster": ("onnx", "pt2", "executorch", "litert", "coreml"),
    "gaussian_head": tuple(b for b in BACKENDS if b != "aoti"),
}

#: model -> (input names, output names) the artifacts must carry
EXPECTED = {
    "gru_forecaster": (["values"], ["prediction"]),
    "ids_mask": (["ids", "mask"], ["prediction"]),
    "ids_mask_args": (["args_0", "args_1"], ["prediction"]),
    "calendar_forecaster": (["values", "calendar"], ["prediction"]),
    "gaussian_head": (["features"], ["mean", "scale"]),
}


def export_zoo(name: str, out_dir) -> enn_nb.engine.ExportReport:  # type: ignore[name-defined]
    model = zoo.FACTORIES[name]()
    spec = enn_nb.ModelSpec.from_model(model, zoo.example_inputs(name))
    backends = [b for b in PER_MODEL[name] if b in AVAILABLE]
    return enn_nb.export(model, backends, out_dir=out_dir, spec=spec, isolate=False, cache=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPECTED))
def test_zoo_model_through_every_backend(name: str, tmp_path) -> None:
    report = export_zoo(name, tmp_path)
    want_in, want_out = EXPECTED[name]
    by_name = {r.backend: r for r in report.results}
    assert sorted(by_name) == sorted(b for b in PER_MODEL[name] if b in AVAILABLE)
    for backend, result in by_name.items():
        assert result.status == "ok", f"{backend}: {result.status} {result.error}"
        side = json.loads(result.sidecar.read_text())
        assert [s["name"] for s in side["signature"]["inputs"]] == want_in
        assert [s["name"] for s in side["signature"]["outputs"]] == want_out
        path = side["conversion_path"]
        if path["name"] != "shared" or path["costs"]:
            # a fallback or a cast changes what the artifact accepts: it must be said, never silent
            assert result.notes, f"{backend}: conversion path {path} without a note"
        if backend == "coreml" and sys.platform != "darwin":
            assert result.parity["status"] == "skipped"  # converted, not verified
        else:
            assert result.parity["status"] == "passed", f"{backend}: {result.parity}"
            assert result.max_abs_err < 1e-4
        if backend in ("onnx", "ort", "tensorflow", "litert", "coreml"):  # formats with I/O names
            assert [t["name"] for t in result.inputs] == want_in, backend
            assert [t["name"] for t in result.outputs] == want_out, backend
    if "litert" in by_name and name in ("ids_mask", "ids_mask_args", "calendar_forecaster"):
        litert = json.loads(by_name["litert"].sidecar.read_text())
        casts = litert["details"]["input_casts"]
        assert casts and all(c["model"] == "int64" and c["artifact"] == "int32" for c in casts)
        assert litert["conversion_path"]["costs"]


@pytest.mark.slow
def test_onnx_names_every_symbolic_dim(tmp_path) -> None:
    import onnx

    model = zoo.ids_mask()
    spec = enn_nb.ModelSpec(inputs=["ids:int64[B, T]{50}", "mask:bool[B, T]"])
    report = enn_nb.export(model, "onnx", out_dir=tmp_path, spec=spec, isolate=False, cache=False)
    (result,) = report.results
    assert result.status == "ok" and result.parity["status"] == "passed"
    graph = onnx.load(str(result.artifact)).graph
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input]
    assert dims == [["batch", "time"], ["batch", "time"]]
    assert set(json.loads(result.sidecar.read_text())["dynamic_dims"]) == {"batch", "time"}
