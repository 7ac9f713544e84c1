"""Finishing a backend: its files moved into out_dir, its sidecar written, its BackendResult made."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb.engine import sidecar as sc
from enn_nb.engine.cache import replace_path
from enn_nb.engine.report import BackendResult, ExportReport

if TYPE_CHECKING:
    from enn_nb.engine.plan import Plan


def finish(
    plan: Plan,
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
    from enn_nb.engine.capture import fast_path_error

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
        return finish_failed(plan, last_stage, error, common, timings=timings, status="crashed", t0=t0, notes=notes)
    if unit.get("error"):
        error = dict(unit["error"])
        if error.get("missing"):
            return finish_failed(plan, unit.get("stage") or "convert", error, common, timings=timings,
                                 status="unavailable", t0=t0, notes=notes)
        mapped = fast_path_error(error.get("chain") or error["message"], fast_paths, stage=unit.get("stage") or "convert")
        if mapped is not None:
            error = {"type": "FastPathExportError", "message": str(mapped), "fast_path": mapped.fast_path,
                     "cause": error["message"][:2000]}
        return finish_failed(plan, unit.get("stage") or "convert", error, common, timings=timings, t0=t0, notes=notes)

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
        from enn_nb.engine.parity import finite

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
        conversion_path=conv.get("path") or {"name": "shared", "costs": []},
    )
    return _write_result(plan, data, timings, t0)


def finish_failed(
    plan: Plan,
    stage: str,
    error: dict[str, Any],
    common: dict[str, Any],
    *,
    timings: dict[str, float],
    status: str = "failed",
    t0: float | None = None,
    notes: list[str] | None = None,
) -> BackendResult:
    """Write the sidecar of a backend that did not make an artifact (``error`` says why) and its result."""
    data = _sidecar_common(plan, common)
    err = {k: error.get(k) for k in ("type", "message", "exit_code", "signal", "log_tail", "fast_path") if k in error}
    if error.get("missing"):
        err["message"] = _missing_line(plan, error)
    data.update(status=status, stage=stage, error=err, notes=list(notes or []))
    if error.get("traceback"):
        data["details"] = {"traceback": error["traceback"]}
    return _write_result(plan, data, timings, t0 if t0 is not None else time.perf_counter())


def _missing_line(plan: Plan, error: dict[str, Any]) -> str:
    missing = error.get("missing") or {}
    extra = missing.get("extra") or plan.backend.extra
    package = missing.get("package") or "a package"
    line = f"%pip install 'enn-nb[{extra}]'" if extra else f"%pip install {package}"
    return f"The `{plan.name}` backend needs `{package}` (enn-nb extra `{extra}`), which is not installed: {line}"


def _write_result(plan: Plan, data: dict[str, Any], timings: dict[str, float], t0: float) -> BackendResult:
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
    return result_from_sidecar(sidecar, out, side, cached=False)


def result_from_sidecar(data: dict[str, Any], out: Path, side: Path, *, cached: bool) -> BackendResult:
    """The BackendResult a sidecar describes (``cached`` when it came from the export cache)."""
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


def _sidecar_common(plan: Plan, common: dict[str, Any]) -> dict[str, Any]:
    spec = common["spec"]
    return {
        "_out": common["out"],
        "_stem": common["stem"],
        "backend": plan.name,
        "options": sc.jsonable(plan.options),
        "spec": spec.to_dict() if spec is not None else None,
        "source": common["source"],
        "deviations": common["deviations"],
        "batch_range": list(common["batch_range"]),
        "versions": sc.versions(plan.backend.versions()),
        "provenance": dict(common["provenance"]) if common["provenance"] else None,
        "metadata": common["metadata"] or None,
        "parity": {"status": "not_run", "reason": "the export did not reach verification"},
        **({"signature": common["signature"]} if common.get("signature") else {}),
    }


def finish_unavailable(plan: Plan, reason: str, out: Path, stem: str, spec: Any, source: dict[str, Any],
                       provenance: Any, metadata: dict[str, Any], batch_range: tuple[int, int, int]) -> BackendResult:
    """Write the sidecar of a backend that cannot run here (with the install line) and its result."""
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
