"""CoreML backend: the shared ExportedProgram converted by coremltools to an ML Program ``.mlpackage``."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from enn_nb._optional import require
from enn_nb._version import __version__
from enn_nb.errors import BackendError, PlatformUnavailableError
from enn_nb.engine.backends._edge_common import (
    BATCH,
    batch_bounds,
    captured_output,
    check_option,
    first_line,
    program_io,
)
from enn_nb.engine.backends.base import Backend, Conversion, ExportJob, Runner, TensorInfo
from enn_nb.engine.options import Option, defaults

PRECISIONS = ("float32", "float16")
COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")
#: coremltools writes these user-defined keys itself; they are not the model's essentials.
_TOOL_KEY_PREFIX = "com.github.apple.coremltools."
_MACOS_ONLY = "CoreML prediction requires macOS"

_FEATURE_DTYPES = {"float32": "FLOAT32", "float16": "FLOAT16", "float64": "DOUBLE", "int32": "INT32"}


class CoremlBackend(Backend):
    """``coremltools.convert`` of ``ep.run_decompositions({})`` to an ML Program (``.mlpackage``).

    The batch is a ``RangeDim(min, max, default=opt)`` from the export's ``batch_range`` when the
    capture is dynamic. Metadata: ``short_description``, ``version`` and ``user_defined_metadata``
    (the essentials). After conversion the spec is loaded back from disk and its input/output names,
    shapes and metadata are checked (that is all Linux can do: prediction needs macOS).

    Options:
        minimum_deployment_target: ``"iOS16"`` (default; fp32 outputs need iOS16/macOS13) ...
            any name of ``coremltools.target`` (``"iOS17"``, ``"macOS14"``...).
        compute_precision: ``"float32"`` (default) or ``"float16"`` (smaller, Neural-Engine friendly;
            pass ``tolerances=(5e-2, 5e-2)`` for it).
        compute_units: for prediction on macOS: ``"ALL"`` (default), ``"CPU_ONLY"``, ``"CPU_AND_GPU"``,
            ``"CPU_AND_NE"``.
        version: the model version string (default: the source checkpoint's hash prefix, else the
            enn_nb version).
        author, license: optional metadata strings.

    MIL has no float64 arithmetic: coremltools computes the model's float64 ops in float32.
    """

    name: ClassVar[str] = "coreml"
    suffix: ClassVar[str] = ".mlpackage"
    description: ClassVar[str] = "CoreML ML Program (.mlpackage) via coremltools; predicts on macOS/iOS only"
    extra: ClassVar[str] = "coreml"
    requires: ClassVar[tuple[str, ...]] = ("coremltools",)
    consumes: ClassVar[str] = "exported_program"
    directory_artifact: ClassVar[bool] = True
    # fp32 on CPU/GPU; the GPU's fp32 reductions reorder sums. float16 needs a wider override.
    default_tolerance: ClassVar[tuple[float, float]] = (1e-3, 1e-3)
    options: ClassVar[tuple[Option, ...]] = (
        Option("minimum_deployment_target", str, "iOS16", "coremltools target name (iOS16, macOS13...)"),
        Option("compute_precision", str, "float32", "ML Program precision", choices=PRECISIONS),
        Option("compute_units", str, "ALL", "where CoreML may run the model", choices=COMPUTE_UNITS),
        Option("version", str, None, "the model's version string in its metadata"),
        Option("author", str, None, "the author in the model's metadata"),
        Option("license", str, None, "the license in the model's metadata"),
    )
    default_options: ClassVar[dict[str, Any]] = defaults(options)
    quantize_modes: ClassVar[dict[str, str]] = {
        "fp16": "coremltools.convert(compute_precision=FLOAT16)",
        "int8-weights": "coremltools.optimize.coreml.linear_quantize_weights",
    }

    def quantize(self, job: ExportJob, out_path: Path, options: dict[str, Any], mode: str, calibration: Any) -> Conversion:
        from enn_nb.engine.quantize.quantizers import quantize_coreml

        return quantize_coreml(self, job, out_path, options, mode, calibration)

    def runtime_platform_reason(self) -> str | None:
        return None if sys.platform == "darwin" else _MACOS_ONLY

    def convert(self, job: ExportJob, out_path: Path, options: dict[str, Any]) -> Conversion:
        opts = {**self.default_options, **options}
        precision = check_option(self.name, "compute_precision", opts["compute_precision"], PRECISIONS)
        check_option(self.name, "compute_units", opts["compute_units"], COMPUTE_UNITS)
        ct = _coremltools("the `coreml` backend")
        import numpy as np

        target_name = str(opts["minimum_deployment_target"])
        target = getattr(ct.target, target_name, None)
        if target is None:
            known = sorted(t for t in dir(ct.target) if t[:3] in ("iOS", "mac", "tvO", "wat", "vis"))
            raise ValueError(
                f"`coreml` option `minimum_deployment_target` is {target_name!r}; allowed values: {', '.join(known)}."
            )
        ep = job.exported_program
        bounds = batch_bounds(ep)
        low, opt, high = max(1, job.batch_range[0]), job.batch_range[1], job.batch_range[2]
        dynamic = bool(job.dynamic_batch) and bounds is not None and low < high
        ct_inputs = []
        for name, tensor in zip(job.input_names, job.example_inputs):
            rest = tuple(int(d) for d in tensor.shape[1:])
            first: Any = ct.RangeDim(lower_bound=low, upper_bound=high, default=opt) if dynamic else int(tensor.shape[0])
            dtype = np.float32 if tensor.dtype.is_floating_point else np.int32
            ct_inputs.append(ct.TensorType(name=name, shape=(first, *rest), dtype=dtype))
        ct_outputs = [ct.TensorType(name=name, dtype=np.float32 if precision == "float32" else np.float16)
                      for name in job.output_names]
        def convert(program: Any) -> Any:
            return ct.convert(
                program,
                convert_to="mlprogram",
                inputs=ct_inputs,
                outputs=ct_outputs,
                minimum_deployment_target=target,
                compute_precision=ct.precision.FLOAT32 if precision == "float32" else ct.precision.FLOAT16,
                compute_units=ct.ComputeUnit[opts["compute_units"]],
            )

        fallback_notes: list[str] = []
        path = None
        with captured_output() as log:
            try:
                model = convert(ep.run_decompositions({}))
            except Exception as exc:
                # coremltools has no conversion for some ATen ops (gru, lstm, new_ones, diff) that the
                # core ATen decomposition table rewrites into ops it knows: try that before giving up.
                import torch

                try:
                    model = convert(ep.run_decompositions(torch.export.default_decompositions()))
                except Exception as core_exc:
                    raise BackendError(
                        f"`coreml` conversion failed: {first_line(exc)}; after decomposing to core ATen ops too: "
                        f"{first_line(core_exc)}\n--- coremltools output (tail) ---\n{log.tail()}",
                        backend=self.name,
                        stage="convert",
                    ) from exc
                fallback_notes.append(
                    f"converted after `run_decompositions(torch.export.default_decompositions())` (core ATen ops): "
                    f"the program's own ops do not convert ({first_line(exc, 160)}). Same function, more and "
                    "smaller ops in the ML Program."
                )
                path = {"name": "core-aten-decompositions", "costs": ["more, smaller ops (no fused kernels)"]}
        _, program_outputs = program_io(ep, job, dynamic=dynamic)
        model.short_description = _description(job, program_outputs)
        model.version = str(opts["version"] or (job.essentials.get("enn_nb.source_hash") or "")[:16]
                            or f"enn_nb-{__version__}")
        if opts["author"]:
            model.author = str(opts["author"])
        if opts["license"]:
            model.license = str(opts["license"])
        for key, value in job.essentials.items():
            model.user_defined_metadata[key] = value
        for name, tensor in zip(job.input_names, job.example_inputs):
            shape = ", ".join([BATCH if dynamic else str(tensor.shape[0]), *(str(d) for d in tensor.shape[1:])])
            model.input_description[name] = f"raw features [{shape}] {str(tensor.dtype).removeprefix('torch.')}"
        _save(model, out_path)

        inputs, outputs = describe(out_path, program_outputs)
        check = self._check_spec(out_path, job, inputs, outputs, dynamic, (low, high))
        return Conversion(
            artifact=out_path,
            inputs=inputs,
            outputs=outputs,
            format={
                "name": "CoreML ML Program",
                "specification_version": check["specification_version"],
                "minimum_deployment_target": target_name,
                "compute_precision": precision,
                "coremltools": ct.__version__,
            },
            dynamic_batch=dynamic,
            path=path,
            notes=[
                *fallback_notes,
                "MIL has no float64 arithmetic: coremltools computes the model's float64 ops in float32.",
                *([] if sys.platform == "darwin" else [
                    "verified by loading the spec back (names, shapes, metadata); prediction needs macOS."
                ]),
            ],
            details={"spec_check": check, "batch_bounds": [low, high] if dynamic else None},
            embedded_metadata=True,
        )

    def _check_spec(
        self, artifact: Path, job: ExportJob, inputs: list[TensorInfo], outputs: list[TensorInfo],
        dynamic: bool, bounds: tuple[int, int],
    ) -> dict[str, Any]:
        """Load the saved spec and compare it with what was asked; BackendError on any difference."""
        ct = _coremltools("the `coreml` backend")
        spec = ct.utils.load_spec(str(artifact))
        problems = []
        if [t.name for t in inputs] != list(job.input_names):
            problems.append(f"inputs {[t.name for t in inputs]} != {job.input_names}")
        if [t.name for t in outputs] != list(job.output_names):
            problems.append(f"outputs {[t.name for t in outputs]} != {job.output_names}")
        for info, tensor in zip(inputs, job.example_inputs):
            want = [BATCH if dynamic else int(tensor.shape[0]), *(int(d) for d in tensor.shape[1:])]
            if info.shape != want:
                problems.append(f"input `{info.name}` has shape {info.shape}, expected {want}")
        if dynamic:
            ranges = spec.description.input[0].type.multiArrayType.shapeRange.sizeRanges
            got = (int(ranges[0].lowerBound), int(ranges[0].upperBound)) if ranges else None
            if got != bounds:
                problems.append(f"batch range {got} != {bounds}")
        embedded = read_user_metadata(spec)
        missing = {k for k, v in job.essentials.items() if embedded.get(k) != v}
        if missing:
            problems.append(f"metadata keys not embedded as written: {sorted(missing)}")
        if problems:
            raise BackendError(
                "`coreml` spec check failed after saving: " + "; ".join(problems), backend=self.name, stage="verify"
            )
        return {
            "specification_version": int(spec.specificationVersion),
            "inputs": [t.to_dict() for t in inputs],
            "outputs": [t.to_dict() for t in outputs],
            "metadata_keys": len(job.essentials),
            "passed": True,
        }

    def load(self, artifact: Path, options: dict[str, Any]) -> Runner:
        if sys.platform != "darwin":
            raise PlatformUnavailableError(
                f"{_MACOS_ONLY}: `coremltools.models.MLModel.predict` runs on macOS only; this is {sys.platform}. "
                "Copy the .mlpackage (and its sidecar) to a Mac and run `enn-nb verify` there."
            )
        opts = {**self.default_options, **options}
        ct = _coremltools("running `.mlpackage` artifacts")
        model = ct.models.MLModel(str(artifact), compute_units=ct.ComputeUnit[opts["compute_units"]])
        spec = model.get_spec()
        in_names = [i.name for i in spec.description.input]
        out_names = [o.name for o in spec.description.output]

        def run(inputs: list[Any]) -> list[Any]:
            import numpy as np

            result = model.predict({name: np.ascontiguousarray(a) for name, a in zip(in_names, inputs)})
            return [np.asarray(result[name]) for name in out_names]

        return run

    def read_metadata(self, artifact: Path) -> dict[str, str] | None:
        ct = _coremltools("reading `.mlpackage` metadata")
        return read_user_metadata(ct.utils.load_spec(str(artifact))) or None


def _coremltools(purpose: str) -> Any:
    with captured_output():  # coremltools warns on import about untested torch/sklearn versions
        return require("coremltools", purpose=purpose)


def read_user_metadata(spec: Any) -> dict[str, str]:
    """The user-defined metadata of a CoreML spec, without coremltools' own keys."""
    return {
        str(k): str(v)
        for k, v in spec.description.metadata.userDefined.items()
        if not str(k).startswith(_TOOL_KEY_PREFIX)
    }


