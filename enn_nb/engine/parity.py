"""Parity: artifact vs eager model (fast paths on) at >= 2 batch sizes, tolerances, vectors files, ``verify``.

Tolerances (``atol``, ``rtol``; a case passes when ``|got - expected| <= atol + rtol * |expected|``
element-wise) default per backend (``Backend.default_tolerance``, fp32):

==========  =========  =========  ==============================================================
backend     atol       rtol       why
==========  =========  =========  ==============================================================
onnx / ort  1e-4       1e-4       onnxruntime fuses and reorders fp32 reductions
pt2         1e-5       1e-5       same kernels as eager; the gap is the fast path vs its safe path
aoti        1e-4       1e-4       inductor generates its own fused C++ kernels
others      see each backend's ``default_tolerance``
==========  =========  =========  ==============================================================

Lower-precision outputs raise the floor: float16 to (1e-2, 1e-2), bfloat16 to (5e-2, 5e-2).
Override with ``export(..., tolerances=(atol, rtol))`` for every backend or
``tolerances={"onnx": (atol, rtol), ...}`` per backend.

The reference is the eager model *with its fast paths on* (what the user trained), in eval mode.
Inputs and expected outputs are saved as ``<stem>.vectors.safetensors`` beside the artifacts, so
``enn-nb verify ARTIFACT`` can re-check an artifact later on any machine with its runtime.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb._fs import atomic_path
from enn_nb._safeio import confined, escape
from enn_nb.engine import sidecar as sc
from enn_nb.engine.registry import get_backend
from enn_nb.engine.tolerance import parse_tolerances
from enn_nb.errors import EnnError, ExportError
from enn_nb.model.examples import default_example_inputs, eval_only, resample_inputs  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    import numpy as np
    import torch

    from enn_nb.model.spec import ModelSpec

VECTORS_SCHEMA = "enn_nb.vectors/1"
VECTORS_SUFFIX = ".vectors.safetensors"

#: Batch sizes checked when the artifact's batch is dynamic.
DYNAMIC_BATCHES = (1, 7)
#: Why those two, for legends: the user never asked for batch 7.
DYNAMIC_BATCHES_WHY = (
    "a dynamic-batch artifact is checked at batch 1 and batch 7: 1 is the smallest, and 7 an odd size other than "
    "the capture batch (2), so a graph that silently specialised to the capture batch fails there; a static "
    "artifact is checked at its capture batch"
)


@dataclasses.dataclass
class Case:
    """One parity case: inputs and the eager outputs at one batch size."""

    key: str
    batch_size: int
    dynamic: bool  # True: used for dynamic-batch artifacts; False: at the capture batch (static artifacts)
    inputs: list[np.ndarray]
    expected: list[np.ndarray]


def make_cases(
    call: Callable[..., Any],
    example: tuple[torch.Tensor, ...],
    *,
    make: Callable[[int, int], tuple[torch.Tensor, ...]],
    dynamic: bool,
) -> list[Case]:
    """Parity cases: batches 1 and 7 (dynamic artifacts) and two draws at the capture batch (static ones)."""
    import torch

    capture_batch = int(example[0].shape[0])
    plan: list[tuple[str, int, bool, int]] = []
    if dynamic:
        plan += [(f"b{b}", b, True, 100 + b) for b in DYNAMIC_BATCHES]
    plan += [(f"s{capture_batch}a", capture_batch, False, 200), (f"s{capture_batch}b", capture_batch, False, 201)]
    cases = []
    with torch.no_grad():
        for key, batch, dyn, seed in plan:
            inputs = make(batch, seed)
            expected = _as_outputs(call(*inputs))
            cases.append(
                Case(key, batch, dyn, [t.detach().cpu().numpy() for t in inputs], [t.detach().cpu().numpy() for t in expected])
            )
    return cases


def _as_outputs(out: Any) -> list[Any]:
    if isinstance(out, (list, tuple)):
        return [o for o in out]
    if isinstance(out, Mapping):
        return list(out.values())
    return [out]


# -- vectors file -----------------------------------------------------------------------------------
def save_vectors(path: Path, cases: list[Case], input_names: list[str], output_names: list[str]) -> Path:
    """Write the cases to a safetensors file (atomically)."""
    from safetensors.numpy import save_file

    tensors: dict[str, Any] = {}
    for case in cases:
        for i, arr in enumerate(case.inputs):
            tensors[f"{case.key}/in/{i}"] = arr
        for j, arr in enumerate(case.expected):
            tensors[f"{case.key}/out/{j}"] = arr
    meta = {
        "schema": VECTORS_SCHEMA,
        "cases": json.dumps([{"key": c.key, "batch_size": c.batch_size, "dynamic": c.dynamic} for c in cases]),
        "input_names": json.dumps(input_names),
        "output_names": json.dumps(output_names),
        "reference": "eager model, fast paths on, eval mode",
    }

    with atomic_path(path) as tmp:
        save_file({k: _contiguous(v) for k, v in tensors.items()}, str(tmp), metadata=meta)
    return path


def _contiguous(arr: Any) -> Any:
    import numpy as np

    return np.ascontiguousarray(arr)


def load_vectors(path: Path) -> tuple[list[Case], list[str], list[str]]:
    """Read a vectors file back: ``(cases, input_names, output_names)``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata() or {}
        if meta.get("schema") != VECTORS_SCHEMA:
            raise ExportError(f"`{path}` is not an enn_nb vectors file (schema {meta.get('schema')!r}).")
        listing = json.loads(meta["cases"])
        keys = set(fh.keys())
        cases = []
        for item in listing:
            key = item["key"]
            ins = [fh.get_tensor(f"{key}/in/{i}") for i in range(_count(keys, f"{key}/in/"))]
            outs = [fh.get_tensor(f"{key}/out/{j}") for j in range(_count(keys, f"{key}/out/"))]
            cases.append(Case(key, int(item["batch_size"]), bool(item["dynamic"]), ins, outs))
    return cases, json.loads(meta["input_names"]), json.loads(meta["output_names"])


