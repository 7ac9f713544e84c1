"""Finishing a backend: its files moved into out_dir, its sidecar written, its BackendResult made."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb._fs import replace_path
from enn_nb._optional import PACKAGES, pip_line
from enn_nb.engine import sidecar as sc
from enn_nb.engine.cache import check_replaceable_artifact
from enn_nb.engine.outcome import ErrorInfo, UnitResult
from enn_nb.engine.outlog import LOG_SUFFIX, OutputLog, write_log
from enn_nb.engine.parity import finite
from enn_nb.engine.report import BackendResult, ExportReport
from enn_nb.engine.settings import ExportSettings

if TYPE_CHECKING:
    from enn_nb.engine.plan import Plan
    from enn_nb.model.spec import ModelSpec


@dataclasses.dataclass
class RunInfo:
    """What every backend's finish in one export shares: the settings and the export-wide facts."""

    settings: ExportSettings
    spec: ModelSpec | None
    source: dict[str, Any]
    report: ExportReport  # its capture_s / onnx_s go into each backend's timings
    deviations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    vectors: dict[str, Any] | None = None  # {"file", "sha256"} of the parity vectors
    essentials: dict[str, str] = dataclasses.field(default_factory=dict)
    fast_paths: list[Any] = dataclasses.field(default_factory=list)  # declared ones, when safe=False
    signature: dict[str, Any] | None = None  # the ModelIO the export follows, as JSON
    program: str | None = None  # cache.program_digest of the captured program (sidecar `details.program_sha256`)
    shared_log: OutputLog = dataclasses.field(default_factory=OutputLog)  # captured in the shared stages
    static_dims: dict[str, str] = dataclasses.field(default_factory=dict)  # declared dynamic, static: why
    quant: Any = None  # quantize.run.QuantData: calibration/evaluation data of quantized plans

    @property
    def signature_outputs(self) -> list[str]:
        return [o["name"] for o in (self.signature or {}).get("outputs", [])]


def finish(plan: Plan, unit: UnitResult, info: RunInfo, notes: list[str], t0: float) -> BackendResult:
    """Turn a unit's outcome into files in ``out_dir``, a sidecar and a BackendResult."""
    from enn_nb.engine.capture import fast_path_error  # torch.export machinery: not at %load_ext

    report = info.report
    timings = {"capture": report.capture_s, **({"onnx": report.onnx_s} if plan.backend.consumes == "onnx" else {}),
               **unit.timings}
    report.log.extend(unit.log)
    stage = unit.stage or "convert"
    if unit.crash is not None and unit.crash.timeout_s is not None:
        error = ErrorInfo(
            type="Timeout",
            message=(
                f"`{plan.name}` did not finish within {unit.crash.timeout_s:g} s (option `timeout_s`) and was killed "
                f"during its `{stage}` stage; the other backends went on. Raise it with "
                f"options={{'{plan.name}': {{'timeout_s': ...}}}} (CLI: --timeout or --option {plan.name}.timeout_s=...)."
            ),
            log_tail=unit.crash.log_tail,
        )
        return finish_failed(plan, stage, error, info, timings=timings, status="timeout", t0=t0, notes=notes,
                             log=unit.log)
    if unit.crash is not None:
        crash = unit.crash
        what = crash.signal or f"exit code {crash.exit_code}"
        error = ErrorInfo(
            type="ChildProcessCrashed",
            message=(
                f"The isolated child process died with {what} during the `{stage}` stage of `{plan.name}`; "
                f"this process is unaffected. The child's log is in the sidecar (`error.log_tail`)."
            ),
            exit_code=crash.exit_code,
            signal=crash.signal,
            log_tail=crash.log_tail,
        )
        return finish_failed(plan, stage, error, info, timings=timings, status="crashed", t0=t0, notes=notes,
                             log=unit.log)
    if unit.error is not None:
        error = unit.error
        if error.missing:
            return finish_failed(plan, stage, error, info, timings=timings, status="unavailable", t0=t0, notes=notes,
                                 log=unit.log)
        mapped = fast_path_error(error.chain or error.message, info.fast_paths, stage=stage)
        if mapped is not None:
            error = ErrorInfo(type="FastPathExportError", message=str(mapped), fast_path=mapped.fast_path,
                              cause=error.message[:2000], traceback=error.traceback)
        return finish_failed(plan, stage, error, info, timings=timings, t0=t0, notes=notes, log=unit.log)

    conv = unit.conversion
    status, parity_block = _parity_block(plan, unit, info)
    quantization = None
    if plan.quantize:
        from enn_nb.engine.quantize.calibration import DRAWN_WARNING
        from enn_nb.engine.quantize.run import quantization_block

        status, quantization, problem = quantization_block(plan, unit, info)
        if info.quant.drawn:
            notes = [*notes, DRAWN_WARNING]
        if problem is not None:
            error = ErrorInfo(type="QuantizationError", message=f"`{plan.name}`: {problem}")
            return finish_failed(plan, "verify", error, info, timings=timings, t0=t0, notes=notes, log=unit.log,
                                 quantization=quantization)
    details = dict(conv.details or {})
    if info.program is not None and not plan.quantize:  # a quantized artifact holds another program than the capture
        details["program_sha256"] = info.program  # what `verify` compares a .pt2's own program with
    if unit.metadata is not None:
        details["metadata_roundtrip"] = all(unit.metadata.get(k) == v for k, v in info.essentials.items())

    started = time.perf_counter()
    artifact, files = _place(Path(conv.artifact), [Path(p) for p in conv.extra_files], info.settings.out)
    timings["move"] = time.perf_counter() - started
    data = _sidecar_common(plan, info)
    data.update(
        status=status,
        artifact=artifact.name if artifact.exists() else None,
        directory_artifact=artifact.is_dir(),
        files=files,
        inputs=[t.to_dict() for t in conv.inputs],
        outputs=[t.to_dict() for t in conv.outputs],
        dynamic_batch=bool(conv.dynamic_batch),
        dynamic_dims=_dynamic_dims(conv),
        format=dict(conv.format),
        parity=parity_block,
        embedded=info.essentials if conv.embedded_metadata else None,
        embedded_metadata=bool(conv.embedded_metadata),
        notes=[*notes, *plan.notes, *conv.notes, *([parity_block["only_batch"]] if parity_block.get("only_batch") else [])],
        details=details,
        deferred=conv.deferred,
        conversion_path=dict(conv.path) if conv.path else {"name": "shared", "costs": []},
        cache_key=plan.key if status == "ok" else None,
        **({"quantization": quantization} if quantization is not None else {}),
    )
    if status == "mismatch":  # a mismatch always says by how much, where, and against which tolerance
        from enn_nb.engine.parity import mismatch_message

        names = [t.name for t in conv.outputs]
        data["error"] = {"type": "ParityError", "message": mismatch_message(plan.name, parity_block, names)}
    return _write_result(plan, data, timings, t0, info, unit.log)


