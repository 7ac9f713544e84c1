"""Helpers shared by the ONNX-consuming backends: I/O description, onnxruntime runners, metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from enn_nb._optional import require
from enn_nb.engine.backends.base import TensorInfo
from enn_nb.engine.options import Option

#: onnx TensorProto element types -> numpy dtype names.
_ONNX_DTYPES = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
    10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16",
}

#: How an ONNX-family artifact runs in onnxruntime (parity, latency): shared by onnx and ort.
RUNTIME_OPTIONS = (
    Option("intra_op_num_threads", int, None, "onnxruntime's intra-op threads when the artifact runs (parity, latency)",
           min=1),
    Option("providers", list, None, "onnxruntime execution providers, e.g. ['CPUExecutionProvider']"),
)


def describe(model: Any) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Inputs and outputs of an ``onnx.ModelProto``: names, shapes (dynamic dims as names), dtypes."""

    def info(value: Any) -> TensorInfo:
        tt = value.type.tensor_type
        shape: list[int | str] = [d.dim_param if d.dim_param else int(d.dim_value) for d in tt.shape.dim]
        return TensorInfo(value.name, shape, _ONNX_DTYPES.get(tt.elem_type, str(tt.elem_type)))

    initializers = {i.name for i in model.graph.initializer}
    inputs = [info(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [info(v) for v in model.graph.output]


def session_describe(session: Any) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Inputs and outputs as an onnxruntime session sees them (works for .ort files too)."""

    def dtype(text: str) -> str:
        inner = text.removeprefix("tensor(").removesuffix(")")
        return {"float": "float32", "double": "float64"}.get(inner, inner)

    def info(arg: Any) -> TensorInfo:
        shape = [d if isinstance(d, int) else str(d) for d in arg.shape]
        return TensorInfo(arg.name, shape, dtype(arg.type))

    return [info(a) for a in session.get_inputs()], [info(a) for a in session.get_outputs()]


def ort_session(path: Path, options: dict[str, Any]) -> Any:
    ort = require("onnxruntime", purpose="running ONNX/ORT artifacts")
    so = ort.SessionOptions()
    threads = options.get("intra_op_num_threads")
    if threads:
        so.intra_op_num_threads = int(threads)
    so.log_severity_level = 3
    providers = options.get("providers") or ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), sess_options=so, providers=list(providers))


def ort_runner(path: Path, options: dict[str, Any]):  # type: ignore[no-untyped-def]
    """A runner (list of numpy inputs -> list of numpy outputs) on onnxruntime."""
    session = ort_session(path, options)
    names = [i.name for i in session.get_inputs()]

    def run(inputs: list[Any]) -> list[Any]:
        return list(session.run(None, dict(zip(names, inputs))))

    return run


def ort_metadata(path: Path) -> dict[str, str]:
    ort = require("onnxruntime", purpose="reading ONNX/ORT metadata")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


#: The quantize modes of every backend built from the shared ONNX (onnxruntime's own quantizers).
QUANTIZE_MODES: dict[str, str] = {
    "fp16": "onnxruntime.transformers.float16.convert_float_to_float16",
    "int8-weights": "onnxruntime.quantization.quantize_dynamic",
    "int8": "onnxruntime.quantization.quantize_static (QDQ, calibrated)",
}


def quantize_onnx(backend: Any, job: Any, out_path: Any, options: dict[str, Any], mode: str, calibration: Any) -> Any:
    """``Backend.quantize`` of the ONNX-built backends: the shared ONNX quantized, then converted as usual."""
    from enn_nb.engine.quantize import quantizers

    return quantizers.quantize_onnx(backend, job, out_path, options, mode, calibration)
