"""The export engine: checks, one capture, one lowering per backend (maybe isolated), parity, sidecars, cache."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb import _reentry
from enn_nb._terminal import announce
from enn_nb.engine import parity, sidecar as sc
from enn_nb.engine.backends.base import ExportJob
from enn_nb.engine.cache import export_key, lookup, program_digest, tensors_digest
from enn_nb.engine.finish import RunInfo, finish_failed, finish_unavailable
from enn_nb.engine.hits import Hits
from enn_nb.engine.inputs import (
    case_maker,
    ModelIO,
    essential_metadata,
    example_tensors,
    load_source,
    resolve_io,
    resolve_spec,
)
from enn_nb.engine.lanes import LaneContext, run_lane, split_lanes
from enn_nb.engine.outcome import ErrorInfo
from enn_nb.engine.outlog import OutputLog, capture
from enn_nb.engine.parity import VECTORS_SUFFIX, mismatch_message
from enn_nb.engine.plan import Emitter, Plan, Progress, cancel, stopped
from enn_nb.engine.quantize.modes import label
from enn_nb.engine.quantize.run import prepare_data
from enn_nb.engine.registry import get_backend
from enn_nb.engine.report import ExportReport, static_note
from enn_nb.engine.safe import export_safe
from enn_nb.engine.settings import ExportSettings
from enn_nb.errors import (
    AccuracyBudgetError,
    BackendError,
    EnnError,
    FastPathExportError,
    MissingDependencyError,
    OutputDirError,
    ParityError,
    SpecError,
    StaticDimError,
)
from enn_nb.model.fastpaths import declared_fast_paths
from enn_nb.model.provenance import from_kernel

if TYPE_CHECKING:
    import torch

    from enn_nb.model.spec import ModelSpec

log = logging.getLogger(__name__)


def export(
    model_or_checkpoint: Any,
    backends: str | Sequence[str] | None = None,
    *,
    out_dir: str | os.PathLike[str] | None = None,
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
    quantize: Any = None,
    calibration: Any = None,
    eval_data: Any = None,
    accuracy_budget: Any = None,
    accuracy_metric: Callable[..., Any] | None = None,
    settings: ExportSettings | None = None,
    quiet: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> ExportReport:
    """Export a model (or a checkpoint) to one or more backends, with parity and a sidecar per artifact.

    Args:
        model_or_checkpoint: an ``nn.Module`` or the path of a checkpoint (``enn_nb.load`` reads it;
            its content hash goes into the sidecars).
        backends: names (list or ``"onnx,ort"``), ``"all"`` (every registered backend; one that cannot
            convert here comes back ``unavailable`` with its install line, not failing the request) or
            ``"available"`` (every backend that converts here); see ``enn_nb.backends()``.
        out_dir: folder for artifacts, sidecars and the vectors file (created if needed). A URL
            (``s3://bucket/exports``): the export is staged in a local folder under the cache, verified
            there, then every file is uploaded (``ExportReport.uploaded``).
        example_inputs: a tensor or tuple of tensors, checked against the spec's signature; default: drawn
            from the spec's signature (``ModelSpec.inputs``, else the ``[B, in_dim]`` shorthand) at batch 2.
        dynamic_batch: make the signature's symbolic dims dynamic (``batch``, ``time``...; dim 0 when the
            model has no signature); fewer or none when the model specialises them (noted).
        batch_range: ``(min, opt, max)`` batch sizes for backends that need bounds (TensorRT, CoreML).
        verify: run each artifact at >= 2 batch sizes against the eager model (fast paths on).
        tolerances: ``(atol, rtol)`` for all backends or ``{"onnx": (atol, rtol), ...}``.
        isolate: convert and verify in a child process (a crash gives status ``crashed``), forked from
            a warm server that has torch and the engine imported and serves the whole session.
        cache: reuse artifacts of an identical earlier export (content hash), status + ``cached``.
        strict: raise after the export when a backend is not ok (``ParityError`` for a mismatch), or when a
            dim the signature declares dynamic ended up static (``StaticDimError``, torch's reason named).
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
        quantize: quantized artifacts to make beside the float ones, with each runtime's own quantizer:
            ``"fp16"``, ``"int8-weights"`` (dynamic-range) or ``"int8"`` (static, calibrated), a list of
            modes, or ``{backend: mode(s)}``. Each gets its own row ``backend:mode`` and file
            (``model.int8.onnx``); a mode a backend does not support is refused before any work.
        calibration: inputs for ``int8``: a tensor, a tuple of tensors (one batch), a list of batches, a
            DataLoader or any iterable (at most 256 batches are read), a callable returning them, or a
            ``.safetensors`` file of inputs. None: drawn from the signature, and every report says so.
        eval_data: inputs the quantized artifacts are evaluated on against the float model (same forms);
            None: a held-back quarter of ``calibration``, else drawn inputs (labelled).
        accuracy_budget: a quantized artifact whose error is over it gets status ``degraded``: a number
            (per output, RMSE of the difference as a fraction of the float output's std; default 0.03)
            or ``{"rmse_rel", "max_abs", "mean_abs", "metric"}``.
        accuracy_metric: ``metric(float_outputs, quantized_outputs) -> float`` (lists of numpy arrays, one
            per output), recorded for each quantized artifact and bounded by ``accuracy_budget["metric"]``.
        settings: instead of ``backends``, ``out_dir`` and the other export arguments above: the
            :class:`ExportSettings` a surface made with ``ExportSettings.from_call`` (the magics, the
            wizard, the CLI and the report templates do).
        quiet: print nothing. Otherwise a script on a terminal gets one line on stderr (the report's summary
            and where the artifacts went); a notebook displays the returned report.
        storage_options: fsspec options for a URL ``out_dir`` or checkpoint (never written anywhere).

    Returns:
        ExportReport: one BackendResult per backend (status, artifact, parity, timings).

    Raises:
        UnknownNameError: an unknown backend (the closest name is suggested).
        OutputDirError: ``out_dir`` cannot be written (raised before any work).
        InputMismatchError: example inputs that do not fit the signature, or that the model rejects (names
            the input, the expected and the received signature).
        FastPathExportError: ``safe=False`` and a fast path made capture or conversion fail.
        QuantizeModeError: a ``quantize`` mode a backend does not support (raised before any work).
        InputMismatchError / CalibrationError: calibration or evaluation data that does not fit the signature,
            is empty or holds NaN/inf (raised before any conversion; nothing written).
        ParityError / BackendError / MissingDependencyError / AccuracyBudgetError: only with ``strict=True``.
        SideEffectError: called by importing a module (a ``--model`` factory, an export worker): nothing written.
    """
    _reentry.check("enn_nb.export")
    started = time.perf_counter()
    if settings is None:
        if backends is None or out_dir is None:
            raise SpecError("`export` needs `backends` and `out_dir` (or `settings=ExportSettings.from_call(...)`); "
                            "e.g. `enn_nb.export(model, ['onnx', 'pt2'], out_dir='exports')`.")
        settings = ExportSettings.from_call(
            backends, out_dir, dynamic_batch=dynamic_batch, batch_range=batch_range, verify=verify,
            tolerances=tolerances, isolate=isolate, cache=cache, strict=strict, options=options, metadata=metadata,
            provenance=provenance, stem=stem, safe=safe, workers=workers, storage_options=storage_options,
            quantize=quantize, calibration=calibration, eval_data=eval_data, accuracy_budget=accuracy_budget,
            accuracy_metric=accuracy_metric,
        )
    elif backends is not None or out_dir is not None:
        raise SpecError("`export` takes either `settings=` or `backends` and `out_dir`, not both.")
    elif any(v is not None for v in (quantize, calibration, eval_data, accuracy_budget, accuracy_metric)):
        raise SpecError("`export(settings=...)` takes `quantize`, `calibration`, `eval_data`, `accuracy_budget` and "
                        "`accuracy_metric` from the settings: pass them to `ExportSettings.from_call`.")
    if settings.provenance is None:
        settings = dataclasses.replace(settings, provenance=from_kernel())
    emit = Emitter(progress, total=len(settings.names) + sum(len(m) for m in settings.quantize.values()))

    with capture("load") as loading:  # a checkpoint's load runs its self-check: the model's own warnings
        model, source, loaded_spec = load_source(model_or_checkpoint, storage_options or settings.storage_options)
    spec = resolve_spec(model, spec if spec is not None else loaded_spec)
    inputs = example_tensors(model, spec, example_inputs, settings.dynamic_batch)
    io = resolve_io(model, spec, inputs)
    report = ExportReport(results=[], out_dir=settings.out, source=source)
    info = RunInfo(settings=settings, spec=spec, source=source, report=report, signature=io.to_dict())
    _shared_log(info, loading)
    if settings.quantize:  # the data is checked before any conversion: bad calibration writes nothing
        info.quant = prepare_data(settings, model, spec, inputs, io)  # not captured: the drawn-data warning is loud
        report.quantization = {**info.quant.sources, "drawn_inputs": info.quant.drawn,
                               "budget": dict(settings.accuracy_budget)}

    plans = _plans(settings)
    try:
        with Hits(settings) as hits:  # kept from their lookup to their settling; its scratch folder goes after
            _finish_unavailable(plans, info, emit)
            todo = [p for p in plans if p.result is None]
            if todo:
                _run(todo, model, inputs, info, emit, should_stop, hits)
            hits.settle(info)  # after this export's own vectors exist: each hit's sidecar names its own
    except OSError as exc:
        if isinstance(exc, EnnError) or exc.errno not in _WRITE_ERRNOS:
            raise
        # a disk that fills up (or turns read-only) while the vectors or a sidecar are written
        raise OutputDirError(f"Writing into `{settings.out}` failed: {exc.strerror or exc}"
                             f"{f' (`{exc.filename}`)' if exc.filename else ''}. Free disk space or choose another "
                             "`out_dir`; the artifacts of this export may be incomplete, export again.") from None
    report.results = [p.result for p in plans if p.result is not None]
    report.total_s = time.perf_counter() - started
    for result in report.results:  # logged from the calling thread (lanes run in their own)
        log.info("%s", result.summary())
    log.info("export finished in %.2fs -> %s", report.total_s, settings.out)
    if settings.upload_to is not None:  # verified in the staging folder: now every file goes up
        from enn_nb.engine.remote import upload
        from enn_nb.storage import resolve

        target = resolve(settings.upload_to, settings.storage_options)
        report.uploaded = upload(settings.out, target)
        report.uploaded_to = settings.upload_to
        log.info("uploaded %d files to %s", len(report.uploaded), settings.upload_to)
    announce(f"enn_nb.export: {report.summary} -> {settings.upload_to or settings.out}", quiet=quiet)
    _raise_if_needed(report, settings)
    return report


#: Errors of a write into the output folder (None: a writer that reports a full disk without an errno).
_WRITE_ERRNOS = frozenset({None, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


# -- the stages ------------------------------------------------------------------------------------------
def _plans(settings: ExportSettings) -> list[Plan]:
    plans = []
    for i, name in enumerate(settings.names):
        backend = settings.backend(i)
        opts = {**backend.default_options, **dict(settings.options.get(name, {}))}
        # the tolerance waits for the reference outputs (their dtypes raise it): `_resolve_tolerances`
        plans.append(Plan(len(plans), name, backend, opts, None))
        for mode in settings.quantize.get(name, ()):  # each quantized artifact is a row of its own
            plans.append(Plan(len(plans), label(name, mode), get_backend(name), dict(opts), None, quantize=mode))
    return plans


def _finish_unavailable(plans: list[Plan], info: RunInfo, emit: Emitter) -> None:
    """Finish the plans whose backend cannot convert here (nothing to capture for them)."""
    for plan in plans:
        reason = plan.backend.unavailable_reason()
        if reason:
            plan.result = finish_unavailable(plan, reason, info)
            emit(plan.name, "done", "unavailable", plan.index)


def _take_hits(todo: list[Plan], inputs: tuple[torch.Tensor, ...], cases: list[Any], info: RunInfo, emit: Emitter,
               hits: Hits) -> list[Plan]:
    """Finish the plans the cache holds, keyed by the captured program, each hit re-run on the parity cases;
    returns the plans left to convert."""
    from enn_nb.engine.recheck import recheck_hit

    digest = {"program": info.program, "inputs": tensors_digest(inputs)}
    left = []
    for plan in todo:
        if plan.quantize:  # a quantized one depends on data and a metric: never cached
            left.append(plan)
            continue
        plan.key = export_key(plan, digest, info.spec, info.source, info.settings)
        hit = lookup(plan, info.settings)
        started = time.perf_counter()
        problem = recheck_hit(plan, hit, cases) if hit is not None else None
        if hit is not None:  # the re-run is part of taking the hit
            hit.timings["cache_lookup"] = hit.timings.get("cache_lookup", 0.0) + time.perf_counter() - started
            hit.timings["total"] = hit.timings["cache_lookup"]
        if hit is None or problem is not None:
            if problem is not None:
                log.warning("%s: the cached artifact under this key was refused (%s); converting anew", plan.name,
                            problem)
                plan.notes.append(f"a cached artifact under this export's key was refused and converted anew: {problem}")
            left.append(plan)
            continue
        plan.result = hit
        hits.keep(plan, hit)
        emit(plan.name, "done", hit.status, plan.index, cached=True)
    return left


def _run(
    todo: list[Plan],
    model: Any,
    inputs: tuple[torch.Tensor, ...],
    info: RunInfo,
    emit: Emitter,
    should_stop: Callable[[], bool] | None,
    hits: Hits,
) -> None:
    """Capture once, take the cache's hits (checked on the parity cases), then convert, verify and finish every
    other plan of ``todo`` over the lanes."""
    from enn_nb.engine.capture import Shared  # torch.export machinery: loads with the first export
    from enn_nb.engine.isolate import Worker
    from enn_nb.engine.wrapper import export_module

    settings, report = info.settings, info.report
    workdir = Path(tempfile.mkdtemp(prefix=".enn-export-", dir=settings.out))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        # Children start now (forked from the session's warm server; the first export of a session
        # waits for the server's imports): that overlaps with the capture below.
        isolated = settings.isolate and os.name == "posix"
        lanes = split_lanes(todo, settings.workers if isolated else 1)
        pool: list[Worker] = []
        inductor = any(plan.backend.compiles_with_inductor for plan in todo)
        if isolated:
            for _ in lanes:
                worker = Worker(None, workdir)
                worker.start(inductor=inductor)
                stack.callback(worker.close)
                pool.append(worker)
        threading.Thread(target=sc.warm_up, daemon=True).start()  # compiles the sidecar validator

        # the cases exist before the cache lookup too: every hit is re-run on them
        cases = _reference_cases(model, inputs, info) if settings.verify or settings.cache else []
        _resolve_tolerances(todo, cases, settings)
        if settings.safe:
            with capture("export_safe") as got:
                state = stack.enter_context(export_safe(model))
            _shared_log(info, got)
            target, info.deviations = state.model, state.to_list()
        else:
            target, info.deviations = model, []
            info.fast_paths = declared_fast_paths(model)
        module = export_module(target)
        report.deviations = info.deviations
        io = ModelIO.from_dict(info.signature or {})
        input_names, output_names = io.input_names, io.output_names
        info.essentials = essential_metadata(info.spec, info.source, io, info.deviations, dict(settings.metadata))

        if stopped(should_stop):
            cancel(todo, emit)
            return
        captured = _capture(todo, module, inputs, info, emit)
        if captured is None:
            return
        ep, batch_dynamic, capture_notes = captured
        info.program = program_digest(ep)
        vectors_path = settings.out / f"{settings.stem}{VECTORS_SUFFIX}"
        if settings.cache:
            todo = _take_hits(todo, inputs, cases, info, emit, hits)
        if not todo:  # every backend was a checked hit: the folder's vectors stay the hits' own
            if settings.verify and vectors_path.exists():
                report.vectors = vectors_path
            return
        if settings.verify:
            _save_vectors(vectors_path, cases, info)
        lanes = split_lanes(todo, len(pool) if isolated else 1)  # what is left, over the children already started
        pool = pool[: len(lanes)]
        shared = Shared(workdir=workdir, stem=settings.stem, input_names=input_names, output_names=output_names,
                        essentials=info.essentials, onnx_options=settings.onnx_options, ep=ep,
                        signature=info.signature)
        shared.timings["capture"] = report.capture_s
        job = ExportJob(
            module=module, example_inputs=inputs, dynamic_batch=batch_dynamic, batch_range=settings.batch_range,
            input_names=input_names, output_names=output_names, spec=info.spec, essentials=info.essentials,
            workdir=workdir, get_exported_program=shared.exported_program, get_onnx_path=shared.onnx_path,
            signature=info.signature,
        )
        if pool:
            setup = _child_setup(job, shared, settings, real_module=any(p.backend.consumes == "module" for p in todo))
            for worker in pool:
                worker.configure(setup)

        ctx = LaneContext(job=job, shared=shared, info=info, cases=cases if settings.verify else [],
                          notes=list(capture_notes), emit=emit, should_stop=should_stop, quant=info.quant)
        _run_lanes(lanes, pool, ctx)
        for plan in todo:  # a lane that died of an unexpected error leaves its plans unfinished
            if plan.result is None:
                error = ErrorInfo(type="ExportError", message=ctx.errors.get(plan.name, "not run"))
                plan.result = finish_failed(plan, "convert", error, info, timings={})


def _reference_cases(model: Any, inputs: tuple[torch.Tensor, ...], info: RunInfo) -> list[Any]:
    """Parity cases from the eager model as the user has it (fast paths on), in eval mode. Saved as the vectors
    file once the cache's hits are known."""
    import torch

    settings = info.settings
    call = model.forward_export if callable(getattr(model, "forward_export", None)) else model
    with parity.eval_only(model), torch.no_grad(), capture("parity reference") as got:
        cases = parity.make_cases(call, inputs, make=case_maker(info.spec, inputs), dynamic=settings.dynamic_batch)
    _shared_log(info, got)
    return cases


def _resolve_tolerances(todo: list[Plan], cases: list[Any], settings: ExportSettings) -> None:
    """Each plan's ``(atol, rtol)``, resolved once: what the user gave, the rest the backend's default raised
    for low-precision reference outputs (fp32 defaults when there are no cases: verify and cache off)."""
    dtypes = sorted({str(a.dtype) for case in cases for a in case.expected})
    for plan in todo:
        plan.tolerance = settings.tolerances.resolve(plan.name, plan.backend.default_tolerance, dtypes)


def _save_vectors(path: Path, cases: list[Any], info: RunInfo) -> None:
    io = ModelIO.from_dict(info.signature or {})
    parity.save_vectors(path, cases, io.input_names, io.output_names)
    info.report.vectors = path
    info.vectors = {"file": path.name, "sha256": sc.sha256_file(path)}


def _capture(todo: list[Plan], module: Any, inputs: tuple[torch.Tensor, ...], info: RunInfo,
             emit: Emitter) -> tuple[Any, bool, list[str]] | None:
    """The one ``torch.export`` capture; None (every plan failed at ``capture``) when it raised."""
    from enn_nb.engine.capture import capture_program

    emit(None, "capture", "running", 0)
    started = time.perf_counter()
    try:
        with capture("capture") as got:
            ep, batch_dynamic, notes, info.static_dims = capture_program(
                module, inputs, dynamic_batch=info.settings.dynamic_batch, fast_paths=info.fast_paths,
                signature=ModelIO.from_dict(info.signature).inputs if info.signature else None,
            )
        _shared_log(info, got)
    except Exception as exc:
        _shared_log(info, got)
        error = ErrorInfo.from_exception(exc)
        emit(None, "capture", "failed", 0)
        for plan in todo:
            plan.result = finish_failed(plan, "capture", error, info, timings={})
            emit(plan.name, "done", "failed", plan.index)
        return None
    info.report.capture_s = time.perf_counter() - started
    log.info("capture: torch.export in %.2fs (batch %s), shared by %d backend(s)", info.report.capture_s,
             "dynamic" if batch_dynamic else "static", len(todo))
    emit(None, "capture", "ok", 0)
    return ep, batch_dynamic, list(notes)


def _shared_log(info: RunInfo, got: OutputLog) -> None:
    """What a shared stage warned and printed: in every backend's log and in the report's count."""
    info.shared_log.extend(got)
    info.report.log.extend(got)


def _child_setup(job: ExportJob, shared: Any, settings: ExportSettings, *, real_module: bool) -> Any:
    """What a worker process needs to rebuild ``job`` (all picklable).

    The captured program is shipped, not the model: unpickling a model imports its class's module in
    the worker, running that module's top-level code again. Only a backend that consumes the module
    itself (``consumes = "module"``, a plugin's choice) gets the pickled model (``real_module``).
    """
    from enn_nb.engine.isolate import Setup

    return Setup(
        workdir=str(job.workdir),
        stem=settings.stem,
        ep_path=str(shared.save_program()),
        module_path=_save_module(job.module, job.workdir) if real_module else None,
        example_inputs=[t.detach().cpu().numpy() for t in job.example_inputs],
        dynamic_batch=job.dynamic_batch,
        batch_range=job.batch_range,
        input_names=job.input_names,
        output_names=job.output_names,
        spec=job.spec.to_dict() if job.spec is not None else None,
        essentials=job.essentials,
        onnx_options=settings.onnx_options,
        sdpa="math" if settings.safe else None,
        sys_path=[p for p in sys.path if p],
        signature=job.signature,
    )


def _run_lanes(lanes: list[list[Plan]], pool: list[Any], ctx: LaneContext) -> None:
    if len(lanes) == 1:
        run_lane(lanes[0], pool[0] if pool else None, ctx)
        return
    threads = [
        threading.Thread(target=run_lane, args=(lane, worker, ctx), name=f"enn-export-lane-{i}")
        for i, (lane, worker) in enumerate(zip(lanes, pool))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# -- helpers and strictness --------------------------------------------------------------------------------------
def _save_module(module: Any, workdir: Path) -> str | None:
    import torch

    from enn_nb._fs import write_guarded

    path = workdir / "module.pt"
    try:
        write_guarded(path, lambda f: torch.save(module, f))  # a full disk: an OSError, not an abort in torch
    except Exception:  # an unpicklable model: the child uses the captured program's module instead
        path.unlink(missing_ok=True)
        return None
    return str(path)


def _raise_if_needed(report: ExportReport, settings: ExportSettings) -> None:
    fast = next((r for r in report.results if r.error_type == "FastPathExportError"), None)
    if fast is not None:
        exc = FastPathExportError(fast.error or "", fast_path=fast.fast_path or "")
        exc.report = report  # type: ignore[attr-defined]
        raise exc
    if not settings.strict:
        return
    if report.static_dims:
        exc = StaticDimError(
            f"{static_note(report.static_dims)}: the artifacts accept only the capture size there. Declare "
            "those dims with that size in the signature, or export without strict=True to keep the static "
            "artifacts.",
            dims=report.static_dims,
        )
        exc.report = report  # type: ignore[attr-defined]
        raise exc
    for r in report.results:
        if not settings.fails(r.status):  # with `all`, a backend that cannot convert here is listed, not failing
            continue
        if r.status == "mismatch":
            worst = max(r.parity.get("cases", []), key=lambda c: c["max_abs_err"], default={})
            tol = r.parity.get("tolerance", {})
            exc: Exception = ParityError(
                f"{r.error or mismatch_message(r.backend, r.parity)} Pass `tolerances={{'{r.backend}': (atol, rtol)}}` "
                "if this is acceptable.",
                backend=r.backend,
                batch_size=worst.get("batch_size"),
                max_abs_err=float(r.max_abs_err or float("nan")),
                max_rel_err=float(r.max_rel_err or float("nan")),
                atol=float(tol.get("atol", float("nan"))),
                rtol=float(tol.get("rtol", float("nan"))),
            )
        elif r.status == "degraded":
            acc = (r.quantization or {}).get("accuracy") or {}
            exc = AccuracyBudgetError(
                f"`{r.backend}` is over its accuracy budget against the float model: "
                + "; ".join(acc.get("over_budget") or []) + ". Pass a larger `accuracy_budget`, better calibration "
                "data, or another mode.", backend=r.backend, figures=acc,
            )
        elif r.status == "unavailable":
            extra = getattr(_backend_safe(r.backend), "extra", "")
            exc = MissingDependencyError(r.error or f"`{r.backend}` is unavailable", extra=extra)
        elif r.status in ("failed", "crashed", "timeout"):
            exc = BackendError(f"`{r.backend}` {r.status} at stage `{r.stage}`: {r.error}", backend=r.backend, stage=r.stage or "")
        else:
            continue
        exc.report = report  # type: ignore[attr-defined]
        raise exc


def _backend_safe(name: str) -> Any:
    try:
        return get_backend(name)
    except Exception:
        return None