def _parity_block(plan: Plan, unit: UnitResult, info: RunInfo) -> tuple[str, dict[str, Any]]:
    """The status and the sidecar's parity block of a converted backend."""
    conv = unit.conversion
    if conv.deferred:
        return "deferred", {"status": "not_run", "reason": f"deferred: {conv.deferred}"}
    if plan.quantize:
        return "ok", {"status": "not_run", "reason": "a quantized artifact is measured against the float model on an "
                      "evaluation set (see `quantization.accuracy`), not held to fp32 tolerances"}
    if unit.parity is None:
        return "ok", {"status": "not_run", "reason": "verify=False"}

    block = finite(unit.parity)
    if block.get("status") in ("passed", "failed", "skipped"):
        block["tolerance"] = block.get("tolerance") or {"atol": plan.tolerance[0], "rtol": plan.tolerance[1]}
        block["vectors"] = info.vectors
        block["reference"] = "eager model with its fast paths on, eval mode"
    return ("mismatch" if block["status"] == "failed" else "ok"), block


def _place(artifact_src: Path, extra_src: list[Path], out: Path) -> tuple[Path, list[dict[str, Any]]]:
    """Move a conversion's files into ``out``: extra files first, the artifact last, each atomically.

    Files already in ``out`` (those a deferred export left for its completion) stay where they are.
    """
    placed_extra = []
    for path in extra_src:
        if path.resolve().is_relative_to(out.resolve()) and not path.resolve().is_relative_to(artifact_src.parent.resolve()):
            placed_extra.append(path)
            continue
        dst = out / path.relative_to(artifact_src.parent)
        dst.parent.mkdir(parents=True, exist_ok=True)
        replace_path(path, dst)
        placed_extra.append(dst)
    artifact = out / artifact_src.name
    if artifact_src.exists():
        check_replaceable_artifact(artifact, directory=artifact_src.is_dir())
        replace_path(artifact_src, artifact)
    return artifact, sc.file_entries(artifact if artifact.exists() else None, placed_extra, out)