def _count(keys: set[str], prefix: str) -> int:
    return sum(1 for k in keys if k.startswith(prefix))


def cases_for(cases: list[Case], dynamic: bool) -> list[Case]:
    """The cases an artifact is checked on: dynamic ones if its batch is dynamic, else the static ones."""
    chosen = [c for c in cases if c.dynamic] if dynamic else [c for c in cases if not c.dynamic]
    return chosen or [c for c in cases if not c.dynamic]


# -- comparing ---------------------------------------------------------------------------------------
def compare(got: Sequence[Any], expected: Sequence[Any], atol: float, rtol: float) -> dict[str, Any]:
    """Max abs/rel errors over all outputs and whether every element is within tolerance."""
    import numpy as np

    if len(got) != len(expected):
        return {
            "max_abs_err": float("inf"),
            "max_rel_err": float("inf"),
            "passed": False,
            "problem": f"the artifact returned {len(got)} output(s), the model {len(expected)}",
        }
    max_abs = max_rel = 0.0
    passed = True
    problem = None
    for i, (g, e) in enumerate(zip(got, expected)):
        g = np.asarray(g)
        e = np.asarray(e)
        if g.shape != e.shape:
            return {
                "max_abs_err": float("inf"),
                "max_rel_err": float("inf"),
                "passed": False,
                "problem": f"output {i} has shape {list(g.shape)}, the model's has {list(e.shape)}",
            }
        g64 = g.astype(np.float64)
        e64 = e.astype(np.float64)
        both_nan = np.isnan(g64) & np.isnan(e64)
        diff = np.where(both_nan, 0.0, np.abs(g64 - e64))
        diff = np.where(np.isnan(diff), np.inf, diff)
        rel = diff / np.maximum(np.abs(e64), np.finfo(np.float64).tiny)
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
            max_rel = max(max_rel, float(rel.max()))
            ok = bool(np.all(diff <= atol + rtol * np.abs(np.nan_to_num(e64))))
            if not ok and problem is None:
                problem = f"output {i} differs beyond tolerance"
            passed = passed and ok
    out: dict[str, Any] = {"max_abs_err": max_abs, "max_rel_err": max_rel, "passed": passed}
    if problem:
        out["problem"] = problem
    return out


