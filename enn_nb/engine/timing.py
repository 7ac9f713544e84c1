"""Timing like a benchmark tool: pinned threads, warm-up, calls until the median settles, IQR, host load, noise warnings.

A small op timed with two intra-op threads on a busy two-core machine can take 90 ms instead of
0.005 ms (OpenMP threads spin), so a latency without its thread count and spread cannot be
compared with another. Every number made here carries both, and the host's CPU and load.

One ratio convention everywhere (tables, plots, wizard): ``speed-up = reference ms / runtime ms``,
so ``2x`` means the runtime takes half the reference's time and ``0.5x`` twice as long. The
reference of the headline is eager PyTorch inside ``export_safe`` (the computation the artifacts
hold); eager as trained (fast paths on) is the second reference.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from enn_nb.engine.sidecar import host

#: An IQR wider than this fraction of the median makes a timing too noisy to trust (a warning says so).
MAX_SPREAD = 0.25
#: The median has settled when the median of all calls and of the first half differ by at most this fraction.
SETTLED = 0.05
#: Batch sizes up to this one run on one thread by default (the usual on-device case, and the stable one).
SINGLE_THREAD_MAX_BATCH = 8


@dataclasses.dataclass
class Stat:
    """One timed call site: median and quartiles in milliseconds, and how they were made.

    Attributes:
        median_ms / q1_ms / q3_ms: the median and the quartiles of the per-call times.
        calls: calls timed (after ``warmup`` untimed ones).
        threads: the intra-op thread count the call ran with.
        batch: the batch size of the inputs.
        settled: the median of all calls and of their first half agreed within :data:`SETTLED`.
    """

    median_ms: float
    q1_ms: float
    q3_ms: float
    calls: int
    warmup: int
    threads: int | None = None
    batch: int | None = None
    settled: bool = True

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    @property
    def spread(self) -> float:
        """IQR over median (0 for a perfectly steady call)."""
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else 0.0

    @property
    def noisy(self) -> bool:
        return self.spread > MAX_SPREAD

    def cell(self, ratio: float | None = None, *, reference: str = "export-safe eager") -> str:
        """``0.123 ms ±0.01 IQR, batch 8, 1 thread (2.1x vs export-safe eager)``."""
        threads = f", {self.threads} thread{'s' if self.threads != 1 else ''}" if self.threads else ""
        text = f"{self.median_ms:.3g} ms ±{self.iqr_ms:.2g} IQR, batch {self.batch}{threads}"
        if ratio is not None:
            text += f" ({ratio_text(ratio)} vs {reference})"
        return text + (" [noisy]" if self.noisy else "")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "iqr_ms": self.iqr_ms, "spread": self.spread}


def sample_call(
    fn: Callable[[], Any],
    *,
    budget_s: float = 0.25,
    min_calls: int = 5,
    max_calls: int = 200,
    warmup: int = 2,
    clock: Callable[[], float] = time.perf_counter,
) -> Stat:
    """Time ``fn()``: ``warmup`` untimed calls, then at least ``min_calls`` timed ones for ``budget_s``.

    When the budget is spent but the median has not settled (the median of all calls and of the
    first half differ by more than :data:`SETTLED`), calls go on for up to three budgets, never
    beyond ``max_calls``. ``clock`` is injectable so that the bookkeeping can be tested.
    """
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = clock()
    while len(samples) < max_calls:
        if len(samples) >= min_calls:
            elapsed = clock() - start
            if elapsed >= budget_s and (settled(samples) or elapsed >= 3 * budget_s):
                break
        t0 = clock()
        fn()
        samples.append((clock() - t0) * 1e3)
    q1, median, q3 = quartiles(samples)
    return Stat(median, q1, q3, len(samples), warmup, settled=settled(samples))


def quartiles(samples: list[float]) -> tuple[float, float, float]:
    if len(samples) < 2:
        value = samples[0] if samples else float("nan")
        return value, value, value
    q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1, median, q3


def settled(samples: list[float]) -> bool:
    if len(samples) < 4:
        return True
    full, half = statistics.median(samples), statistics.median(samples[: len(samples) // 2])
    return full <= 0 or abs(full - half) / full <= SETTLED


def threads_for(batch: int, threads: int | None = None) -> int:
    """The intra-op threads a batch is timed with: ``threads`` if given, else 1 up to batch 8, else up to 4."""
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"`threads` is {threads!r}; give a thread count >= 1 (or None for the default).")
        return int(threads)
    return 1 if batch <= SINGLE_THREAD_MAX_BATCH else max(1, min(4, os.cpu_count() or 1))


@contextmanager
def pinned_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` inside the block, restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def host_load() -> dict[str, Any]:
    """The CPU, its core count and the 1-minute load average (None where the OS has none)."""

    try:
        load: float | None = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        load = None
    info = host()
    return {"cpu": info.get("cpu"), "cpu_count": info.get("cpu_count"), "load_1min": load}


def speedup(reference_ms: float | None, ms: float | None) -> float | None:
    """``reference_ms / ms`` (the one convention: above 1 the runtime is faster); None when either is missing."""
    return reference_ms / ms if reference_ms and ms else None


def ratio_text(ratio: float) -> str:
    """``2.1x``, ``0.48x``, ``310x``: a speed-up as a factor, whichever side is faster."""
    return f"{ratio:.0f}x" if ratio >= 100 else f"{ratio:.2g}x"


def noise_warning(label: str, stat: Stat, load: dict[str, Any]) -> str:
    """The warning shown for a timing whose IQR is too wide to trust."""
    where = f"; load {load.get('load_1min')} on {load.get('cpu_count')} CPUs" if load.get("load_1min") is not None else ""
    return (
        f"{label} at batch {stat.batch}: the IQR ({stat.iqr_ms:.3g} ms) is {stat.spread:.0%} of the median "
        f"({stat.median_ms:.3g} ms), too wide to trust{where}; rerun on a quieter machine or with fewer threads."
    )
