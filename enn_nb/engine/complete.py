"""Completing a deferred export: the backend builds what it could not at export time, then the normal finish.

A backend that cannot finish its artifact on the exporting machine (a TensorRT engine needs a
CUDA GPU) records status ``deferred`` and everything needed to build it later. On a machine that
can, :func:`complete` asks the backend to build it (``Backend.complete``), verifies it against the
vectors file beside the sidecar, and writes the sidecar through the same ``finish`` as an export,
so parity, file hashes, timings and the sidecar's shape cannot differ between the two paths.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from enn_nb._safeio import confined, plain_name
from enn_nb.engine import sidecar as sc
from enn_nb.engine.finish import RunInfo, finish
from enn_nb.engine.outcome import UnitResult
from enn_nb.engine.parity import VECTORS_SUFFIX, cases_for, load_vectors, run_cases
from enn_nb.engine.plan import Plan
from enn_nb.engine.registry import get_backend
from enn_nb.engine.report import BackendResult, ExportReport
from enn_nb.engine.settings import ExportSettings
from enn_nb.engine.tolerance import parse_tolerances
from enn_nb.errors import ExportError
from enn_nb.model.spec import ModelSpec


def complete(sidecar_path: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None) -> BackendResult:
    """Build the artifact of a ``deferred`` export, verify it and rewrite its sidecar.

    Args:
        sidecar_path: the deferred export's ``.enn.json`` sidecar (or the artifact path beside it).
        out: the artifact's path (default: the name the sidecar records); in the sidecar's folder (a bare
            file name is taken there).

    Returns:
        The result, as ``export()`` reports one: ``ok`` or ``mismatch``.

    Raises:
        ExportError: the sidecar is not a deferred export, or ``out`` is elsewhere.
        PlatformUnavailableError: this machine cannot build it either (the message says where and how).
        BackendError: the build failed (the sidecar is left as it was).
    """

    path = Path(sidecar_path)
    if not path.name.endswith(sc.SIDECAR_SUFFIX):
        path = sc.sidecar_path(path)
    data = sc.read(path)
    base = path.parent.resolve()
    if data["status"] != "deferred":
        raise ExportError(f"`{path.name}` records status `{data['status']}`; only a `deferred` export can be completed.")
    backend = get_backend(data["backend"])
    if out is not None and Path(out).parent == Path("."):
        out = base / out  # a bare file name is one in the sidecar's folder
    artifact_name = Path(out).name if out is not None else path.name[: -len(sc.SIDECAR_SUFFIX)]
    if out is not None and Path(out).resolve().parent != base:
        raise ExportError(f"`out` {str(out)!r} must be in the sidecar's folder `{base}` (a sidecar lists its files "
                          "relative to itself).")
    if not artifact_name.endswith(backend.suffix):
        raise ExportError(f"`out` {artifact_name!r} must end with `{backend.suffix}`, the `{backend.name}` suffix.")
    stem = artifact_name[: len(artifact_name) - len(backend.suffix)]
    vectors = _vectors(data, base, stem)
    settings = ExportSettings(
        names=(backend.name,), out=base, stem=stem, batch_range=tuple(data.get("batch_range") or (1, 8, 64)),
        verify=vectors is not None, isolate=False, cache=False, metadata=data.get("metadata") or {},
        provenance=data.get("provenance"),
    )
    info = RunInfo(
        settings=settings,
        spec=ModelSpec.from_dict(data["spec"]) if data.get("spec") else None,
        source=data.get("source") or {"kind": "model"},
        report=ExportReport(results=[], out_dir=base, source=data.get("source") or {}),
        deviations=list(data.get("deviations") or []),
        vectors={"file": vectors.name, "sha256": sc.sha256_file(vectors)} if vectors is not None else None,
        essentials=dict(data.get("embedded") or {}),
    )
    options = {**backend.default_options, **(data.get("options") or {})}
    recorded = (data.get("parity") or {}).get("tolerance") or {}
    tolerance = parse_tolerances(recorded or None).resolve(backend.name, backend.default_tolerance)
    plan = Plan(0, backend.name, backend, options, tolerance)
    notes = list(data.get("notes") or [])  # the export's notes; the backend adds none of its own here
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=".enn-complete-", dir=base))
    try:
        unit = _build_and_verify(backend, data, base, work / artifact_name, options, vectors, tolerance)
        return finish(plan, unit, info, notes, t0)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_and_verify(backend: Any, data: dict[str, Any], base: Path, out_path: Path, options: dict[str, Any],
                      vectors: Path | None, tolerance: tuple[float, float]) -> UnitResult:
    """The backend's build, then parity on the saved vectors: a UnitResult, as a worker would send.

    A build or a run that raises leaves the deferred sidecar as it was (the error goes to the caller):
    it still says how to build the artifact.
    """

    unit = UnitResult()
    started = time.perf_counter()
    unit.conversion = backend.complete(data, base, out_path, options)
    unit.timings["convert"] = time.perf_counter() - started
    if vectors is not None:
        started = time.perf_counter()
        cases, _, _ = load_vectors(vectors)
        runner = backend.load(Path(unit.conversion.artifact), options)
        unit.parity = run_cases(runner, cases_for(cases, bool(unit.conversion.dynamic_batch)), *tolerance)
        unit.timings["verify"] = time.perf_counter() - started
    return unit


def _vectors(data: dict[str, Any], base: Path, stem: str) -> Path | None:
    what = "The sidecar's vectors file"
    named = ((data.get("parity") or {}).get("vectors") or {}).get("file")
    if named is not None:
        named = plain_name(named, what=what, error=ExportError)
    for name in ([named] if named else []) + [f"{stem}{VECTORS_SUFFIX}"]:
        # confined as `verify` does: a symlink in the folder must not lead the check outside it
        candidate = confined(base, name, what=what, error=ExportError, must_exist=False)
        if candidate.is_file():
            return candidate
    return None
