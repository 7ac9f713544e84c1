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
from enn_nb.errors import EnnError, ExportError, InputMismatchError
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
