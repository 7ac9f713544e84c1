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
    both_paths_failed,
    captured_output,
    check_option,
    first_line,
    program_io,
    retrace,
    uses_float64,
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

    MIL has no float64 arithmetic: coremltools computes the model's float64 ops in float32 (a note says
    so on the models that have float64).

    When coremltools cannot convert the program it tries, in order: the core ATen decompositions
    (``gru``, ``lstm``, ``new_ones``, ``diff``, ``__and__`` on bools), then those plus small rewrites of
    ops it lacks (``unfold`` as an ``index_select``, ``alias`` as a ``view``), then, for a dynamic batch,
    the same ladder with static shapes. Each step taken is a note and a cost in ``conversion_path``.
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

        def convert(program: Any, dynamic: bool) -> Any:
            ct_inputs = []
            for name, tensor in zip(job.input_names, job.example_inputs):
                rest = tuple(int(d) for d in tensor.shape[1:])
                first: Any = ct.RangeDim(lower_bound=low, upper_bound=high, default=opt) if dynamic else int(tensor.shape[0])
                dtype = np.float32 if tensor.dtype.is_floating_point else np.int32
                ct_inputs.append(ct.TensorType(name=name, shape=(first, *rest), dtype=dtype))
            ct_outputs = [ct.TensorType(name=name, dtype=np.float32 if precision == "float32" else np.float16)
                          for name in job.output_names]
            return ct.convert(
                program,
                convert_to="mlprogram",
                inputs=ct_inputs,
                outputs=ct_outputs,
                minimum_deployment_target=target,
                compute_precision=ct.precision.FLOAT32 if precision == "float32" else ct.precision.FLOAT16,
                compute_units=ct.ComputeUnit[opts["compute_units"]],
            )

        with captured_output() as log:
            try:
                model, ladder = _convert_with_ladder(convert, ep, dynamic, tuple(job.example_inputs))
            except _AllFailed as first:
                if not dynamic:
                    raise BackendError(
                        f"`coreml` conversion failed: {first.summary()}\n--- coremltools output (tail) ---\n{log.tail()}",
                        backend=self.name, stage="convert",
                    ) from first.cause
                # coremltools refuses some dynamic-shape graphs (rank > 5 reshapes of a Swin-style window
                # partition, "Cannot add const" of a shape computed from the batch) that convert with
                # static shapes, as TensorFlow/ExecuTorch/LiteRT do: the static program is the fallback.
                ep = retrace(ep, job, None)
                try:
                    model, ladder = _convert_with_ladder(convert, ep, False, tuple(job.example_inputs))
                except _AllFailed as second:
                    raise both_paths_failed(self.name, "conversion", first, second) from second.cause
                dynamic = False
                batch = int(job.example_inputs[0].shape[0])
                ladder["notes"].insert(0, (
                    f"converted with static shapes after coremltools failed on the dynamic batch "
                    f"({first.summary()}): the artifact accepts batch {batch} only."
                ))
                ladder["costs"].insert(0, f"static batch {batch}")
                ladder["name"] = "static-shapes" if ladder["name"] == "shared" else f"static-shapes+{ladder['name']}"
        fallback_notes = ladder["notes"]
        path = {"name": ladder["name"], "costs": ladder["costs"]} if ladder["costs"] else None
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
                *([_FLOAT64_NOTE] if uses_float64(ep) else []),
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


_FLOAT64_NOTE = "MIL has no float64 arithmetic: coremltools computes the model's float64 ops in float32."


class _AllFailed(Exception):
    """Every rung of the decomposition ladder failed; ``errors`` holds each rung's exception."""

    def __init__(self, errors: list[tuple[str, BaseException]]) -> None:
        super().__init__(self.summary_of(errors))
        self.errors = errors
        self.cause = errors[0][1]

    @staticmethod
    def summary_of(errors: list[tuple[str, BaseException]]) -> str:
        first = first_line(errors[0][1])
        rest = [f"{name}: {first_line(exc)}" for name, exc in errors[1:] if first_line(exc) != first]
        if rest:
            return f"{first} (after {'; '.join(rest)})"
        tried = " and rewrites" if len(errors) > 2 else ""
        return f"{first}; the same after core ATen decompositions{tried}"

    def summary(self) -> str:
        return self.summary_of(self.errors)


