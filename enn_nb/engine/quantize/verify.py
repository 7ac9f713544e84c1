"""``verify`` of a quantized artifact: its files, its label read back, its accuracy re-measured against the float model.

A quantized artifact is not held to fp32 parity, so its sidecar names no vectors file of its own. What can
be re-checked honestly later, on any machine with its runtime:

- the files against the sidecar's sha256 (nothing is loaded on a mismatch);
- what the artifact holds, read back again (a float artifact under a quantized name still fails);
- its outputs against the float model's: the eager outputs recorded in the export's vectors file, which the
  float artifact's sidecar of the same export names (``quantization.float_artifact``). Those rows are the
  parity vectors, not the evaluation set the export measured (that data is not stored), so the result
  shows both figures, each labelled, and the recorded budget decides.

Status: ``passed`` (within budget on the re-measured rows and not recorded ``degraded``), ``degraded``
(over budget now, or recorded over budget at export), ``failed`` (a file or label problem), ``skipped``
(the runtime is not installed here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from enn_nb._safeio import confined, escape
from enn_nb.engine import sidecar as sc
from enn_nb.errors import ExportError


def verify_quantized(artifact: Path, side_path: Path, data: dict[str, Any], *, options: dict[str, Any] | None,
                     trust: bool) -> Any:
    """The :class:`~enn_nb.engine.parity.VerifyResult` of a quantized artifact (see the module docstring)."""
    from enn_nb.engine.parity import VerifyResult, cases_for, load_vectors
    from enn_nb.engine.quantize.run import _really_quantized
    from enn_nb.engine.registry import get_backend

    label = data["backend"]
    block = data["quantization"]
    base = side_path.parent
    budget = _budget(artifact, block.get("budget"))
    problems = sc.check_files(data, base, artifact)
    vec_path, float_side = _float_vectors(artifact, base, block)
    vectors = float_side["parity"]["vectors"]
    if vectors.get("sha256") and sc.sha256_file(vec_path) != vectors["sha256"]:
        problems.append(f"`{escape(vectors['file'])}` has another sha256 than `{escape(block['float_artifact'])}`'s "
                        "sidecar records")
    if problems:  # never load what does not match its hashes
        return VerifyResult(artifact, label, "failed", "files differ from the sidecar; nothing was loaded", {}, problems)
    found = _read_back(artifact)
    if found is not None:
        wrong = _really_quantized(block.get("mode"), found)
        if wrong:
            problems.append(wrong)
    backend = get_backend(label.partition(":")[0])
    reason = backend.runtime_unavailable_reason()
    if reason:
        return VerifyResult(artifact, label, "skipped", reason, {}, problems)
    cases, _, output_names = load_vectors(vec_path)
    wanted = {c["key"] for c in float_side["parity"].get("cases", [])}
    dynamic = bool(data.get("dynamic_batch"))
    chosen = cases_for([c for c in cases if c.key in wanted] or cases, dynamic)
    load_options = {**backend.default_options, **(data.get("options") or {}), **(options or {})}
    from enn_nb.engine.quantize import accuracy
    from enn_nb.engine.trust import require_trust

    require_trust(backend, artifact, trust)
    got = _run(backend, artifact, label, load_options, chosen)
    names = [o["name"] for o in data.get("outputs") or []] or output_names
    try:
        figures = accuracy.measure([c.expected for c in chosen], got, names)
    except ValueError as exc:
        problems.append(f"the quantized artifact's outputs do not match the float model's: {exc}")
        return VerifyResult(artifact, label, "failed", None, {}, problems)
    broken = accuracy.over_budget(figures, {**budget, "metric": None})  # the user's metric is not stored
    recorded = block.get("accuracy") if isinstance(block.get("accuracy"), dict) else {}
    figures.update(
        evaluated_on=f"`{vectors['file']}`: {figures['rows']} rows of the export's parity vectors, against the float "
                     "model's outputs recorded there",
        over_budget=broken,
        budget=budget,
        recorded=recorded,
    )
    if budget.get("metric") is not None:
        figures["metric_note"] = "the accuracy_metric budget is not re-checked: the metric (a callable) is not stored"
    figures["status"] = "over budget" if broken else "within budget"
    status = "degraded" if broken or data["status"] == "degraded" or recorded.get("over_budget") else "passed"
    reason = ("within its accuracy budget against the float model (a quantized artifact is not held to fp32 "
              "parity)") if status == "passed" else None
    if status == "degraded":
        why = [f"over budget on these rows: {'; '.join(broken)}"] if broken else []
        if recorded.get("over_budget"):
            why.append(f"recorded over budget at export on {recorded.get('rows')} rows ({recorded.get('evaluated_on')}): "
                       f"{'; '.join(map(str, recorded['over_budget']))}")
        reason = "; ".join(why) or "the export recorded this artifact as degraded"
    return VerifyResult(artifact, label, status, reason, {}, problems, accuracy=accuracy.finite(figures))


def _budget(artifact: Path, given: Any) -> dict[str, Any]:
    """The recorded accuracy budget, checked (the sidecar is read from disk: anything may be there)."""
    import math

    names = ("rmse_rel", "max_abs", "mean_abs", "metric")
    ok = isinstance(given, dict) and all(
        given.get(k) is None or (isinstance(given[k], (int, float)) and not isinstance(given[k], bool)
                                 and math.isfinite(given[k]) and given[k] >= 0) for k in names)
    if not ok:
        raise ExportError(f"The sidecar of `{artifact.name}` records no valid accuracy budget "
                          f"(`quantization.budget`: {escape(repr(given))[:120]}); re-export it.")
    return {k: given.get(k) for k in names}


def _float_vectors(artifact: Path, base: Path, block: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The export's vectors file (named by the float artifact's sidecar) and that sidecar."""
    float_name = block.get("float_artifact")
    fix = ("copy it (and the vectors file it names) with the quantized artifact, or re-export with verify=True so "
           "that the float artifact is checked and its vectors saved")
    if not float_name:
        raise ExportError(f"The sidecar of `{artifact.name}` (a quantized artifact) names no float artifact to measure "
                          "its accuracy against; re-export it.")
    float_side_path = confined(base, float_name + sc.SIDECAR_SUFFIX, what="The quantized sidecar's float artifact",
                               error=ExportError, must_exist=False)
    if not float_side_path.is_file():
        raise ExportError(
            f"`{artifact.name}` is a quantized artifact: verify re-measures its accuracy against the float model's "
            f"outputs, recorded in the vectors file that `{float_side_path.name}` names, and that sidecar is not beside "
            f"it; {fix}.")
    float_side = sc.read(float_side_path)
    vectors = (float_side.get("parity") or {}).get("vectors") or {}
    if not vectors.get("file"):
        raise ExportError(
            f"`{artifact.name}` is a quantized artifact: verify re-measures its accuracy against the float model's "
            f"outputs recorded in the export's vectors file, and `{float_side_path.name}` names none (its parity: "
            f"{(float_side.get('parity') or {}).get('status')}); {fix}.")
    vec_path = confined(base, vectors["file"], what="The float sidecar's vectors file", error=ExportError,
                        must_exist=False)
    if not vec_path.is_file():
        raise ExportError(f"The vectors file `{vectors['file']}` is missing beside `{artifact.name}`; {fix}.")
    return vec_path, float_side


