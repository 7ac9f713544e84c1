"""Latency of each exported artifact on its runtime against the eager model, on the export's own inputs.

The export engine records conversion and parity timings but not inference latency, so the wizard
measures it after the export: each artifact is loaded with its backend's ``load`` (the runner parity
used) and timed on inputs drawn like the parity vectors, next to the eager model on the same inputs.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class Latency:
    """Median milliseconds per call.

    Attributes:
        eager_ms: the eager model as the user has it (fast paths on) at ``batch_size`` (None when it
            could not run).
        safe_ms: the same model inside ``export_safe`` (the graph the artifacts were made from), so
            the gap a fast path makes is told apart from the gap a runtime makes.
        backends: ``{backend: ms}`` for each artifact that could run here.
        batches: ``{backend: batch}``, the batch each artifact was timed at (static artifacts accept
            only their capture batch).
        skipped: ``{backend: why}`` for artifacts not timed (no runtime here, not written...).
        batch_size: the batch the eager model was timed at.
    """

    eager_ms: float | None
    safe_ms: float | None
    backends: dict[str, float]
    batches: dict[str, int]
    skipped: dict[str, str]
    batch_size: int


def time_call(fn: Callable[[], Any], *, budget_s: float = 0.25, min_calls: int = 5, max_calls: int = 200,
              warmup: int = 2) -> float:  # fmt: skip
    """Median milliseconds of ``fn()`` over as many calls as fit in ``budget_s`` (within the bounds)."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_calls and (len(samples) < min_calls or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def measure(
    report: Any,
    model: Any,
    *,
    batch_size: int,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    on_backend: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Latency:
    """Time every ``ok`` artifact of an ExportReport and the eager model.

    Args:
        report: the ExportReport (its vectors file supplies inputs of the right shape and values).
        model: the eager ``nn.Module`` that was exported.
        batch_size: batch to time at (static artifacts are timed at their own batch).
        options: the per-backend options of the export (load options).
        on_backend: called with each backend's name before it is timed (progress).
        should_stop: polled between backends; True stops timing (the rest are skipped).
    """
    import numpy as np
    import torch

    from enn_nb.export import parity
    from enn_nb.export.registry import get_backend

    options = options or {}
    skipped: dict[str, str] = {}
    timed: dict[str, float] = {}
    batches: dict[str, int] = {}
    example = _example(report)
    if example is None:
        reason = "no parity vectors were written (verify was off), so there are no inputs to time on"
        return Latency(None, None, {}, {}, {r.backend: reason for r in report.results}, batch_size)
    inputs_at: dict[int, list[np.ndarray]] = {}

    def inputs(batch: int) -> list[np.ndarray]:
        if batch not in inputs_at:
            tensors = parity.resample_inputs([torch.from_numpy(a) for a in example], batch, seed=batch)
            inputs_at[batch] = [t.numpy() for t in tensors]
        return inputs_at[batch]

    for result in report.results:
        if should_stop is not None and should_stop():
            skipped[result.backend] = "cancelled"
            continue
        if result.status != "ok" or result.artifact is None:
            skipped[result.backend] = f"status `{result.status}`"
            continue
        backend = get_backend(result.backend)
        reason = backend.runtime_unavailable_reason()
        if reason:
            skipped[result.backend] = reason
            continue
        if on_backend is not None:
            on_backend(result.backend)
        batch = batch_size if result.dynamic_batch else _static_batch(result, example)
        try:
            load_options = {**backend.default_options, **dict(options.get(result.backend, {}))}
            runner = backend.load(Path(result.artifact), load_options)
            feed = inputs(batch)
            timed[result.backend] = time_call(lambda: runner(feed))
            batches[result.backend] = batch
        except Exception as exc:  # one runtime failing to time must not hide the others
            skipped[result.backend] = f"{type(exc).__name__}: {exc}"

    from enn_nb.export.safe import export_safe

    feed_t = [torch.from_numpy(a) for a in inputs(batch_size)]
    with parity.eval_only(model), torch.no_grad():
        eager_ms = _time_model(model, feed_t, skipped, "eager")
        with export_safe(model) as safe:
            safe_ms = _time_model(safe.model, feed_t, skipped, "eager (export-safe)")
    return Latency(eager_ms, safe_ms, timed, batches, skipped, batch_size)


def _time_model(model: Any, feed: list[Any], skipped: dict[str, str], label: str) -> float | None:
    # The parity reference's call: forward_export (raw features in) when the model has one.
    call = model.forward_export if callable(getattr(model, "forward_export", None)) else model
    try:
        return time_call(lambda: call(*feed))
    except Exception as exc:  # a model that cannot run at this batch still leaves the runtimes' numbers
        skipped[label] = f"{type(exc).__name__}: {exc}"
        return None


def _example(report: Any) -> list[Any] | None:
    """The inputs of the parity case with the largest batch in the report's vectors file."""
    vectors = getattr(report, "vectors", None)
    if vectors is None or not Path(vectors).is_file():
        return None
    from enn_nb.export.parity import load_vectors

    cases, _, _ = load_vectors(Path(vectors))
    if not cases:
        return None
    return list(max(cases, key=lambda c: c.batch_size).inputs)


def _static_batch(result: Any, example: list[Any]) -> int:
    for info in result.inputs or []:
        shape = info.get("shape") if isinstance(info, Mapping) else None
        if shape and isinstance(shape[0], int):
            return int(shape[0])
    return int(example[0].shape[0])
