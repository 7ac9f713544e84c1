"""Inference latency of exported artifacts on their runtimes next to eager PyTorch, with an optional parity check.

The engine records conversion and parity timings, not inference latency. This measures it after an
export: each artifact that exists (``ok`` or ``mismatch``) is loaded with its backend's ``load`` (the
runner the export's parity used) and called on the same inputs as the eager model, at every batch
size its artifact accepts. The wizard times one batch size; the export report several, and also
compares each runtime's outputs with eager PyTorch there (``compare=True``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb.engine.outlog import OutputLog, capture
from enn_nb.engine.parity import compare, load_vectors
from enn_nb.engine.registry import get_backend
from enn_nb.engine.safe import export_safe
from enn_nb.engine.timing import (
    Stat,
    busy_note,
    host_load,
    pinned_threads,
    sample_call,
    speedup,
    threads_for,
    wait_until_quiet,
)
from enn_nb.model.examples import default_example_inputs, eval_only, resample_inputs
from enn_nb.model.signature import draw

#: A timing still too noisy is measured again, up to this many rounds in all...
MAX_ROUNDS = 3
#: ...while the whole measurement has run for less than this (seconds): then the note says "machine busy".
ROUNDS_CAP_S = 60.0

if TYPE_CHECKING:
    import torch

    from enn_nb.engine.report import BackendResult, ExportReport
    from enn_nb.model.spec import ModelSpec

#: The labels of the two eager references in :attr:`Timings.stats` (the headline ratio is to ``SAFE``).
EAGER, SAFE = "eager", "eager (export-safe)"

#: Statuses whose artifact was written and runs (a ``mismatch`` artifact runs; its outputs are off).
MEASURED_STATUSES = ("ok", "mismatch", "degraded")

#: ``inputs(batch)`` -> the model's input tensors at that batch size.
Inputs = Callable[[int], Sequence["torch.Tensor"]]


@dataclasses.dataclass
class Timings:
    """Median milliseconds per call of each runtime and of eager PyTorch, per batch size.

    The one timing result: :func:`measure` makes it, the export report's sections
    (:func:`enn_nb.surfaces.reports.sections.measure`, which adds its own parity cases and notes) and
    the wizard read it.

    Attributes:
        batch_sizes: the batch sizes asked for (sorted).
        eager_ms: ``{batch: ms}`` of the eager model as the user has it (fast paths on, eval mode).
        safe_ms: ``{batch: ms}`` of the same model inside ``export_safe`` (what the artifacts compute),
            so the gap a fast path makes is told apart from the gap a runtime makes.
        latency_ms: ``{backend: {batch: ms}}``.
        errors: ``{backend: {batch: max abs error vs eager}}`` (with ``compare`` only).
        mismatches: ``{backend: [reason, ...]}``, batch sizes beyond the backend's tolerance (``compare``).
        static: ``{backend: batch}`` for artifacts that accept only their capture batch (timed there only).
        skipped: ``{backend: why}`` for artifacts not (fully) timed, and ``"eager"`` /
            ``"eager (export-safe)"`` when the model itself could not be timed.
        stats: ``{label: {batch: Stat}}`` (median, IQR, calls, threads) for ``"eager"``,
            ``"eager (export-safe)"`` and each backend.
        threads: ``{batch: intra-op threads}`` every runtime and eager ran with at that batch size.
        host: the CPU, its core count and the load average before and after timing.
        warnings: one line (``not measured: machine busy``) when some timings stayed too noisy to trust
            after :data:`MAX_ROUNDS` rounds; their stats are kept (``Stat.noisy``) and reports show no figure for them.
        log: what loading the runtimes printed or warned (LiteRT's XNNPACK line...), captured.
        notes: ``{backend: why it was not (fully) measured}``, the sentence a report shows (filled by
            the export report's sections).
    """

    batch_sizes: list[int] = dataclasses.field(default_factory=list)
    eager_ms: dict[int, float] = dataclasses.field(default_factory=dict)
    safe_ms: dict[int, float] = dataclasses.field(default_factory=dict)
    latency_ms: dict[str, dict[int, float]] = dataclasses.field(default_factory=dict)
    errors: dict[str, dict[int, float]] = dataclasses.field(default_factory=dict)
    mismatches: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    static: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    stats: dict[str, dict[int, Stat]] = dataclasses.field(default_factory=dict)
    threads: dict[int, int] = dataclasses.field(default_factory=dict)
    host: dict[str, Any] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    log: OutputLog = dataclasses.field(default_factory=OutputLog)
    notes: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def eager_safe_ms(self) -> dict[int, float]:
        """:attr:`safe_ms` under the name the export report's ``Measurements`` gave it."""
        return self.safe_ms

    @eager_safe_ms.setter
    def eager_safe_ms(self, value: dict[int, float]) -> None:
        self.safe_ms = value

    def speedup(self, label: str, batch: int) -> float | None:
        """The headline ratio: export-safe eager ms / ``label``'s ms at ``batch`` (above 1: faster)."""
        ms = self.safe_ms.get(batch) if label == SAFE else self.latency_ms.get(label, {}).get(batch)
        return speedup(self.safe_ms.get(batch), ms)

    def speedup_vs_trained(self, backend: str, batch: int) -> float | None:
        """The second reference: eager as trained (fast paths on) / the runtime."""
        return speedup(self.eager_ms.get(batch), self.latency_ms.get(backend, {}).get(batch))

    def host_line(self) -> str:
        """``threads: 1 (batch 1, 8), 2 (batch 64) · CPU ... (2 cores) · load 1.4 -> 1.9``."""
        by: dict[int, list[int]] = {}
        for batch, count in sorted(self.threads.items()):
            by.setdefault(count, []).append(batch)
        threads = ", ".join(f"{n} (batch {', '.join(map(str, b))})" for n, b in by.items())
        host = self.host
        return (f"intra-op threads: {threads or '-'} · CPU: {host.get('cpu')} ({host.get('cpu_count')} cores) · "
                f"load average: {host.get('load_1min')} before, {host.get('load_1min_after')} after")


def time_call(fn: Callable[[], Any], *, budget_s: float = 0.25, min_calls: int = 5, max_calls: int = 200,
              warmup: int = 2) -> float:  # fmt: skip
    """Median milliseconds of ``fn()`` (:func:`enn_nb.engine.timing.sample_call` has the spread too)."""
    return sample_call(fn, budget_s=budget_s, min_calls=min_calls, max_calls=max_calls, warmup=warmup).median_ms


def spec_inputs(spec: ModelSpec) -> Inputs:
    """Inputs drawn from the model's spec (scaler statistics, valid category codes), one seed per batch."""

    if spec.inputs is not None:  # a declared signature: its dtypes, symbolic dims and category codes

        return lambda batch: draw(spec.inputs, batch=batch, seed=1000 + batch)
    return lambda batch: default_example_inputs(spec, spec.in_dim, spec.feature_dtype, batch=batch, seed=1000 + batch)


def vector_inputs(report: ExportReport) -> Inputs | None:
    """Inputs resampled from the export's own parity vectors (any model, spec or not); None without vectors."""
    vectors = getattr(report, "vectors", None)
    if vectors is None or not Path(vectors).is_file():
        return None

    cases, _, _ = load_vectors(Path(vectors))
    if not cases:
        return None
    import torch

    # the parity case with the largest batch gives the most rows to draw from
    example = [torch.from_numpy(a) for a in max(cases, key=lambda c: c.batch_size).inputs]
    return lambda batch: resample_inputs(example, batch, seed=batch)


def static_batch(result: BackendResult) -> int | None:
    """The one batch size a static artifact accepts (its first input's leading dimension); None if dynamic."""
    if result.dynamic_batch or not result.inputs:
        return None
    first = (result.inputs[0].get("shape") or [None])[0]
    return int(first) if isinstance(first, int) else None


def measure(
    model: Any,
    report: ExportReport,
    batch_sizes: Sequence[int],
    inputs: Inputs,
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    compare: bool = False,
    budget_s: float = 0.25,
    min_calls: int = 5,
    max_calls: int = 200,
    on_backend: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    threads: int | None = None,
    clock: Callable[[], float] | None = None,
    quiet_s: float = 20.0,
) -> Timings:
    """Time every artifact of an export in its runtime and the eager model on the same inputs.

    A dynamic-batch artifact is timed at each of ``batch_sizes``; a static one at its own batch only
    (with ``compare``, the eager model runs there too, as its reference). Each time is the median over
    calls made for about ``budget_s`` after two warm-up calls.

    Args:
        model: the eager ``nn.Module`` that was exported (fast paths on, as trained).
        report: what ``enn_nb.export`` returned for it.
        batch_sizes: batch sizes to time at.
        inputs: the model's inputs at a batch size (:func:`spec_inputs`, :func:`vector_inputs`).
        options: per-backend load options over the export's own (read from each sidecar).
        compare: also check each runtime's outputs against eager within the backend's tolerance. The
            eager outputs are then the reference, so an eager model or runtime that raises raises here;
            without it, what raises is recorded in ``skipped`` and the rest is still timed.
        budget_s, min_calls, max_calls: the timer's bounds per measurement.
        threads: intra-op threads for torch and for runtimes that take a thread count (onnxruntime,
            LiteRT); default 1 up to batch 8, else up to 4 (:func:`enn_nb.engine.timing.threads_for`).
        clock: the timer (default ``time.perf_counter``), injectable for tests of the bookkeeping.
        quiet_s: wait up to this long first for the processes this one started (the export's workers,
            compile workers) to go idle (0: do not wait); the wait is recorded in ``host``.
        on_backend: called with each backend's name before it is timed (progress).
        should_stop: polled between backends; True stops timing (the rest are ``cancelled``).
    """
    import torch

    # the export's own workers may still be finishing (sidecars, compile workers): time on a quiet machine
    quiet = wait_until_quiet(cap_s=quiet_s) if quiet_s > 0 else {"waited_s": 0.0, "workers_quiet": None}
    out = Timings(batch_sizes=sorted(set(batch_sizes)), host={**host_load(), **quiet})
    started = time.monotonic()

    def timed(fn: Callable[[], Any], label: str, batch: int) -> float:
        count = out.threads.setdefault(batch, threads_for(batch, threads))
        extra = {"clock": clock} if clock is not None else {}
        with pinned_threads(count):
            stat = sample_call(fn, budget_s=budget_s, min_calls=min_calls, max_calls=max_calls, **extra)
            rounds = 1
            # a burst of load from elsewhere passes: measure again, keep the steadiest round
            while stat.noisy and rounds < MAX_ROUNDS and time.monotonic() - started < ROUNDS_CAP_S:
                again = sample_call(fn, budget_s=budget_s, min_calls=min_calls, max_calls=max_calls, **extra)
                rounds += 1
                stat = again if again.spread < stat.spread else stat
        stat.threads, stat.batch, stat.rounds = count, batch, rounds
        out.stats.setdefault(label, {})[batch] = stat
        return stat.median_ms

    sizes = sorted({int(b) for b in batch_sizes})
    feeds: dict[int, list[Any]] = {}
    references: dict[int, list[Any]] = {}

    def feed(batch: int) -> list[Any]:
        if batch not in feeds:
            feeds[batch] = [t.numpy() for t in inputs(batch)]
        return feeds[batch]

    def eager(batch: int) -> list[Any]:
        """The eager outputs at ``batch`` (timed on first use)."""
        if batch not in references:
            tensors = [torch.from_numpy(a) for a in feed(batch)]
            call = _forward(model)
            with eval_only(model), torch.no_grad(), _quiet_flex():
                references[batch] = _numpy(call(*tensors))
                out.eager_ms[batch] = timed(lambda: call(*tensors), EAGER, batch)
        return references[batch]

    for b in sizes:
        _attempt(compare, out.skipped, EAGER, lambda b=b: eager(b))
    with eval_only(model), torch.no_grad(), _quiet_flex(), export_safe(model) as safe:
        safe_call = _forward(safe.model)
        for b in sizes:
            tensors = [torch.from_numpy(a) for a in feed(b)]
            ms = _attempt(compare, out.skipped, SAFE, lambda t=tensors, b=b: timed(lambda: safe_call(*t), SAFE, b))
            if ms is not None:
                out.safe_ms[b] = ms

    for r in report.results:
        if should_stop is not None and should_stop():
            out.skipped[r.backend] = "cancelled"
            continue
        if r.status not in MEASURED_STATUSES or r.artifact is None:
            out.skipped[r.backend] = f"status `{r.status}`"
            continue
        backend = get_backend(r.backend)
        reason = backend.runtime_unavailable_reason()
        if reason:
            out.skipped[r.backend] = reason
            continue
        if on_backend is not None:
            on_backend(r.backend)
        given = dict((options or {}).get(r.backend, {}))
        load_options = {**backend.default_options, **sidecar_options(r.sidecar), **given}
        fixed = static_batch(r)
        if fixed is not None:
            out.static[r.backend] = fixed
        tol = r.parity.get("tolerance") or {}
        atol = float(tol.get("atol", backend.default_tolerance[0]))
        rtol = float(tol.get("rtol", backend.default_tolerance[1]))
        runners: dict[int, Any] = {}  # one per thread count: runtimes fix their threads when loading
        for b in sizes if fixed is None else [fixed]:
            count = out.threads.setdefault(b, threads_for(b, threads))
            if count not in runners:
                option = getattr(backend, "thread_option", None)
                try:
                    with capture(f"{r.backend} load") as got:  # runtimes print when loading and on first run
                        runner = backend.load(Path(r.artifact), {**load_options, **({option: count} if option else {})})
                        with contextlib.suppress(Exception):  # a failing call fails again below, recorded there
                            runner([a.copy() for a in feed(b)])
                    out.log.extend(got)
                    runners[count] = runner
                except Exception as exc:  # the artifact passed parity in the export's child process; say why not here
                    out.skipped[r.backend] = f"loading it here raised {type(exc).__name__}: {exc}"
                    break
            runner = runners[count]
            # a fresh copy per call: a runtime may write into its input buffers
            run = lambda a=feed(b), runner=runner: runner([x.copy() for x in a])  # noqa: E731
            if compare and not r.quantize:  # a quantized artifact is held to its accuracy budget, not to atol/rtol
                err, passed = _compare(run(), eager(b), atol, rtol)
                out.errors.setdefault(r.backend, {})[b] = err
                if not passed:
                    out.mismatches.setdefault(r.backend, []).append(
                        f"batch {b}: max abs error {err:.3g} beyond atol={atol:g}, rtol={rtol:g}"
                    )
            ms = _attempt(compare, out.skipped, r.backend, lambda run=run, b=b: timed(run, r.backend, b))
            if ms is None:
                break
            out.latency_ms.setdefault(r.backend, {})[b] = ms
    out.host["load_1min_after"] = host_load()["load_1min"]
    note = busy_note([st for by in out.stats.values() for st in by.values()], out.host)
    if note:
        out.warnings.append(note)
    return out


def sidecar_options(path: str | Path | None) -> dict[str, Any]:
    """The options an artifact was made with, from its sidecar (empty when there is none)."""
    if not path:
        return {}
    try:
        return dict(json.loads(Path(path).read_text(encoding="utf-8")).get("options") or {})
    except (OSError, ValueError):
        return {}


def _attempt(strict: bool, skipped: dict[str, str], label: str, fn: Callable[[], Any]) -> Any:
    """``fn()``; unless ``strict``, an exception goes to ``skipped[label]`` and gives None.

    One runtime (or the model at one batch size) failing to run must not hide the other numbers.
    """
    if strict:
        return fn()
    try:
        return fn()
    except Exception as exc:
        skipped[label] = f"{type(exc).__name__}: {exc}"
        return None


def _forward(model: Any) -> Callable[..., Any]:
    # The parity reference's call: forward_export (raw features in) when the model has one.
    return model.forward_export if callable(getattr(model, "forward_export", None)) else model


def _numpy(out: Any) -> list[Any]:
    return [t.detach().numpy() for t in (out if isinstance(out, (list, tuple)) else [out])]


@contextmanager
def _quiet_flex() -> Iterator[None]:
    # Unfused FlexAttention on CPU warns at every call; it is the model as trained, timed as such.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile")
        yield


def _compare(got: Sequence[Any], expected: Sequence[Any], atol: float, rtol: float) -> tuple[float, bool]:
    row = compare(got, expected, atol, rtol)
    err = float(row["max_abs_err"])
    return (err if math.isfinite(err) else float("inf")), bool(row["passed"])
