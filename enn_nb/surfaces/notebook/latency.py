"""The wizard's latency: each artifact and the eager model timed at the wizard's batch size (one number each).

The measurement and its result type (:class:`enn_nb.engine.latency.Timings`) are the engine's, shared
with the export report; this times on inputs resampled from the export's own parity vectors (so any
``nn.Module`` works, with a spec or without).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from enn_nb.engine import latency
from enn_nb.engine.latency import Timings


def measure(
    report: Any,
    model: Any,
    *,
    batch_size: int,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    on_backend: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Timings:
    """Time every artifact of an ExportReport and the eager model, at ``batch_size`` (static artifacts at theirs).

    Args:
        report: the ExportReport (its vectors file supplies inputs of the right shape and values).
        model: the eager ``nn.Module`` that was exported.
        batch_size: batch to time at (static artifacts are timed at their own batch).
        options: the per-backend options of the export (load options).
        on_backend: called with each backend's name before it is timed (progress).
        should_stop: polled between backends; True stops timing (the rest are skipped).
    """
    inputs = latency.vector_inputs(report)
    if inputs is None:
        reason = "no parity vectors were written (verify was off), so there are no inputs to time on"
        return Timings(batch_sizes=[batch_size], skipped={r.backend: reason for r in report.results})
    return latency.measure(model, report, [batch_size], inputs, options=options, on_backend=on_backend,
                           should_stop=should_stop)  # fmt: skip