def _read_back(artifact: Path) -> dict[str, Any] | None:
    """What the artifact holds, read again; None where enn_nb reads it only at export (an AOTI package)."""
    from enn_nb.engine.quantize.readback import read_back

    if artifact.name.endswith(".aoti.pt2"):
        return None
    return read_back(artifact)


def _run(backend: Any, artifact: Path, label: str, load_options: dict[str, Any], cases: list[Any]) -> list[Any]:
    """The artifact's outputs on each case (the runtime's output captured, its error one enn_nb error)."""
    from enn_nb.engine.outlog import capture
    from enn_nb.errors import BackendError, EnnError

    try:
        with capture("verify"):
            # no `details.program_sha256` check: that digest is the float capture's (a quantized artifact holds
            # another program; sidecars written before this was noticed still record it), and a quantized row
            # never comes from the export cache, whose collisions that check is for
            runner = backend.load(artifact, load_options)
            return [runner([a.copy() for a in case.inputs]) for case in cases]
    except EnnError:
        raise
    except Exception as exc:  # noqa: BLE001 - a runtime's own error on a damaged artifact: one enn_nb error
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise BackendError(
            f"`{artifact.name}` could not be loaded or run by the `{label}` runtime ({type(exc).__name__}: {first}). "
            "Its hashes match the sidecar, so it was written this way or resealed after a change; re-export it.",
            backend=label, stage="verify",
        ) from exc
