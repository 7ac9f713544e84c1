"""``enn-nb verify`` / :func:`enn_nb.verify`: re-check an exported artifact from its sidecar and vectors file.

Hashes first (nothing loaded on a mismatch), then the artifact run on the saved inputs against the saved
eager outputs (:mod:`.parity`), or, for a quantized artifact, its accuracy against the float model
(:mod:`.quantize.verify`). Its own module so that both of those can build on :mod:`.parity` without a
circle.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from enn_nb._safeio import confined, escape
from enn_nb.engine import sidecar as sc
from enn_nb.engine.parity import VerifyResult, cases_for, finite, load_vectors, run_cases
from enn_nb.engine.registry import get_backend
from enn_nb.engine.tolerance import parse_tolerances
from enn_nb.errors import EnnError, ExportError


def _not_an_artifact(artifact: Path) -> None:
    """Raise NotAnArtifactError for a path that does not exist or holds a checkpoint; return otherwise."""
    from enn_nb._paths import did_you_mean
    from enn_nb.checkpoint.detect import detect_format
    from enn_nb.errors import CheckpointError, NotAnArtifactError

    if not artifact.exists():
        hint = did_you_mean(artifact) or "."
        raise NotAnArtifactError(f"`{artifact}` does not exist (working directory: {Path.cwd()}){hint}")
    try:
        fmt = detect_format(artifact)
    except (CheckpointError, OSError):
        return  # not a checkpoint either: the missing sidecar is the problem
    raise NotAnArtifactError(
        f"`{artifact}` is a {fmt} checkpoint; verify is for exported artifacts (it re-runs one on the vectors saved "
        f"beside it at export). Inspect a checkpoint with `enn-nb inspect {artifact}`, or export it with "
        f"`enn-nb export {artifact} -b onnx -o exports` and verify what that writes."
    )


def verify(artifact: str | Path, *, tolerances: Any = None, options: dict[str, Any] | None = None,
           trust: bool = False, storage_options: Mapping[str, Any] | None = None) -> VerifyResult:
    """Re-check an exported artifact from its sidecar and vectors file.

    Checks the files' sha256 against the sidecar first and stops (``failed``, nothing loaded) on any
    mismatch; then runs the artifact on the saved inputs with its backend's runtime and compares with
    the saved eager outputs. A quantized artifact (``model.int8.onnx``) is held to its accuracy budget
    instead of fp32 tolerances: its label is read back again and its error against the float model's
    recorded outputs re-measured (:mod:`enn_nb.engine.quantize.verify`); its status can be ``degraded``.

    Args:
        artifact: the artifact (or its ``.enn.json`` sidecar).
        tolerances: ``(atol, rtol)`` (either may be None) or ``{"atol": ...}`` overriding the sidecar's.
        options: backend load options overriding the sidecar's.
        trust: allow loading an artifact that is native code (an AOTInductor package runs its shared
            library when loaded); a one-line warning says so.
        storage_options: fsspec options for an artifact URL (``s3://.../model.onnx``): the sidecar, the
            files it lists and the vectors are fetched into the cache (once per sidecar version) and
            the local copy is verified.

    Raises:
        NotAnArtifactError: the path does not exist, or is a checkpoint (verify is for exported artifacts).
        ExportError: no/invalid sidecar, or no vectors file.
        UnsafeArtifactError: an AOTI package without ``trust=True``, or a .pt2 holding pickles.
    """
    from enn_nb.storage import resolve

    where = resolve(artifact, storage_options)
    if isinstance(where, Path):
        return _verify_local(where, tolerances=tolerances, options=options, trust=trust)
    from enn_nb.engine.remote import fetch_artifact

    result = _verify_local(fetch_artifact(where), tolerances=tolerances, options=options, trust=trust)
    result.url = where.url  # what the user asked about; ``artifact`` stays the verified local copy
    return result


def _verify_local(artifact: Path, *, tolerances: Any, options: dict[str, Any] | None, trust: bool) -> VerifyResult:
    """:func:`verify` of a local artifact (or the fetched copy of a remote one)."""
    from enn_nb.engine.trust import require_trust

    if artifact.name.endswith(sc.SIDECAR_SUFFIX):
        side_path = artifact
        artifact = artifact.with_name(artifact.name[: -len(sc.SIDECAR_SUFFIX)])
    else:
        side_path = sc.sidecar_path(artifact)
    if not side_path.is_file():
        _not_an_artifact(artifact)
    data = sc.read(side_path)
    backend_name = data["backend"]
    if data.get("quantization") and data["status"] in ("ok", "degraded"):  # accuracy, not parity: no vectors of its own
        from enn_nb.engine.quantize.verify import verify_quantized

        return verify_quantized(artifact, side_path, data, options=options, trust=trust)
    if data["status"] not in ("ok", "mismatch"):
        return VerifyResult(artifact, backend_name, "skipped", f"the export's status is `{data['status']}`: no artifact to verify", {}, [])
    base = side_path.parent
    problems = sc.check_files(data, base, artifact)
    vectors = (data.get("parity") or {}).get("vectors") or {}
    if not vectors.get("file"):
        raise ExportError(f"The sidecar of `{artifact.name}` names no vectors file; re-export with verify=True.")
    vec_path = confined(base, vectors["file"], what="The sidecar's vectors file", error=ExportError, must_exist=False)
    if not vec_path.is_file():
        raise ExportError(
            f"The vectors file `{vectors['file']}` is missing beside `{artifact.name}`; copy it with the artifact "
            "or re-export."
        )
    if vectors.get("sha256") and sc.sha256_file(vec_path) != vectors["sha256"]:
        problems.append(f"`{escape(vectors['file'])}` has another sha256 than the sidecar records")
    if problems:  # never load what does not match its hashes
        return VerifyResult(artifact, backend_name, "failed", "files differ from the sidecar; nothing was loaded",
                            {}, problems)
    backend = get_backend(backend_name)
    reason = backend.runtime_unavailable_reason()
    if reason:
        return VerifyResult(artifact, backend_name, "skipped", reason, {}, problems)
    cases, _, _ = load_vectors(vec_path)
    wanted = {c["key"] for c in data["parity"].get("cases", [])}
    chosen = [c for c in cases if c.key in wanted] or cases_for(cases, bool(data.get("dynamic_batch")))
    tol = data["parity"].get("tolerance") or {}
    recorded = (float(tol.get("atol", backend.default_tolerance[0])), float(tol.get("rtol", backend.default_tolerance[1])))
    atol, rtol = parse_tolerances(tolerances).resolve(backend_name, recorded)  # what is not given: the sidecar's
    load_options = {**backend.default_options, **(data.get("options") or {}), **(options or {})}
    require_trust(backend, artifact, trust)
    from enn_nb.engine.outlog import capture

    try:
        # the runtime's own output (torch logs a traceback for an archive it cannot load) is captured: the
        # outcome is this function's result or its one error (`logging.getLogger("enn_nb.converters")` shows it)
        with capture("verify"):
            runner = backend.load(artifact, load_options)
            recorded_program = (data.get("details") or {}).get("program_sha256")
            if recorded_program and backend.program_digest(artifact) not in (None, recorded_program):
                problems.append(f"the program inside `{escape(artifact.name)}` is not the one its sidecar records "
                                "(`details.program_sha256`): another model's artifact under this sidecar")
            parity = finite(run_cases(runner, chosen, atol, rtol))
        if not data.get("dynamic_batch") and (data.get("parity") or {}).get("only_batch"):
            parity["only_batch"] = data["parity"]["only_batch"]
    except EnnError:
        raise
    except Exception as exc:  # noqa: BLE001 - a runtime's own error on a damaged artifact: one enn_nb error
        from enn_nb.errors import BackendError

        raise BackendError(
            f"`{artifact.name}` could not be loaded or run by the `{backend_name}` runtime ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}). Its hashes match the sidecar, so "
            "it was written this way or resealed after a change; re-export it.",
            backend=backend_name, stage="verify",
        ) from exc
    return VerifyResult(artifact, backend_name, parity["status"], None, parity, problems)
