"""Parity: artifact vs eager model (fast paths on) at >= 2 batch sizes, tolerances, vectors files, verify's result.

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
from enn_nb._safeio import escape
from enn_nb.errors import ExportError, InputMismatchError
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
            try:
                expected = _as_outputs(call(*inputs))
            except Exception as exc:  # noqa: BLE001 - the model's own error, on inputs enn_nb drew
                raise _rejected(example, inputs, batch, exc) from None
            cases.append(
                Case(key, batch, dyn, [t.detach().cpu().numpy() for t in inputs], [t.detach().cpu().numpy() for t in expected])
            )
    return cases


def _rejected(example: Sequence[Any], inputs: Sequence[Any], batch: int, exc: Exception) -> InputMismatchError:
    from enn_nb._safeio import escape

    given = [list(t.shape) for t in example]
    drawn = [list(t.shape) for t in inputs]
    return InputMismatchError(
        f"The model fails on the parity inputs at batch {batch} ({drawn}, drawn like the example inputs {given} with "
        f"their first axis taken as the batch): {type(exc).__name__}: {escape(str(exc))[:200]}. If the first axis "
        "is not the batch, add one (`x.unsqueeze(0)`) or pass `dynamic_batch=False`.",
        expected=given, received=drawn)


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
        try:
            save_file({k: _contiguous(v) for k, v in tensors.items()}, str(tmp), metadata=meta)
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001 - safetensors reports a full disk as its own error type
            raise OSError(f"writing `{path.name}` failed ({exc})") from exc
    return path


def _contiguous(arr: Any) -> Any:
    import numpy as np

    return np.ascontiguousarray(arr)


def load_vectors(path: Path) -> tuple[list[Case], list[str], list[str]]:
    """Read a vectors file back: ``(cases, input_names, output_names)``."""
    from safetensors import safe_open

    from enn_nb._safeio import escape

    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata() or {}
        if meta.get("schema") != VECTORS_SCHEMA:
            raise ExportError(f"`{path}` is not an enn_nb vectors file (schema {escape(repr(meta.get('schema')))[:80]}).")
        try:  # the listing is JSON text in the header: a damaged or forged one is the file's fault, not a bug
            listing = _json_field(meta, "cases", path)
            names = _json_field(meta, "input_names", path), _json_field(meta, "output_names", path)
            keys = set(fh.keys())
            cases = []
            for item in listing:
                key = item["key"]
                ins = [fh.get_tensor(f"{key}/in/{i}") for i in range(_count(keys, f"{key}/in/"))]
                outs = [fh.get_tensor(f"{key}/out/{j}") for j in range(_count(keys, f"{key}/out/"))]
                cases.append(Case(key, int(item["batch_size"]), bool(item["dynamic"]), ins, outs))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ExportError(f"The vectors file `{path}` is damaged: its listing does not describe its cases "
                              f"({type(exc).__name__}: {escape(str(exc))[:200]}). Export again to rewrite it.") from None
    if not all(isinstance(n, list) and all(isinstance(x, str) for x in n) for n in names):
        raise ExportError(f"The vectors file `{path}` is damaged: its input/output names are not lists of names. "
                          "Export again to rewrite it.")
    return cases, names[0], names[1]


def _json_field(meta: dict[str, str], key: str, path: Path) -> Any:
    from enn_nb._safeio import json_loads

    if key not in meta:
        raise KeyError(f"no `{key}` entry")
    return json_loads(meta[key], what=f"The `{key}` entry of the vectors file `{path}`", error=ExportError)


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
    worst: int | None = None  # the output with the largest abs error beyond tolerance (else overall)
    worst_excess = -1.0
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
            bound = atol + rtol * np.abs(np.nan_to_num(e64))
            ok = bool(np.all(diff <= bound))
            excess = float((diff - bound).max())
            if excess > worst_excess:
                worst, worst_excess = i, excess
            if not ok and problem is None:
                problem = f"output {i} differs beyond tolerance"
            passed = passed and ok
    out: dict[str, Any] = {"max_abs_err": max_abs, "max_rel_err": max_rel, "passed": passed}
    if worst is not None:
        out["worst_output"] = worst
    if problem:
        out["problem"] = problem
    return out


def check_artifact(runner: Callable[[list[Any]], list[Any]], cases: list[Case], *, dynamic: bool, atol: float,
                   rtol: float, probe_static: bool = True) -> dict[str, Any]:
    """The parity block of an artifact: its own cases, and for a static artifact every other batch it accepts.

    A static artifact (a static fallback, LiteRT) is offered the dynamic-batch cases too: a batch it runs
    is checked like any other (a wrong answer there is a mismatch), a batch it refuses is recorded with the
    runtime's reason, and ``only_batch`` says so when a single batch size could be checked.
    """
    chosen = cases_for(cases, dynamic)
    probes = [c for c in cases if c.dynamic and c.batch_size not in {x.batch_size for x in chosen}] \
        if not dynamic and probe_static else []
    refused = []
    accepted = []
    for case in probes:
        try:
            got = runner([c.copy() for c in case.inputs])
        except Exception as exc:  # noqa: BLE001 - the runtime refusing another batch is the expected answer
            refused.append({"batch_size": case.batch_size, "reason": _first_line(exc)})
            continue
        shapes = [list(getattr(g, "shape", ())) for g in got]
        wanted = [list(e.shape) for e in case.expected]
        if shapes != wanted:  # the runtime ran its fixed shapes anyway (LiteRT resizes inputs only)
            refused.append({"batch_size": case.batch_size,
                            "reason": f"runs but returns outputs of shape {shapes} where batch {case.batch_size} "
                                      f"needs {wanted}"})
        else:
            accepted.append(case)
    block = run_cases(runner, [*chosen, *accepted], atol, rtol)
    batches = sorted({c["batch_size"] for c in block["cases"]})
    block["batches"] = batches
    if refused:
        block["refused"] = refused
    if len(batches) == 1:
        others = ", ".join(str(r["batch_size"]) for r in refused)
        block["only_batch"] = (
            f"checked at batch {batches[0]} only: the artifact is static"
            + (f" and refuses batch {others} ({refused[0]['reason']})" if refused else "")
        )
    return block


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


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


def mismatch_message(backend: str, parity: dict[str, Any], output_names: Sequence[str] = ()) -> str:
    """One line for a parity failure: the figures, the tolerance, and the worst case's output and batch."""
    cases = [c for c in parity.get("cases", []) if not c.get("passed", True)] or list(parity.get("cases", []))
    tol = parity.get("tolerance") or {}
    if not cases:
        return f"`{backend}` artifact differs from the eager model (no case recorded)."
    worst = max(cases, key=lambda c: float(c.get("max_abs_err") or 0.0))
    index = worst.get("worst_output")
    if index is None:
        where = f"batch {worst.get('batch_size')}"
    else:
        name = output_names[index] if index < len(output_names) else f"#{index}"
        where = f"output `{name}` at batch {worst.get('batch_size')}"
    failing = ", ".join(str(c.get("batch_size")) for c in cases if not c.get("passed", True))
    figures = f"max abs error {float(worst.get('max_abs_err', float('nan'))):.3e}, max rel error " \
              f"{float(worst.get('max_rel_err', float('nan'))):.3e}"
    text = (f"`{backend}` artifact differs from the eager model beyond atol={tol.get('atol')} rtol={tol.get('rtol')}: "
            f"{figures} (worst: {where}")
    text += f"; batches failing: {failing})." if failing else ")."
    if worst.get("problem") and "beyond tolerance" not in str(worst["problem"]):
        text += f" {worst['problem']}."
    return text


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
    status: str  # passed | degraded (a quantized artifact over its accuracy budget) | failed | skipped
    reason: str | None
    parity: dict[str, Any]
    problems: list[str]
    accuracy: dict[str, Any] | None = None  # a quantized artifact's, re-measured against the float model
    url: str | None = None  # the artifact's URL when it was verified from object storage (``artifact``: the copy)

    def __post_init__(self) -> None:
        # a file or program problem fails the check whatever the outputs did: ``status`` never reads
        # "passed" beside ``ok=False``; the outputs' own verdict stays in ``parity.status``/``accuracy.status``
        if self.problems and self.status in ("passed", "degraded"):
            if self.accuracy is None:
                self.parity = {**self.parity, "status": self.parity.get("status") or self.status}
            self.status = "failed"

    @property
    def ok(self) -> bool:
        return self.status == "passed" and not self.problems

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["artifact"] = self.url or str(self.artifact)
        if self.url:
            out["local_copy"] = str(self.artifact)
        del out["url"]
        out["ok"] = self.ok
        return out

    def __str__(self) -> str:
        shown = self.url or self.artifact.name
        head = f"{shown} [{self.backend}]: {self.status}"
        if self.problems:  # never "passed" on a line whose command fails
            count = len(self.problems)
            checked = (f"accuracy {self.accuracy.get('status')}" if self.accuracy is not None
                       else f"parity {self.parity.get('status', self.status)}")
            kind = "problem" if self.accuracy is not None else "file problem"
            head = f"{shown} [{self.backend}]: FAILED - {count} {kind}{'s' if count != 1 else ''} ({checked})"
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
        lines += _accuracy_lines(self.accuracy)
        lines += [f"  problem: {p}" for p in self.problems]

        return "\n".join(escape(line) for line in lines)


def _accuracy_lines(figures: dict[str, Any] | None) -> list[str]:
    """A quantized artifact's re-measured and recorded errors against the float model, per output."""
    if not figures:
        return []
    recorded = {o["name"]: o for o in (figures.get("recorded") or {}).get("outputs") or []}
    budget = (figures.get("budget") or {}).get("rmse_rel")
    lines = [f"  accuracy against the float model, re-measured on {figures.get('evaluated_on')}"]
    for out in figures.get("outputs", []):
        rel = out.get("rmse_rel")
        line = (f"  output `{out['name']}`: RMSE / std {'-' if rel is None else f'{rel:.2%}'}"
                f"{'' if budget is None else f' (budget {budget:.2%})'}, max|err| {out['max_abs']:.3e}")
        if out["name"] in recorded and recorded[out["name"]].get("rmse_rel") is not None:
            rec = figures["recorded"]
            line += (f"; at export {recorded[out['name']]['rmse_rel']:.2%} on {rec.get('rows')} rows "
                     f"({rec.get('evaluated_on')})")
        lines.append(line)
    if figures.get("metric_note"):
        lines.append(f"  note: {figures['metric_note']}")
    return lines
