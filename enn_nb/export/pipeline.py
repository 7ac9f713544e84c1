"""The export engine: checks, one capture, one lowering per backend (maybe isolated), parity, sidecars, cache."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb._version import __version__
from enn_nb.errors import (
    BackendError,
    ExportError,
    FastPathExportError,
    MissingDependencyError,
    OutputDirError,
    ParityError,
    SpecError,
)
from enn_nb.export import sidecar as sc
from enn_nb.export.backends.base import Backend
from enn_nb.export.parity import VECTORS_SUFFIX
from enn_nb.export.report import BackendResult, ExportReport

if TYPE_CHECKING:
    import torch

    from enn_nb.spec import ModelSpec

Progress = Callable[[dict[str, Any]], None]

log = logging.getLogger(__name__)

_STAGES = ("capture", "convert", "verify", "sidecar", "done")


@dataclasses.dataclass
class _Plan:
    """One requested backend as the engine sees it."""

    index: int
    name: str
    backend: Backend
    options: dict[str, Any]
    tolerance: tuple[float, float]
    key: str | None = None
    result: BackendResult | None = None


def export(
    model_or_checkpoint: Any,
    backends: str | Sequence[str],
    *,
    out_dir: str | os.PathLike[str],
    example_inputs: Any = None,
    dynamic_batch: bool = True,
    batch_range: tuple[int, int, int] = (1, 8, 64),
    verify: bool = True,
    tolerances: Any = None,
    isolate: bool = True,
    cache: bool = True,
    strict: bool = False,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    spec: ModelSpec | None = None,
    metadata: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    stem: str = "model",
    safe: bool = True,
    workers: int | None = None,
) -> ExportReport:
    """Export a model (or a checkpoint) to one or more backends, with parity and a sidecar per artifact.

    Args:
        model_or_checkpoint: an ``nn.Module`` or the path of a checkpoint (``enn_nb.load`` reads it;
            its content hash goes into the sidecars).
        backends: names (list or ``"onnx,ort"``) or ``"all"``; see ``enn_nb.backends()``.
        out_dir: folder for artifacts, sidecars and the vectors file (created if needed).
        example_inputs: a tensor or tuple of tensors; default: drawn from the spec at batch 2.
        dynamic_batch: make dim 0 dynamic (``torch.export.Dim``); static when the model specialises it.
        batch_range: ``(min, opt, max)`` batch sizes for backends that need bounds (TensorRT, CoreML).
        verify: run each artifact at >= 2 batch sizes against the eager model (fast paths on).
        tolerances: ``(atol, rtol)`` for all backends or ``{"onnx": (atol, rtol), ...}``.
        isolate: convert and verify in a spawned child process (a crash gives status ``crashed``).
        cache: reuse artifacts of an identical earlier export (content hash), status + ``cached``.
        strict: raise after the export when a backend is not ok (``ParityError`` for a mismatch).
        options: per-backend options, e.g. ``{"ort": {"optimization_level": "basic"}}``; the
            ``"onnx"`` entry also shapes the shared ONNX used by every ONNX consumer.
        spec: the model's ModelSpec (read from the model or checkpoint when None).
        metadata: free JSON stored in every sidecar and embedded in the artifacts.
        provenance: where the call came from (a notebook's magics pass theirs); detected in a kernel.
        progress: ``callback(event)`` with ``{"backend", "stage", "status", "index", "total"}``.
        should_stop: polled between backends; when it returns True the rest are ``cancelled``.
        stem: artifact file name stem (``model`` -> ``model.onnx``, ``model.pt2``...).
        safe: export inside ``export_safe(model)``. With False a fast path left on makes the export
            fail with FastPathExportError naming it.
        workers: child processes converting side by side when isolated (default: up to 4, at most
            the CPU count). Backends consuming ONNX share one child and the one ONNX file.

    Returns:
        ExportReport: one BackendResult per backend (status, artifact, parity, timings).

    Raises:
        UnknownNameError: an unknown backend (the closest name is suggested).
        OutputDirError: ``out_dir`` cannot be written (raised before any work).
        InputMismatchError: example inputs of the wrong shape or dtype (expected vs got).
        FastPathExportError: ``safe=False`` and a fast path made capture or conversion fail.
        ParityError / BackendError / MissingDependencyError: only with ``strict=True``.
    """
    started = time.perf_counter()
    from enn_nb.export.registry import get_backend, resolve_names

    names = resolve_names(backends)
    stem = _check_stem(stem)
    batch_range = _check_batch_range(batch_range)
    options = _check_options(options, names)
    out = prepare_out_dir(out_dir)
    emit = _Emitter(progress, total=len(names))

    model, source, loaded_spec = _load_source(model_or_checkpoint)
    spec = _resolve_spec(model, spec if spec is not None else loaded_spec)
    inputs = _example_inputs(model, spec, example_inputs, dynamic_batch)
    onnx_options = {**_default_onnx_options(), **dict(options.get("onnx", {}))}
    if provenance is None:
        provenance = sc.provenance_from_kernel()
    metadata = dict(metadata or {})

    from enn_nb.export.parity import resolve_tolerance

    plans: list[_Plan] = []
    for i, name in enumerate(names):
        backend = get_backend(name)
        opts = {**backend.default_options, **dict(options.get(name, {}))}
        # fp32 defaults here; raised for low-precision outputs once the reference outputs are known
        plans.append(_Plan(i, name, backend, opts, resolve_tolerance(name, backend.default_tolerance, tolerances)))

    # availability, then the cache: neither needs a capture
    digest = None
    for plan in plans:
        reason = plan.backend.unavailable_reason()
        if reason:
            plan.result = _unavailable(plan, reason, out, stem, spec, source, provenance, metadata, batch_range)
            emit(plan.name, "done", "unavailable", plan.index)
    if cache:
        from enn_nb.export.cache import module_digest, tensors_digest

        digest = {"module": module_digest(model), "inputs": tensors_digest(inputs)}
        for plan in plans:
            if plan.result is not None:
                continue
            plan.key = _cache_key(plan, digest, spec, source, dynamic_batch, batch_range, verify, safe, stem, metadata,
                                  onnx_options, tolerances)
            hit = _cache_hit(plan, out, stem)
            if hit is not None:
                plan.result = hit
                emit(plan.name, "done", hit.status, plan.index, cached=True)

    todo = [p for p in plans if p.result is None]
    report = ExportReport(results=[], out_dir=out, source=source)
    vectors_path = out / f"{stem}{VECTORS_SUFFIX}"
    if todo:
        _run(todo, model, inputs, spec, source, out, stem, dynamic_batch, batch_range, verify, isolate, safe, cache,
             onnx_options, provenance, metadata, emit, should_stop, report, vectors_path, tolerances, workers)
    elif verify and vectors_path.exists():
        report.vectors = vectors_path
    report.results = [p.result for p in plans if p.result is not None]
    report.total_s = time.perf_counter() - started
    for result in report.results:  # logged from the calling thread (lanes run in their own)
        log.info("%s", result.summary())
    log.info("export finished in %.2fs -> %s", report.total_s, out)
    _raise_if_needed(report, strict)
    return report


# -- the work ------------------------------------------------------------------------------------------------
def _run(
    todo: list[_Plan],
    model: Any,
    inputs: tuple[torch.Tensor, ...],
    spec: ModelSpec | None,
    source: dict[str, Any],
    out: Path,
    stem: str,
    dynamic_batch: bool,
    batch_range: tuple[int, int, int],
    verify: bool,
    isolate: bool,
    safe: bool,
    cache: bool,
    onnx_options: dict[str, Any],
    provenance: Mapping[str, Any] | None,
    metadata: dict[str, Any],
    emit: _Emitter,
    should_stop: Callable[[], bool] | None,
    report: ExportReport,
    vectors_path: Path,
    tolerances: Any,
    workers: int | None,
) -> None:
    import torch

    from enn_nb.export import parity
    from enn_nb.export.capture import Shared, capture_program
    from enn_nb.export.isolate import Worker
    from enn_nb.export.safe import export_safe
    from enn_nb.export.wrapper import export_module
    from enn_nb.fastpaths import declared_fast_paths

    input_names = _input_names(inputs)
    output_names = _output_names(model, inputs)
    workdir = Path(tempfile.mkdtemp(prefix=".enn-export-", dir=out))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        # Children start now: their interpreter and torch import overlap with the capture below.
        isolated = isolate and os.name == "posix"
        lanes = _lanes(todo, workers if isolated else 1)
        pool: list[Worker] = []
        if isolated:
            for _ in lanes:
                worker = Worker(None, workdir)
                worker.start()
                stack.callback(worker.close)
                pool.append(worker)
        threading.Thread(target=sc.warm_up, daemon=True).start()  # jsonschema takes seconds to import

        # Parity reference: the eager model as the user has it (fast paths on), in eval mode.
        cases: list[Any] = []
        if verify:
            call = model.forward_export if callable(getattr(model, "forward_export", None)) else model
            make = _case_inputs(spec, inputs)
            with parity.eval_only(model), torch.no_grad():
                cases = parity.make_cases(call, inputs, make=make, dynamic=dynamic_batch)
            parity.save_vectors(vectors_path, cases, input_names, output_names)
            report.vectors = vectors_path
            dtypes = sorted({str(a.dtype) for case in cases for a in case.expected})
            for plan in todo:
                plan.tolerance = parity.resolve_tolerance(plan.name, plan.backend.default_tolerance, tolerances, dtypes)
        vectors_info = {"file": vectors_path.name, "sha256": sc.sha256_file(vectors_path)} if verify else None

        if safe:
            state = stack.enter_context(export_safe(model))
            target, deviations = state.model, state.to_list()
            fast_paths: list[Any] = []
        else:
            target, deviations = model, []
            fast_paths = declared_fast_paths(model)
        module = export_module(target)
        report.deviations = deviations
        essentials = _essentials(spec, source, input_names, output_names, inputs, deviations, metadata)
        common = dict(
            out=out, stem=stem, spec=spec, source=source, deviations=deviations, provenance=provenance,
            metadata=metadata, batch_range=batch_range, vectors=vectors_info, essentials=essentials,
        )

        # the one capture
        if _stopped(should_stop):
            _cancel(todo, emit)
            return
        emit(None, "capture", "running", 0)
        t_capture = time.perf_counter()
        try:
            ep, batch_dynamic, capture_notes = capture_program(
                module, inputs, dynamic_batch=dynamic_batch, fast_paths=fast_paths
            )
        except Exception as exc:
            from enn_nb.export.isolate import error_dict

            capture_error = error_dict(exc)
            capture_error["fast_path"] = exc.fast_path if isinstance(exc, FastPathExportError) else None
            if isinstance(exc, FastPathExportError):
                capture_error["type"] = "FastPathExportError"
            emit(None, "capture", "failed", 0)
            for plan in todo:
                plan.result = _finish_failed(plan, "capture", capture_error, common, timings={})
                emit(plan.name, "done", "failed", plan.index)
            return
        report.capture_s = time.perf_counter() - t_capture
        log.info("capture: torch.export in %.2fs (batch %s), shared by %d backend(s)", report.capture_s,
                 "dynamic" if batch_dynamic else "static", len(todo))
        emit(None, "capture", "ok", 0)
        shared = Shared(
            workdir=workdir,
            stem=stem,
            input_names=input_names,
            output_names=output_names,
            essentials=essentials,
            onnx_options=onnx_options,
            ep=ep,
        )
        shared.timings["capture"] = report.capture_s

        from enn_nb.export.backends.base import ExportJob
        from enn_nb.export.isolate import Setup

        job = ExportJob(
            module=module,
            example_inputs=inputs,
            dynamic_batch=batch_dynamic,
            batch_range=batch_range,
            input_names=input_names,
            output_names=output_names,
            spec=spec,
            essentials=essentials,
            workdir=workdir,
            get_exported_program=shared.exported_program,
            get_onnx_path=shared.onnx_path,
        )
        if pool:
            setup = Setup(
                workdir=str(workdir),
                stem=stem,
                ep_path=str(shared.save_program()),
                # backends may re-export `job.module` (e.g. with other batch bounds): ship the real one
                module_path=_save_module(module, workdir),
                example_inputs=[t.detach().cpu().numpy() for t in inputs],
                dynamic_batch=batch_dynamic,
                batch_range=batch_range,
                input_names=input_names,
                output_names=output_names,
                spec=spec.to_dict() if spec is not None else None,
                essentials=essentials,
                onnx_options=onnx_options,
                sdpa="math" if safe else None,
                sys_path=[p for p in sys.path if p],
            )
            for worker in pool:
                worker.configure(setup)

        ctx = _LaneContext(
            job=job, shared=shared, cases=cases, verify=verify, isolate=isolate, cache=cache, stem=stem, out=out,
            notes=list(capture_notes), fast_paths=fast_paths, common=common, report=report,
            batch_dynamic=batch_dynamic, emit=emit, should_stop=should_stop, lock=threading.Lock(),
        )
        if len(lanes) == 1:
            _run_lane(lanes[0], pool[0] if pool else None, ctx)
        else:
            threads = [
                threading.Thread(target=_run_lane, args=(lane, worker, ctx), name=f"enn-export-lane-{i}")
                for i, (lane, worker) in enumerate(zip(lanes, pool))
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        for plan in todo:  # a lane that died of an unexpected error leaves its plans unfinished
            if plan.result is None:
                plan.result = _finish_failed(
                    plan, "convert", {"type": "ExportError", "message": ctx.errors.get(plan.name, "not run")}, common,
                    timings={},
                )


@dataclasses.dataclass
class _LaneContext:
    """What every lane of one export shares."""

    job: Any
    shared: Any
    cases: list[Any]
    verify: bool
    isolate: bool
    cache: bool
    stem: str
    out: Path
    notes: list[str]
    fast_paths: list[Any]
    common: dict[str, Any]
    report: ExportReport
    batch_dynamic: bool
    emit: _Emitter
    should_stop: Callable[[], bool] | None
    lock: threading.Lock
    errors: dict[str, str] = dataclasses.field(default_factory=dict)


def _lanes(todo: list[_Plan], workers: int | None) -> list[list[_Plan]]:
    """Split the backends over child processes: ONNX consumers share one lane (and the one ONNX file),
    the other groups are balanced by ``Backend.cost`` (longest first onto the least loaded lane)."""
    groups: list[list[_Plan]] = []
    onnx_group = [p for p in todo if p.backend.consumes == "onnx"]
    if onnx_group:
        groups.append(onnx_group)
    groups += [[p] for p in todo if p.backend.consumes != "onnx"]
    limit = workers if workers is not None else min(4, os.cpu_count() or 1)
    count = max(1, min(int(limit), len(groups)))
    lanes: list[list[_Plan]] = [[] for _ in range(count)]
    loads = [0.0] * count
    for group in sorted(groups, key=lambda g: -sum(float(getattr(p.backend, "cost", 1.0)) for p in g)):
        i = loads.index(min(loads))
        lanes[i] += group
        loads[i] += sum(float(getattr(p.backend, "cost", 1.0)) for p in group)
    return [sorted(lane, key=lambda p: p.index) for lane in lanes if lane]


def _run_lane(lane: list[_Plan], worker: Any, ctx: _LaneContext) -> None:
    from enn_nb.export.isolate import Task, importable_reference, run_unit

    try:
        for pos, plan in enumerate(lane):
            if _stopped(ctx.should_stop):
                _cancel(lane[pos:], ctx.emit)
                return
            t0 = time.perf_counter()
            stage_dir = Path(ctx.job.workdir) / plan.name
            stage_dir.mkdir()
            task = Task(
                name=plan.name,
                backend_ref=importable_reference(type(plan.backend)) or "",
                out_path=str(stage_dir / plan.backend.artifact_name(ctx.stem)),
                options=plan.options,
                verify=ctx.verify,
                tolerance=plan.tolerance,
                cases=ctx.cases,
            )
            last_stage = {"stage": "convert"}

            def on_event(event: dict[str, Any], plan: _Plan = plan, last_stage: dict[str, str] = last_stage) -> None:
                last_stage["stage"] = event.get("stage", last_stage["stage"])
                ctx.emit(plan.name, event.get("stage", "convert"), event.get("status", "running"), plan.index)

            notes = list(ctx.notes)
            if worker is not None and task.backend_ref:
                unit = worker.run(task, on_event)
            else:
                if ctx.isolate and worker is not None:
                    notes.append(
                        f"ran in this process: the backend class `{type(plan.backend).__qualname__}` is defined in "
                        "`__main__` or a function, so a child process cannot import it"
                    )
                elif ctx.isolate:
                    notes.append("ran in this process: isolation needs a POSIX system")
                with ctx.lock:  # in-process conversions share this process's torch state: one at a time
                    unit = run_unit(plan.backend, ctx.job, task, on_event)
            onnx_s = (unit.get("shared_timings") or ctx.shared.timings).get("onnx")
            if onnx_s and not ctx.report.onnx_s:
                ctx.report.onnx_s = onnx_s
            plan.result = _finish(plan, unit, last_stage["stage"], Path(task.out_path), notes, ctx.fast_paths,
                                  ctx.common, ctx.report, ctx.batch_dynamic, t0)
            if ctx.cache and plan.result.status == "ok" and plan.key:
                from enn_nb.export.cache import store

                store(plan.key, ctx.out, _stored_names(plan.result, ctx.out, ctx.stem, ctx.verify))
            ctx.emit(plan.name, "done", plan.result.status, plan.index)
    except Exception as exc:  # an engine bug must not hang the other lanes; the plans left get failed results
        for plan in lane:
            ctx.errors[plan.name] = f"the export engine failed: {type(exc).__name__}: {exc}"
        if len(lane) and threading.current_thread() is threading.main_thread():
            raise


def _finish(
    plan: _Plan,
    unit: dict[str, Any],
    last_stage: str,
    temp_artifact: Path,
    notes: list[str],
    fast_paths: list[Any],
    common: dict[str, Any],
    report: ExportReport,
    batch_dynamic: bool,
    t0: float,
) -> BackendResult:
    """Turn a unit's outcome into files in ``out_dir``, a sidecar and a BackendResult."""
    from enn_nb.export.capture import fast_path_error

    timings = {"capture": report.capture_s, **({"onnx": report.onnx_s} if plan.backend.consumes == "onnx" else {}),
               **unit.get("timings", {})}
    if unit.get("crashed"):
        what = unit.get("signal") or f"exit code {unit.get('exit_code')}"
        error = {
            "type": "ChildProcessCrashed",
            "message": (
                f"The isolated child process died with {what} during the `{last_stage}` stage of `{plan.name}`; "
                f"this process is unaffected. The child's log is in the sidecar (`error.log_tail`)."
            ),
            "exit_code": unit.get("exit_code"),
            "signal": unit.get("signal"),
            "log_tail": unit.get("log_tail"),
        }
        return _finish_failed(plan, last_stage, error, common, timings=timings, status="crashed", t0=t0, notes=notes)
    if unit.get("error"):
        error = dict(unit["error"])
        if error.get("missing"):
            return _finish_failed(plan, unit.get("stage") or "convert", error, common, timings=timings,
                                  status="unavailable", t0=t0, notes=notes)
        mapped = fast_path_error(error.get("chain") or error["message"], fast_paths, stage=unit.get("stage") or "convert")
        if mapped is not None:
            error = {"type": "FastPathExportError", "message": str(mapped), "fast_path": mapped.fast_path,
                     "cause": error["message"][:2000]}
        return _finish_failed(plan, unit.get("stage") or "convert", error, common, timings=timings, t0=t0, notes=notes)

    conv = unit["conversion"]
    out: Path = common["out"]
    artifact_src = Path(conv["artifact"])
    extra_src = [Path(p) for p in conv["extra_files"]]
    status = "ok"
    parity_block: dict[str, Any] = {"status": "not_run", "reason": "verify=False"}
    if conv.get("deferred"):
        status = "deferred"
        parity_block = {"status": "not_run", "reason": f"deferred: {conv['deferred']}"}
    elif unit.get("parity") is not None:
        from enn_nb.export.parity import finite

        parity_block = finite(unit["parity"])
        if parity_block["status"] == "failed":
            status = "mismatch"
    if parity_block.get("status") in ("passed", "failed", "skipped"):
        parity_block["tolerance"] = parity_block.get("tolerance") or {"atol": plan.tolerance[0], "rtol": plan.tolerance[1]}
        parity_block["vectors"] = common["vectors"]
        parity_block["reference"] = "eager model with its fast paths on, eval mode"
    details = dict(conv.get("details") or {})
    if unit.get("metadata") is not None:
        embedded = unit["metadata"]
        details["metadata_roundtrip"] = all(embedded.get(k) == v for k, v in common["essentials"].items())

    # move into place: extra files first, the artifact last, each atomically
    started = time.perf_counter()
    from enn_nb.export.cache import replace_path

    placed_extra = []
    for path in extra_src:
        rel = path.relative_to(artifact_src.parent)
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        replace_path(path, dst)
        placed_extra.append(dst)
    artifact = out / artifact_src.name
    if artifact_src.exists():
        replace_path(artifact_src, artifact)
    files = sc.file_entries(artifact if artifact.exists() else None, placed_extra, out)
    timings["move"] = time.perf_counter() - started
    data = _sidecar_common(plan, common)
    data.update(
        status=status,
        artifact=artifact.name if artifact.exists() else None,
        directory_artifact=artifact.is_dir(),
        files=files,
        inputs=conv["inputs"],
        outputs=conv["outputs"],
        dynamic_batch=conv["dynamic_batch"],
        dynamic_dims={"batch": {"min": 1, "max": None}} if conv["dynamic_batch"] else {},
        format=conv["format"],
        parity=parity_block,
        embedded=common["essentials"] if conv["embedded_metadata"] else None,
        embedded_metadata=conv["embedded_metadata"],
        notes=[*notes, *conv["notes"]],
        details=details,
        deferred=conv.get("deferred"),
        cache_key=plan.key if status == "ok" else None,
    )
    return _write_result(plan, data, timings, t0)


def _finish_failed(
    plan: _Plan,
    stage: str,
    error: dict[str, Any],
    common: dict[str, Any],
    *,
    timings: dict[str, float],
    status: str = "failed",
    t0: float | None = None,
    notes: list[str] | None = None,
) -> BackendResult:
    data = _sidecar_common(plan, common)
    err = {k: error.get(k) for k in ("type", "message", "exit_code", "signal", "log_tail", "fast_path") if k in error}
    if error.get("missing"):
        err["message"] = _missing_line(plan, error)
    data.update(status=status, stage=stage, error=err, notes=list(notes or []))
    if error.get("traceback"):
        data["details"] = {"traceback": error["traceback"]}
    return _write_result(plan, data, timings, t0 if t0 is not None else time.perf_counter())


def _missing_line(plan: _Plan, error: dict[str, Any]) -> str:
    missing = error.get("missing") or {}
    extra = missing.get("extra") or plan.backend.extra
    package = missing.get("package") or "a package"
    line = f"%pip install 'enn-nb[{extra}]'" if extra else f"%pip install {package}"
    return f"The `{plan.name}` backend needs `{package}` (enn-nb extra `{extra}`), which is not installed: {line}"


def _write_result(plan: _Plan, data: dict[str, Any], timings: dict[str, float], t0: float) -> BackendResult:
    out: Path = data.pop("_out")
    started = time.perf_counter()
    side = sc.sidecar_path(out / plan.backend.artifact_name(data.pop("_stem")))
    data["timings"] = {k: float(v) for k, v in timings.items()}
    sidecar = sc.build(**data)
    sc.write(side, sidecar)
    timings["sidecar"] = time.perf_counter() - started
    timings["total"] = time.perf_counter() - t0
    # the sidecar on disk gets the final timings too
    sidecar["timings"] = {k: float(v) for k, v in timings.items()}
    sc.write(side, sidecar)
    return _result_from_sidecar(sidecar, out, side, cached=False)


def _result_from_sidecar(data: dict[str, Any], out: Path, side: Path, *, cached: bool) -> BackendResult:
    error = data.get("error") or {}
    return BackendResult(
        backend=data["backend"],
        status=data["status"],
        cached=cached,
        artifact=(out / data["artifact"]) if data.get("artifact") else None,
        sidecar=side,
        files=list(data.get("files") or []),
        parity=dict(data.get("parity") or {}),
        timings=dict(data.get("timings") or {}),
        stage=data.get("stage"),
        error=error.get("message"),
        error_type=error.get("type"),
        exit_code=error.get("exit_code"),
        signal=error.get("signal"),
        deferred=data.get("deferred"),
        notes=list(data.get("notes") or []),
        details=dict(data.get("details") or {}),
        format=dict(data.get("format") or {}),
        dynamic_batch=data.get("dynamic_batch"),
        inputs=list(data.get("inputs") or []),
        outputs=list(data.get("outputs") or []),
    )


def _sidecar_common(plan: _Plan, common: dict[str, Any]) -> dict[str, Any]:
    spec = common["spec"]
    return {
        "_out": common["out"],
        "_stem": common["stem"],
        "backend": plan.name,
        "options": _jsonable(plan.options),
        "spec": spec.to_dict() if spec is not None else None,
        "source": common["source"],
        "deviations": common["deviations"],
        "batch_range": list(common["batch_range"]),
        "versions": sc.versions(plan.backend.versions()),
        "provenance": dict(common["provenance"]) if common["provenance"] else None,
        "metadata": common["metadata"] or None,
        "parity": {"status": "not_run", "reason": "the export did not reach verification"},
    }


def _unavailable(plan: _Plan, reason: str, out: Path, stem: str, spec: Any, source: dict[str, Any],
                 provenance: Any, metadata: dict[str, Any], batch_range: tuple[int, int, int]) -> BackendResult:
    common = dict(out=out, stem=stem, spec=spec, source=source, deviations=[], provenance=provenance,
                  metadata=metadata, batch_range=batch_range)
    data = _sidecar_common(plan, common)
    missing = plan.backend.missing_packages()
    if missing:
        from enn_nb._optional import PACKAGES

        dist, extra = PACKAGES.get(missing[0], (missing[0], plan.backend.extra))
        line = f"%pip install 'enn-nb[{extra}]'" if extra else f"%pip install {dist}"
        message = f"`{missing[0]}` is not installed (the `{plan.name}` backend needs the enn-nb extra `{extra or dist}`): {line}"
    else:
        message = f"The `{plan.name}` backend cannot run here: {reason}"
    data.update(status="unavailable", stage="availability", error={"type": "MissingDependencyError", "message": message})
    return _write_result(plan, data, {}, time.perf_counter())


def _cancel(plans: list[_Plan], emit: _Emitter) -> None:
    for plan in plans:
        plan.result = BackendResult(plan.name, "cancelled", error="the export was stopped before this backend")
        emit(plan.name, "done", "cancelled", plan.index)


def _stopped(should_stop: Callable[[], bool] | None) -> bool:
    return bool(should_stop and should_stop())


# -- cache ----------------------------------------------------------------------------------------------------
def _cache_key(plan: _Plan, digest: dict[str, str], spec: Any, source: dict[str, Any], dynamic_batch: bool,
               batch_range: tuple[int, int, int], verify: bool, safe: bool, stem: str, metadata: dict[str, Any],
               onnx_options: dict[str, Any], tolerances: Any) -> str:
    from enn_nb.export.cache import make_key
    from enn_nb.export.registry import class_reference

    return make_key(
        enn_nb=__version__,
        digest=digest,
        spec=spec.to_dict() if spec is not None else None,
        source_hash=source.get("content_hash"),
        backend=plan.name,
        backend_class=class_reference(type(plan.backend)),
        options=_jsonable(plan.options),
        onnx_options=_jsonable(onnx_options) if plan.backend.consumes == "onnx" else None,
        versions=sc.versions(plan.backend.versions()),
        tolerance=list(plan.backend.default_tolerance),
        tolerances=_jsonable(tolerances),
        dynamic_batch=dynamic_batch,
        batch_range=list(batch_range),
        verify=verify,
        safe=safe,
        stem=stem,
        metadata=metadata,
    )


def _cache_hit(plan: _Plan, out: Path, stem: str) -> BackendResult | None:
    from enn_nb.export.cache import fetch

    started = time.perf_counter()
    side = sc.sidecar_path(out / plan.backend.artifact_name(stem))
    data = _valid_cached(side, plan.key, out)
    if data is None:
        names = _stored_listing(plan.key)
        if names and fetch(plan.key, names, out):  # type: ignore[arg-type]
            data = _valid_cached(side, plan.key, out)
    if data is None:
        return None
    result = _result_from_sidecar(data, out, side, cached=True)
    result.timings = {**result.timings, "cache_lookup": time.perf_counter() - started}
    result.timings["total"] = result.timings["cache_lookup"]
    return result


def _valid_cached(side: Path, key: str | None, out: Path) -> dict[str, Any] | None:
    if not key or not side.is_file():
        return None
    try:
        data = sc.read(side, check_schema=False)  # validated when written; the key and hashes are checked here
    except ExportError:
        return None
    if data.get("cache_key") != key or data.get("status") != "ok" or sc.check_files(data, out):
        return None
    vectors = (data.get("parity") or {}).get("vectors")
    if vectors and vectors.get("file"):
        path = out / vectors["file"]
        if not path.is_file() or sc.sha256_file(path) != vectors.get("sha256"):
            return None
    return data


def _stored_names(result: BackendResult, out: Path, stem: str, verify: bool) -> list[str]:
    names = []
    if result.artifact is not None:
        names.append(Path(result.artifact).name)
    names += [f["path"] for f in result.files if f["role"] != "artifact"]
    if result.sidecar is not None:
        names.append(Path(result.sidecar).name)
    if verify and (out / f"{stem}{VECTORS_SUFFIX}").exists():
        names.append(f"{stem}{VECTORS_SUFFIX}")
    return names


def _stored_listing(key: str | None) -> list[str] | None:
    from enn_nb.export.cache import store_dir

    if not key:
        return None
    folder = store_dir(key)
    if not folder.is_dir():
        return None
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


# -- checks and inputs ------------------------------------------------------------------------------------------
def prepare_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Create ``out_dir`` if needed and prove it writable, before any work.

    Raises:
        OutputDirError: it cannot be created or written (names the path, the reason and the fix).
    """
    path = Path(out_dir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".enn-write-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        blocker = next((p for p in [path, *path.parents] if p.exists()), None)
        hint = (
            f" `{blocker}` is a file, not a folder."
            if blocker is not None and blocker.is_file()
            else ""
        )
        raise OutputDirError(
            f"`out_dir` {str(path)!r} cannot be written: {exc.strerror or exc}.{hint} "
            "Choose a folder you can write to (it is created if missing)."
        ) from None
    return path.resolve()


def _check_stem(stem: str) -> str:
    if not isinstance(stem, str) or not stem or any(c in stem for c in "/\\\0") or stem.startswith("."):
        raise ValueError(f"`stem` is {stem!r}; give a plain file name stem such as 'model' (no folders, no leading dot).")
    return stem


def _check_batch_range(batch_range: Sequence[int]) -> tuple[int, int, int]:
    try:
        lo, opt, hi = (int(b) for b in batch_range)
    except (TypeError, ValueError):
        raise ValueError(f"`batch_range` is {batch_range!r}; give (min, opt, max) batch sizes, e.g. (1, 8, 64).") from None
    if not 1 <= lo <= opt <= hi:
        raise ValueError(f"`batch_range` is {tuple(batch_range)!r}; it needs 1 <= min <= opt <= max, e.g. (1, 8, 64).")
    return lo, opt, hi


def _check_options(options: Mapping[str, Any] | None, names: list[str]) -> dict[str, dict[str, Any]]:
    options = dict(options or {})
    allowed = set(names) | {"onnx"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"`options` has entries for {unknown}, which are not being exported; options are per backend, "
            f"e.g. options={{'ort': {{'optimization_level': 'basic'}}}}; backends here: {', '.join(names)}."
        )
    for key, value in options.items():
        if not isinstance(value, Mapping):
            raise ValueError(f"`options[{key!r}]` is {value!r}; it must be a dict of that backend's options.")
    return {k: dict(v) for k, v in options.items()}


def _default_onnx_options() -> dict[str, Any]:
    return {"opset": None, "optimize": True}


def _load_source(obj: Any) -> tuple[Any, dict[str, Any], Any]:
    """``(model, source, spec from the checkpoint or None)``."""
    import torch

    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if not path.exists():
            raise FileNotFoundError(f"Checkpoint `{path}` does not exist; pass a model or the path of a checkpoint.")
        from enn_nb.checkpoint import load

        loaded = load(path)
        manifest = getattr(loaded, "manifest", None)
        source = {
            "kind": "checkpoint",
            "path": str(path.resolve()),
            "content_hash": getattr(manifest, "content_hash", None),
            "model_class": f"{type(loaded.model).__module__}.{type(loaded.model).__qualname__}",
        }
        return loaded.model, source, getattr(manifest, "spec", None)
    if isinstance(obj, torch.nn.Module):
        return obj, {"kind": "model", "model_class": f"{type(obj).__module__}.{type(obj).__qualname__}"}, None
    raise TypeError(
        f"`model_or_checkpoint` is a {type(obj).__name__}; pass a torch.nn.Module or the path of a checkpoint."
    )


def _resolve_spec(model: Any, spec: Any) -> Any:
    from enn_nb.spec import ModelSpec

    if spec is not None:
        if isinstance(spec, Mapping):
            spec = ModelSpec.from_dict(spec)
        return spec
    inner = getattr(model, "_orig_mod", model)
    if any(hasattr(inner, a) for a in ("enn_builder", "in_dim", "config")):
        return ModelSpec.from_model(inner)
    return None


def _example_inputs(model: Any, spec: Any, example_inputs: Any, dynamic_batch: bool) -> tuple[torch.Tensor, ...]:
    import numpy as np
    import torch

    from enn_nb.export.parity import default_example_inputs

    if example_inputs is None:
        in_dim = spec.in_dim if spec is not None else getattr(model, "in_dim", None)
        dtype = spec.feature_dtype if spec is not None else getattr(model, "feature_dtype", None)
        if in_dim is None:
            raise SpecError(
                f"`example_inputs` is needed: `{type(model).__name__}` declares no `in_dim` and no spec was given. "
                "Pass `example_inputs=(torch.randn(2, N),)` or `spec=ModelSpec(in_dim=N)`."
            )
        return default_example_inputs(spec, in_dim, dtype if isinstance(dtype, str) else None)
    items = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    tensors = []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            item = torch.from_numpy(item)
        if not isinstance(item, torch.Tensor):
            raise SpecError(f"`example_inputs[{i}]` is a {type(item).__name__}; pass torch tensors (or numpy arrays).")
        tensors.append(item.detach())
    if spec is not None and spec.in_dim is not None and len(tensors) == 1:
        spec.check_input(tensors[0], name="example_inputs")
    if dynamic_batch and tensors and tensors[0].dim() >= 1 and tensors[0].shape[0] == 1:
        # torch.export specialises a dimension of size 1; capture at batch 2 (the same row twice)
        tensors = [torch.cat([t, t]) if t.dim() >= 1 and t.shape[0] == 1 else t for t in tensors]
    return tuple(tensors)


def _case_inputs(spec: Any, inputs: tuple[torch.Tensor, ...]) -> Callable[[int, int], tuple[torch.Tensor, ...]]:
    from enn_nb.export.parity import default_example_inputs, resample_inputs

    if spec is not None and spec.in_dim is not None and len(inputs) == 1 and inputs[0].dim() == 2:
        dtype = str(inputs[0].dtype).removeprefix("torch.")
        return lambda batch, seed: default_example_inputs(spec, spec.in_dim, dtype, batch=batch, seed=seed)
    return lambda batch, seed: resample_inputs(inputs, batch, seed)


def _input_names(inputs: tuple[Any, ...]) -> list[str]:
    return ["features"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))]


def _output_names(model: Any, inputs: tuple[Any, ...]) -> list[str]:
    names = getattr(model, "export_output_names", None)
    if isinstance(names, (list, tuple)) and names:
        return [str(n) for n in names]
    return ["prediction"]


def _essentials(spec: Any, source: dict[str, Any], input_names: list[str], output_names: list[str],
                inputs: tuple[Any, ...], deviations: list[dict[str, Any]], metadata: dict[str, Any]) -> dict[str, str]:
    """The flat ``str -> str`` facts embedded where a format has a metadata slot."""
    return {
        "enn_nb.schema": sc.SCHEMA,
        "enn_nb.version": __version__,
        "enn_nb.spec": json.dumps(spec.to_dict() if spec is not None else None, sort_keys=True),
        "enn_nb.source_hash": str(source.get("content_hash") or ""),
        "enn_nb.inputs": json.dumps(
            [{"name": n, "shape": ["batch", *list(t.shape[1:])], "dtype": str(t.dtype).removeprefix("torch.")}
             for n, t in zip(input_names, inputs)]
        ),
        "enn_nb.outputs": json.dumps(output_names),
        "enn_nb.deviations": json.dumps([d["name"] for d in deviations]),
        "enn_nb.metadata": json.dumps(_jsonable(metadata), sort_keys=True),
    }


def _save_module(module: Any, workdir: Path) -> str | None:
    import torch

    path = workdir / "module.pt"
    try:
        torch.save(module, str(path))
    except Exception:  # an unpicklable model: the child uses the captured program's module instead
        path.unlink(missing_ok=True)
        return None
    return str(path)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else repr(v)))


# -- progress and strictness --------------------------------------------------------------------------------------
class _Emitter:
    def __init__(self, callback: Progress | None, total: int) -> None:
        self.callback = callback
        self.total = total
        self._warned = False
        self._lock = threading.Lock()  # lanes report from several threads; callbacks see one event at a time

    def __call__(self, backend: str | None, stage: str, status: str, index: int, **extra: Any) -> None:
        if self.callback is None:
            return
        event = {"backend": backend, "stage": stage, "status": status, "index": index, "total": self.total, **extra}
        try:
            with self._lock:
                self.callback(event)
        except Exception as exc:  # a broken progress bar must not fail an export
            if not self._warned:
                self._warned = True
                warnings.warn(f"the `progress` callback raised {type(exc).__name__}: {exc}; further errors are ignored",
                              RuntimeWarning, stacklevel=2)


def _raise_if_needed(report: ExportReport, strict: bool) -> None:
    fast = next((r for r in report.results if r.error_type == "FastPathExportError"), None)
    if fast is not None:
        exc = FastPathExportError(fast.error or "", fast_path=_fast_path_name(fast))
        exc.report = report  # type: ignore[attr-defined]
        raise exc
    if not strict:
        return
    for r in report.results:
        if r.status == "mismatch":
            worst = max(r.parity.get("cases", []), key=lambda c: c["max_abs_err"], default={})
            tol = r.parity.get("tolerance", {})
            exc: Exception = ParityError(
                f"`{r.backend}` artifact differs from the eager model: max abs error {r.max_abs_err:.3e}, max rel error "
                f"{r.max_rel_err:.3e} (batch {worst.get('batch_size')}), tolerance atol={tol.get('atol')} "
                f"rtol={tol.get('rtol')}. Pass `tolerances={{'{r.backend}': (atol, rtol)}}` if this is acceptable.",
                backend=r.backend,
                batch_size=worst.get("batch_size"),
                max_abs_err=float(r.max_abs_err or float("nan")),
                max_rel_err=float(r.max_rel_err or float("nan")),
                atol=float(tol.get("atol", float("nan"))),
                rtol=float(tol.get("rtol", float("nan"))),
            )
        elif r.status == "unavailable":
            extra = getattr(_backend_safe(r.backend), "extra", "")
            exc = MissingDependencyError(r.error or f"`{r.backend}` is unavailable", extra=extra)
        elif r.status in ("failed", "crashed"):
            exc = BackendError(f"`{r.backend}` {r.status} at stage `{r.stage}`: {r.error}", backend=r.backend, stage=r.stage or "")
        else:
            continue
        exc.report = report  # type: ignore[attr-defined]
        raise exc


def _fast_path_name(result: BackendResult) -> str:
    if result.sidecar and Path(result.sidecar).exists():
        data = json.loads(Path(result.sidecar).read_text())
        return str((data.get("error") or {}).get("fast_path") or "")
    return ""


def _backend_safe(name: str) -> Any:
    from enn_nb.export.registry import get_backend

    try:
        return get_backend(name)
    except Exception:
        return None