def describe(artifact: Path, program_outputs: list[TensorInfo]) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Inputs (shape and range from the spec) and outputs (names/dtypes from the spec; ML Program
    specs carry no output shapes, so those come from the captured program)."""
    ct = _coremltools("the `coreml` backend")
    spec = ct.utils.load_spec(str(artifact))
    ft = ct.proto.FeatureTypes_pb2.ArrayFeatureType

    def dtype(array_type: Any) -> str:
        name = ft.ArrayDataType.Name(array_type.dataType)
        return {v: k for k, v in _FEATURE_DTYPES.items()}.get(name, name.lower())

    inputs = []
    for item in spec.description.input:
        arr = item.type.multiArrayType
        ranges = arr.shapeRange.sizeRanges
        shape: list[int | str] = []
        for i, d in enumerate(arr.shape):
            if ranges and ranges[i].lowerBound != ranges[i].upperBound:
                shape.append(BATCH if i == 0 else "?")
            else:
                shape.append(int(d))
        inputs.append(TensorInfo(item.name, shape, dtype(arr)))
    by_name = {t.name: t for t in program_outputs}
    outputs = []
    for i, item in enumerate(spec.description.output):
        ref = by_name.get(item.name) or (program_outputs[i] if i < len(program_outputs) else None)
        outputs.append(TensorInfo(item.name, list(ref.shape) if ref else [], dtype(item.type.multiArrayType)))
    return inputs, outputs


def _description(job: ExportJob, outputs: list[TensorInfo]) -> str:
    ins = ", ".join(
        f"{n} [{', '.join(['batch', *(str(d) for d in t.shape[1:])])}]" for n, t in zip(job.input_names, job.example_inputs)
    )
    outs = ", ".join(f"{t.name} [{', '.join(str(d) for d in t.shape)}]" for t in outputs)
    return f"ENN model exported by enn_nb {__version__}: {ins} -> {outs}"


def _save(model: Any, out_path: Path) -> None:
    """coremltools insists on the ``.mlpackage`` extension: save under it, then move to ``out_path``."""
    if out_path.suffix == ".mlpackage":
        model.save(str(out_path))
        return
    tmp = Path(tempfile.mkdtemp(prefix=".coreml-", dir=out_path.parent))
    try:
        target = tmp / "model.mlpackage"
        model.save(str(target))
        if out_path.exists():
            shutil.rmtree(out_path)
        os.replace(target, out_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
