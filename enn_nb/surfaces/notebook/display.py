"""Export progress as tqdm bars in a notebook (tables are :class:`enn_nb.table.Table`)."""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from enn_nb.engine.vocabulary import STATUSES

#: Statuses after which a backend does no more work: every status of the engine is final.
FINAL_STATUSES = frozenset(STATUSES)


class TqdmProgress:
    """An ``enn_nb.export`` progress callback drawing one tqdm bar per backend.

    The engine calls it with dicts ``{"backend", "stage", "status", "index", "total"}``; a bar is
    created on a backend's first event, counts the stages finished before the current one, shows the
    stage and status, and fills and closes when the status is final. Events without a backend (the
    engine's shared capture) go to one one-step ``shared`` bar. Use it as a context manager so bars
    close on errors too.

    Args:
        stages: the stage names of one backend's run, in order, for a bar with a known length; None
            counts stages without a total.
        tqdm_factory: the tqdm class; defaults to ``tqdm.auto.tqdm`` (widgets in a kernel, text elsewhere).
        **tqdm_kwargs: passed to every bar (``file=``, ``leave=``, ``disable=``...).
    """

    def __init__(
        self,
        *,
        stages: Sequence[str] | None = None,
        tqdm_factory: Callable[..., Any] | None = None,
        **tqdm_kwargs: Any,
    ) -> None:
        self.stages = list(stages) if stages else None
        self._factory = tqdm_factory
        self._kwargs = {"leave": True, **tqdm_kwargs}
        self.bars: dict[str, Any] = {}
        self._handles: dict[str, Any] = {}
        self._seen: dict[str, list[str]] = {}
        self.events: list[dict[str, Any]] = []
        self.final: dict[str, str] = {}

    def _make(self, backend: str | None, index: Any, total: Any) -> Any:
        factory = self._factory
        if factory is None:
            from tqdm.auto import tqdm as factory  # tqdm.auto picks widgets only inside a kernel
        if backend is None:  # the engine's shared steps (the one torch.export capture)
            label = "shared"
        elif isinstance(index, int) and isinstance(total, int) and total > 0:
            label = f"[{index + 1}/{total}] {backend}"
        else:
            label = backend
        total = 1 if backend is None else (len(self.stages) if self.stages else None)
        if not _is_widget_tqdm(factory):
            return factory(total=total, desc=label, unit="stage", **self._kwargs)
        # A widget bar's text/plain form (what nbconvert HTML and GitHub show) is frozen when it is
        # displayed, at 0%. Display it ourselves, under an id, so that _finish can refresh that text.
        from IPython.display import display

        bar = factory(total=total, desc=label, unit="stage", display=False, **self._kwargs)
        self._handles[label] = display(bar.container, display_id=True)
        bar._enn_label = label
        return bar

    def _finish(self, bar: Any) -> None:
        bar.close()
        handle = self._handles.pop(getattr(bar, "_enn_label", None), None)
        if handle is not None:
            # A finished bar has nothing left to animate: replace the widget by its final state as
            # HTML and text, which every renderer shows (a widget without saved state renders as
            # nothing in nbconvert HTML, and its text/plain was frozen at 0%).
            text = repr(bar.container)
            total = bar.total if bar.total else max(bar.n, 1)
            handle.update({
                "text/plain": text,
                "text/html": f"<div class='enn-nb-progress'><progress value='{bar.n}' max='{total}'></progress> "
                             f"<code>{html.escape(text)}</code></div>",
            }, raw=True)  # fmt: skip
            bar.container.close()  # its view is gone: free the widget

    def __call__(self, event: Mapping[str, Any]) -> None:
        event = dict(event)
        self.events.append(event)
        name = event.get("backend")
        backend = str(name) if name else "shared"
        stage = event.get("stage")
        status = event.get("status")
        bar = self.bars.get(backend)
        if bar is None:
            bar = self.bars[backend] = self._make(name or None, event.get("index"), event.get("total"))
            self._seen[backend] = []
        seen = self._seen[backend]
        if stage and stage not in seen:
            seen.append(stage)
            # a bar counts finished stages: starting stage k means k stages are done
            done = self.stages.index(stage) if self.stages and stage in self.stages and name else len(seen) - 1
            if done > bar.n and (bar.total is None or done <= bar.total):
                bar.update(done - bar.n)
        cached = "(cached)" if event.get("cached") else ""
        bar.set_postfix_str(" ".join(str(p) for p in (stage, status, cached) if p), refresh=True)
        if status in FINAL_STATUSES and backend not in self.final:
            self.final[backend] = str(status)
            if bar.total is not None and bar.n < bar.total:
                bar.update(bar.total - bar.n)
            self._finish(bar)

    def close(self) -> None:
        for backend, bar in self.bars.items():
            if backend not in self.final:
                self._finish(bar)

    def __enter__(self) -> TqdmProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_widget_tqdm(factory: Any) -> bool:
    """Whether ``factory`` is tqdm's ipywidgets bar (what ``tqdm.auto`` picks inside a kernel)."""
    try:
        from tqdm.notebook import tqdm_notebook
    except ImportError:
        return False
    return isinstance(factory, type) and issubclass(factory, tqdm_notebook)