def finish_failed(
    plan: Plan,
    stage: str,
    error: ErrorInfo,
    info: RunInfo,
    *,
    timings: dict[str, float],
    status: str = "failed",
    t0: float | None = None,
    notes: list[str] | None = None,
    log: OutputLog | None = None,
    quantization: dict[str, Any] | None = None,
) -> BackendResult:
    """Write the sidecar of a backend that did not make an artifact (``error`` says why) and its result."""
    data = _sidecar_common(plan, info)
    if quantization is not None:
        data["quantization"] = quantization
    block = error.sidecar()
    if error.missing:
        block["message"] = _missing_line(plan, error)
    data.update(status=status, stage=stage, error=block, notes=list(notes or []))
    if error.traceback:
        data["details"] = {"traceback": error.traceback}
    return _write_result(plan, data, timings, t0 if t0 is not None else time.perf_counter(), info, log)


def _missing_line(plan: Plan, error: ErrorInfo) -> str:
    extra = error.missing_extra or plan.backend.extra
    package = error.missing_package or "a package"
    line = pip_line(extra=extra, dist=package)
    return f"The `{plan.name}` backend needs `{package}` (enn-nb extra `{extra}`), which is not installed: {line}"


def finish_unavailable(plan: Plan, reason: str, info: RunInfo) -> BackendResult:
    """Write the sidecar of a backend that cannot run here (with the install line) and its result."""
    data = _sidecar_common(plan, info)
    data["deviations"] = []
    missing = plan.backend.missing_packages()
    if missing:
        dist, extra = PACKAGES.get(missing[0], (missing[0], plan.backend.extra))
        message = (f"`{missing[0]}` is not installed (the `{plan.name}` backend needs the enn-nb extra "
                   f"`{extra or dist}`): {pip_line(extra=extra, dist=dist)}")
    else:
        message = f"The `{plan.name}` backend cannot run here: {reason}"
    data.update(status="unavailable", stage="availability", error={"type": "MissingDependencyError", "message": message})
    return _write_result(plan, data, {}, time.perf_counter(), info)


def _write_result(plan: Plan, data: dict[str, Any], timings: dict[str, float], t0: float, info: RunInfo,
                  own_log: OutputLog | None = None) -> BackendResult:
    out = info.settings.out
    started = time.perf_counter()
    name = plan.artifact_name(info.settings.stem)
    side = sc.sidecar_path(out / name)
    log = OutputLog().extend(info.shared_log).extend(own_log)
    file = None
    if log.warnings or log.lines:  # what the export warned and printed for this backend: kept, never shown unasked
        file = name + LOG_SUFFIX
        write_log(out / file, log)
    data["log"] = log.sidecar_block(file)
    data["timings"] = {k: float(v) for k, v in timings.items()}
    sidecar = sc.build(**data)
    sc.write(side, sidecar)
    timings["sidecar"] = time.perf_counter() - started
    timings["total"] = time.perf_counter() - t0
    # the sidecar on disk gets the final timings too
    sidecar["timings"] = {k: float(v) for k, v in timings.items()}
    sc.write(side, sidecar)
    return BackendResult.from_sidecar(sidecar, out, side, cached=False)


def _dynamic_dims(conv: Any) -> dict[str, dict[str, int | None]]:
    """Each symbolic dim the artifact's inputs keep (``batch``, ``time``...), by name."""
    dims: dict[str, dict[str, int | None]] = {"batch": {"min": 1, "max": None}} if conv.dynamic_batch else {}
    for tensor in conv.inputs:
        for dim in tensor.shape:
            if isinstance(dim, str) and dim not in ("?", "batch"):
                dims.setdefault(dim, {"min": 1, "max": None})
    return dims


def _sidecar_common(plan: Plan, info: RunInfo) -> dict[str, Any]:
    settings = info.settings
    return {
        "backend": plan.name,
        "options": sc.jsonable(plan.options),
        "spec": info.spec.to_dict() if info.spec is not None else None,
        "source": info.source,
        "deviations": info.deviations,
        "batch_range": list(settings.batch_range),
        "versions": sc.versions(plan.backend.versions()),
        "provenance": dict(settings.provenance) if settings.provenance else None,
        "metadata": dict(settings.metadata) or None,
        "parity": {"status": "not_run", "reason": "the export did not reach verification"},
        **({"quantization": {"mode": plan.quantize}} if plan.quantize else {}),
        **({"signature": info.signature} if info.signature else {}),
        **({"static_dims": dict(info.static_dims)} if info.static_dims else {}),
    }