def run_cases(runner: Callable[[list[Any]], list[Any]], cases: list[Case], atol: float, rtol: float) -> dict[str, Any]:
    """Run the artifact on each case; the sidecar's ``parity`` block (without vectors/reference)."""
    results = []
    for case in cases:
        got = runner([c.copy() for c in case.inputs])
        row = compare(got, case.expected, atol, rtol)
        results.append({"key": case.key, "batch_size": case.batch_size, **row})
    passed = all(r["passed"] for r in results) and bool(results)
    return {
        "status": "passed" if passed else "failed",
        "tolerance": {"atol": atol, "rtol": rtol},
        "cases": results,
        "max_abs_err": max((r["max_abs_err"] for r in results), default=None),
        "max_rel_err": max((r["max_rel_err"] for r in results), default=None),
    }


def finite(parity: dict[str, Any]) -> dict[str, Any]:
    """JSON has no inf: errors of a case that could not be compared become a large finite number."""

    def fix(v: Any) -> Any:
        return 1e308 if isinstance(v, float) and not math.isfinite(v) else v

    out = dict(parity)
    for key in ("max_abs_err", "max_rel_err"):
        if key in out:
            out[key] = fix(out[key])
    out["cases"] = [{k: fix(v) for k, v in case.items()} for case in out.get("cases", [])]
    return out


# -- verify an artifact later -------------------------------------------------------------------------
@dataclasses.dataclass
class VerifyResult:
    """What :func:`verify` found."""

    artifact: Path
    backend: str
    status: str  # passed | failed | skipped
    reason: str | None
    parity: dict[str, Any]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return self.status == "passed" and not self.problems

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["artifact"] = str(self.artifact)
        out["ok"] = self.ok
        return out

    def __str__(self) -> str:
        head = f"{self.artifact.name} [{self.backend}]: {self.status}"
        if self.problems:  # never "passed" on a line whose command fails
            count = len(self.problems)
            head = (f"{self.artifact.name} [{self.backend}]: FAILED - {count} file problem{'s' if count != 1 else ''} "
                    f"(parity {self.status})")
        if self.reason:
            head += f" - {self.reason}"
        lines = [head]
        for case in self.parity.get("cases", []):
            lines.append(
                f"  batch {case['batch_size']:>3}: max|err| {case['max_abs_err']:.3e}  max rel {case['max_rel_err']:.3e}  "
                f"{'ok' if case['passed'] else 'MISMATCH'}"
            )
        tol = self.parity.get("tolerance")
        if tol:
            lines.append(f"  tolerance atol={tol['atol']:g} rtol={tol['rtol']:g}")
        lines += [f"  problem: {p}" for p in self.problems]

        return "\n".join(escape(line) for line in lines)


def verify(artifact: str | Path, *, tolerances: Any = None, options: dict[str, Any] | None = None,
           trust: bool = False) -> VerifyResult:
    """Re-check an exported artifact from its sidecar and vectors file.

    Checks the files' sha256 against the sidecar first and stops (``failed``, nothing loaded) on any
    mismatch; then runs the artifact on the saved inputs with its backend's runtime and compares with
    the saved eager outputs.

    Args:
        artifact: the artifact (or its ``.enn.json`` sidecar).
        tolerances: ``(atol, rtol)`` (either may be None) or ``{"atol": ...}`` overriding the sidecar's.
        options: backend load options overriding the sidecar's.
        trust: allow loading an artifact that is native code (an AOTInductor package runs its shared
            library when loaded); a one-line warning says so.

    Raises:
        ExportError: no/invalid sidecar, or no vectors file.
        UnsafeArtifactError: an AOTI package without ``trust=True``, or a .pt2 holding pickles.
    """
    from enn_nb.engine.trust import require_trust

    artifact = Path(artifact)
    if artifact.name.endswith(sc.SIDECAR_SUFFIX):
        side_path = artifact
        artifact = artifact.with_name(artifact.name[: -len(sc.SIDECAR_SUFFIX)])
    else:
        side_path = sc.sidecar_path(artifact)
    data = sc.read(side_path)
    backend_name = data["backend"]
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
    try:
        runner = backend.load(artifact, load_options)
        parity = finite(run_cases(runner, chosen, atol, rtol))
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