def _convert_with_ladder(convert: Any, ep: Any, dynamic: bool, example: tuple[Any, ...]) -> tuple[Any, dict[str, Any]]:
    """``convert(program, dynamic)`` of the program as it is, then decomposed to core ATen ops, then with
    the rewrites too; the model and ``{"name", "costs", "notes"}`` of the rung that converted."""
    import torch

    errors: list[tuple[str, BaseException]] = []
    rungs = [
        ("shared", lambda: ep.run_decompositions({}), [], None),
        ("core-aten-decompositions", lambda: ep.run_decompositions(torch.export.default_decompositions()),
         ["more, smaller ops (no fused kernels)"],
         "converted after `run_decompositions(torch.export.default_decompositions())` (core ATen ops): the "
         "program's own ops do not convert ({why}). Same function, more and smaller ops in the ML Program."),
    ]
    rewritten = _rewritable_ops(ep)
    if rewritten:
        what = ", ".join(f"`{op}` as {_REWRITES[op]}" for op in rewritten)
        rungs.append((
            "core-aten+rewrites", lambda: _rewritten(ep, example),
            ["more, smaller ops (no fused kernels)", f"rewritten ops: {what}"],
            f"converted after core ATen decompositions plus enn_nb's rewrites of ops coremltools lacks ({what}; "
            "{why}). The rewritten program was checked against the captured one in torch on the example inputs.",
        ))
    for name, program, costs, note in rungs:
        try:
            model = convert(program(), dynamic)
        except Exception as exc:  # noqa: BLE001 - each rung's cause is kept for the error
            errors.append((name, exc))
            continue
        why = first_line(errors[0][1], 160) if errors else ""
        return model, {"name": name, "costs": list(costs), "notes": [note.format(why=why)] if note else []}
    raise _AllFailed(errors)


#: ATen ops coremltools 9 has no conversion for, and what enn_nb rewrites them as.
_REWRITES = {"unfold": "an `index_select` of the windows", "alias": "a `view`"}


def _rewritable_ops(ep: Any) -> list[str]:
    names = {getattr(getattr(n.target, "_overloadpacket", None), "__name__", None)
             for n in ep.graph.nodes if n.op == "call_function"}
    return [op for op in _REWRITES if op in names]


def _rewritten(ep: Any, example: tuple[Any, ...]) -> Any:
    """The program decomposed with :func:`_rewrite_table`, checked against ``ep`` on ``example``
    (CoreML cannot predict on Linux, so the rewrite is checked where it can be: in torch)."""
    import torch
    from torch.utils._pytree import tree_leaves

    program = ep.run_decompositions(_rewrite_table())
    with torch.no_grad():
        want = tree_leaves(ep.module()(*example))
        got = tree_leaves(program.module()(*example))
    # the same values gathered another way; a matmul over another memory layout may round differently
    if len(want) != len(got) or not all(torch.allclose(a, b, rtol=1e-6, atol=1e-6) for a, b in zip(want, got)):
        raise BackendError("enn_nb's rewrite of `unfold`/`alias` changed the program's outputs; not converted.",
                           backend="coreml", stage="convert")
    return program


def _rewrite_table() -> dict[Any, Any]:
    """The core ATen decomposition table plus rewrites of ops coremltools 9 has no conversion for."""
    import torch

    aten = torch.ops.aten
    table = dict(torch.export.default_decompositions())

    def unfold(x: Any, dim: int, size: int, step: int) -> Any:
        # windows of `size` every `step` along `dim`: gather them with one index_select, then put the
        # window axis last (what `Tensor.unfold` returns)
        dim = dim % max(x.dim(), 1)
        count = (x.shape[dim] - size) // step + 1
        index = (torch.arange(count, device=x.device) * step).unsqueeze(1) + torch.arange(size, device=x.device)
        gathered = aten.index_select.default(x, dim, index.reshape(-1))
        return gathered.unflatten(dim, (count, size)).movedim(dim + 1, -1)

    def alias(x: Any) -> Any:
        return aten.view.default(x, list(x.shape))

    table[aten.unfold.default] = unfold
    table[aten.alias.default] = alias
    return table


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
