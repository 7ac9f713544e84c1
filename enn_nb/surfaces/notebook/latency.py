"""The wizard's latency: each artifact and the eager model timed at the wizard's batch size (one number each).

The measurement itself is :mod:`enn_nb.engine.latency`, shared with the export report; this puts it
in the shape the wizard's state holds, on inputs resampled from the export's own parity vectors (so
any ``nn.Module`` works, with a spec or without).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
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
        threads: the intra-op threads everything was timed with.
        host: the CPU, its core count and the load average before/after.
        warnings: timings whose spread (IQR) is too wide to trust.
    """

    eager_ms: float | None
    safe_ms: float | None
    backends: dict[str, float]
    batches: dict[str, int]
    skipped: dict[str, str]
    batch_size: int
    threads: int | None = None
    host: dict[str, Any] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)


def measure(
    report: Any,
    model: Any,
    *,
    batch_size: int,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    on_backend: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Latency:
    """Time every artifact of an ExportReport and the eager model.

    Args:
        report: the ExportReport (its vectors file supplies inputs of the right shape and values).
        model: the eager ``nn.Module`` that was exported.
        batch_size: batch to time at (static artifacts are timed at their own batch).
        options: the per-backend options of the export (load options).
        on_backend: called with each backend's name before it is timed (progress).
        should_stop: polled between backends; True stops timing (the rest are skipped).
    """
    from enn_nb.engine import latency

    inputs = latency.vector_inputs(report)
    if inputs is None:
        reason = "no parity vectors were written (verify was off), so there are no inputs to time on"
        return Latency(None, None, {}, {}, {r.backend: reason for r in report.results}, batch_size)
    t = latency.measure(model, report, [batch_size], inputs, options=options, on_backend=on_backend,
                        should_stop=should_stop)  # fmt: skip
    return Latency(
        eager_ms=t.eager_ms.get(batch_size),
        safe_ms=t.safe_ms.get(batch_size),
        backends={name: next(iter(ms.values())) for name, ms in t.latency_ms.items()},
        batches={name: next(iter(ms)) for name, ms in t.latency_ms.items()},
        skipped=t.skipped,
        batch_size=batch_size,
        threads=t.threads.get(batch_size),
        host=t.host,
        warnings=t.warnings,
    )
