"""One progress bar over a sweep: tasks done, running and failed (tqdm: a text bar, a widget in a notebook)."""

from __future__ import annotations

from typing import Any


class SweepBar:
    """``done/total`` with ``running N, failed M`` beside it; does nothing when ``enabled`` is False."""

    def __init__(self, total: int, desc: str, *, enabled: bool = True) -> None:
        self.total = total
        self.running = 0
        self.failed = 0
        self._bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="task", dynamic_ncols=True)
            self._show()

    def __enter__(self) -> SweepBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self.running = 0
            self._show()
            self._bar.close()

    def set_running(self, n: int) -> None:
        """``n`` tasks are running now (a negative ``n``: unknown, keep the last count)."""
        if n >= 0 and n != self.running:
            self.running = n
            self._show()

    def finished(self, failed: bool) -> None:
        self.failed += failed
        self.running = max(self.running - 1, 0)
        if self._bar is not None:
            self._show(refresh=False)
            self._bar.update(1)

    def _show(self, refresh: bool = True) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(f"running {self.running}, failed {self.failed}", refresh=refresh)
