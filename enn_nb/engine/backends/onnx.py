"""ONNX backend: the shared single-file ONNX (``torch.onnx.export(dynamo=True)``), checked, run with onnxruntime."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, ClassVar

from enn_nb._optional import require
from enn_nb.engine.backends._onnx_common import QUANTIZE_MODES, RUNTIME_OPTIONS, describe, ort_runner, quantize_onnx
from enn_nb.engine.backends.base import Backend, Conversion, ExportJob
from enn_nb.engine.options import Option, defaults


class OnnxBackend(Backend):
    """``.onnx`` from the export's one ExportedProgram.

    The file is the export's shared ONNX (batch dimension named ``batch``, essentials in
    ``metadata_props``), single-file unless the weights exceed 2 GB, then validated with
    ``onnx.checker.check_model(full_check=True)``. Options ``opset`` and ``optimize`` shape the
    shared ONNX (pass them as ``options={"onnx": {...}}``); ``check`` (default True) runs the checker.
    """

    name: ClassVar[str] = "onnx"
    suffix: ClassVar[str] = ".onnx"
    description: ClassVar[str] = "ONNX (torch.onnx dynamo exporter), verified with onnxruntime"
    extra: ClassVar[str] = "onnx"
    requires: ClassVar[tuple[str, ...]] = ("onnx", "onnxscript")
    runtime_requires: ClassVar[tuple[str, ...] | None] = ("onnxruntime",)
    consumes: ClassVar[str] = "onnx"
    cost: ClassVar[float] = 3.0
    default_tolerance: ClassVar[tuple[float, float]] = (1e-4, 1e-4)
    thread_option: ClassVar[str | None] = "intra_op_num_threads"
    options: ClassVar[tuple[Option, ...]] = (
        Option("opset", int, None, "ONNX opset of the shared ONNX (torch.onnx's dynamo exporter: 18 to 23; None: its "
               "default)", min=18, max=23),
        Option("optimize", bool, True, "let torch.onnx optimise the graph (constant folding, fusions)"),
        Option("check", bool, True, "run onnx.checker.check_model(full_check=True) on the artifact"),
        *RUNTIME_OPTIONS,
    )
    default_options: ClassVar[dict[str, Any]] = defaults(options)
    quantize_modes: ClassVar[dict[str, str]] = QUANTIZE_MODES
    quantize = quantize_onnx

    def convert(self, job: ExportJob, out_path: Path, options: dict[str, Any]) -> Conversion:
        onnx = require("onnx", purpose="the `onnx` backend")
        source = job.onnx_path
        extra_files: list[Path] = []
        model = onnx.load(str(source), load_external_data=False)
        if _has_external_data(model):
            # the data file is named after this artifact, not after the shared file
            extra_files.append(_relocate_external_data(model, source, out_path))
        else:
            shutil.copyfile(source, out_path)
        if options.get("check", True):
            onnx.checker.check_model(str(out_path), full_check=True)
        inputs, outputs = describe(model)
        dynamic = bool(inputs and inputs[0].shape and isinstance(inputs[0].shape[0], str))
        return Conversion(
            artifact=out_path,
            inputs=inputs,
            outputs=outputs,
            extra_files=extra_files,
            format={
                "format": "onnx",
                "opset": _opset(model),
                "ir_version": int(model.ir_version),
                "producer": f"{model.producer_name} {model.producer_version}".strip(),
                "external_data": bool(extra_files),
            },
            dynamic_batch=dynamic,
            embedded_metadata=True,
            details={"checker": "onnx.checker.check_model(full_check=True)" if options.get("check", True) else None},
        )

    def load(self, artifact: Path, options: dict[str, Any]):  # type: ignore[no-untyped-def]
        return ort_runner(artifact, options)

    def read_metadata(self, artifact: Path) -> dict[str, str] | None:
        onnx = require("onnx", purpose="reading ONNX metadata")
        model = onnx.load(str(artifact), load_external_data=False)
        return {p.key: p.value for p in model.metadata_props}


def _relocate_external_data(model: Any, source: Path, out_path: Path) -> Path:
    """Point ``model``'s external tensors at ``<artifact>.data`` and give that name the shared data file.

    Only the small graph proto is rewritten; the weights (gigabytes, the reason they are external)
    are copied by the kernel (``shutil.copyfile`` uses sendfile), never loaded into memory. Not a hard
    link: ``onnx.checker`` refuses data files with several links (a hard-link attack guard).
    """
    import onnx
    from onnx.external_data_helper import uses_external_data

    data_path = out_path.with_name(out_path.name + ".data")
    tensors = [t for t in model.graph.initializer if uses_external_data(t)]
    locations = {entry.value for t in tensors for entry in t.external_data if entry.key == "location"}
    if len(locations) != 1:  # several data files: gather them into one through onnx (loads the weights)
        full = onnx.load(str(source))
        onnx.save(full, str(out_path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=data_path.name, size_threshold=0)
        return data_path
    shutil.copyfile(source.parent / locations.pop(), data_path)
    for tensor in tensors:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = data_path.name
    onnx.save(model, str(out_path))
    return data_path


def _has_external_data(model: Any) -> bool:
    from onnx.external_data_helper import uses_external_data

    return any(uses_external_data(t) for t in model.graph.initializer)


def _opset(model: Any) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None
