"""Runs the wizard's export in a background thread and marshals its events back to the kernel's thread.

Why a thread, and how its updates reach the widgets
---------------------------------------------------
An export takes seconds to minutes. Run in the button's click handler, it would block the kernel's
main thread: no comm message would be processed, so the progress bars would not move and Cancel
could never be clicked. So the export runs in a worker thread.

Widgets must then be updated without racing. ipykernel can *send* comm messages from any thread
(the iopub socket forwards every send to its own IO thread), but trait observers run in the thread
that sets the trait: setting widget traits from the worker would run our observers concurrently
with handlers the main thread is running for the user's clicks. Instead the worker only puts plain
events (dicts) on a ``queue.Queue`` and asks the kernel's asyncio loop to drain it
(``loop.call_soon_threadsafe`` is the one thread-safe entry point of an asyncio loop). Every trait of
:class:`~enn_nb.surfaces.notebook.wizard_state.WizardState` — hence every widget — is therefore changed on the
kernel's main thread, in order. The worker reads only one thing the main thread writes: a
``threading.Event`` set by Cancel, passed to ``enn_nb.export(should_stop=...)``.

The trade-off: while the main thread runs another long cell, the drain waits for it, so the bars
pause (the export itself goes on) and catch up when the cell ends. Setting widget traits straight
from the worker would keep them moving then, at the price of the races above; we chose order.

Outside a kernel (plain Python, pytest) there is no running loop: events wait in the queue until
:meth:`ExportRun.pump` or :meth:`ExportRun.wait` applies them on the caller's thread. The same path
carries "Save as report", which runs papermill in a worker thread too (:meth:`ExportRun.background`).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from enn_nb.engine.settings import ExportSettings
from enn_nb.engine.vocabulary import STATUSES
from enn_nb.errors import EnnError
from enn_nb.surfaces.notebook.latency import measure
from enn_nb.surfaces.notebook.wizard_state import STEPS, WizardState

#: statuses that end a backend's part of the run
TERMINAL = STATUSES


class ExportRun:
    """The wizard's run controller: one export at a time, in a worker thread.

    Args:
        state: the wizard state it reads settings from and writes progress/results into.
        export: the export function (``enn_nb.export`` unless a caller passes another one with the
            same signature).
        measure_latency: after the export, time each artifact on its runtime against eager.
    """

    def __init__(
        self, state: WizardState, export: Callable[..., Any] | None = None, *, measure_latency: bool = True
    ) -> None:
        self.state = state
        self._export = export
        self._measure = measure_latency
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[threading.Thread] = []

    # -- main thread ---------------------------------------------------------------------------
    def start(self) -> bool:
        """Start the export for the current settings; False (with an inline message) if it cannot."""
        state = self.state
        if state.running:
            return False
        for step in ("model", "targets"):
            if not state.validate_step(step):
                state.messages = {**state.messages, "run": f"Fix step {STEPS.index(step) + 1} first: "
                                  + state.messages[step]}  # fmt: skip
                return False
        model = state.selected_model()
        try:
            settings = state.export_settings()  # the same ExportSettings a magic or the CLI would make
        except EnnError as exc:
            state.messages = {**state.messages, "run": str(exc)}
            return False
        example_inputs = state.export_example_inputs()
        state.reset_run()
        self._stop.clear()
        self._capture_loop()
        state.running = True
        state.step = STEPS.index("run")
        self._log(f"exporting {_describe(model)} to {', '.join(settings.names)} in {settings.out}")
        self._thread = threading.Thread(
            target=self._work, args=(model, settings, example_inputs), name="enn-wizard-export", daemon=True
        )
        self._thread.start()
        return True

    def cancel(self) -> None:
        """Stop after the backend being converted now; the remaining ones are skipped."""
        if self.state.running and not self._stop.is_set():
            self._stop.set()
            self.state.cancel_requested = True
            self._log("cancel requested: stopping after the current backend")

    def background(
        self, fn: Callable[[], Any], *, done: Callable[[Any], None], failed: Callable[[BaseException], None]
    ) -> None:
        """Run ``fn`` in a worker thread (e.g. "Save as report"); ``done``/``failed`` run on this thread."""
        self._capture_loop()

        def work() -> None:
            try:
                value = fn()
            except BaseException as exc:  # noqa: BLE001 - shown inline by ``failed``
                self._post("call", lambda exc=exc: failed(exc))  # `exc` is unbound once the except ends
            else:
                self._post("call", lambda: done(value))

        thread = threading.Thread(target=work, name="enn-wizard-task", daemon=True)
        self._tasks.append(thread)
        thread.start()

    @property
    def alive(self) -> bool:
        """Whether the export or a background task is still running."""
        self._tasks = [t for t in self._tasks if t.is_alive()]
        return (self._thread is not None and self._thread.is_alive()) or bool(self._tasks)

    def _capture_loop(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()  # the kernel's loop, when called from a kernel
        except RuntimeError:
            self._loop = None

    def pump(self) -> int:
        """Apply the queued events to the state (on the calling thread); returns how many."""
        applied = 0
        while True:
            try:
                kind, payload = self._events.get_nowait()
            except queue.Empty:
                return applied
            self._apply(kind, payload)
            applied += 1

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run ends, applying its events meanwhile; True when it ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.alive:
            self.pump()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            time.sleep(0.02 if remaining is None else min(0.02, remaining))
        self.pump()
        return not self.state.running

    # -- worker thread -------------------------------------------------------------------------
    def _post(self, kind: str, payload: Any = None) -> None:
        self._events.put((kind, payload))
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self.pump)
            except RuntimeError:  # the loop closed (kernel shutting down): wait()/pump() still work
                self._loop = None

    def _work(self, model: Any, settings: ExportSettings, example_inputs: Any) -> None:
        handler = _ThreadLogHandler(threading.get_ident(), lambda line: self._post("log", line))
        logger = logging.getLogger("enn_nb")
        logger.addHandler(handler)
        try:
            export = self._export
            if export is None:
                from enn_nb.engine import export
            report = export(
                model,
                progress=lambda event: self._post("progress", dict(event)),
                should_stop=self._stop.is_set,
                settings=settings,
                example_inputs=example_inputs,
            )
            if self._measure and not self._stop.is_set():
                self._post("latency", self._latency(model, report, settings))
            self._post("done", report)
        except BaseException as exc:  # noqa: BLE001 - a failed run is shown on the run step, never raised
            self._post("error", (exc, traceback.format_exc()))
        finally:
            logger.removeHandler(handler)

    def _latency(self, model: Any, report: Any, settings: ExportSettings) -> Any:
        """Time each artifact against eager (the engine records no inference latency)."""

        if not any(r.status == "ok" for r in report.results):
            return None
        try:
            if isinstance(model, Path):
                from enn_nb.checkpoint import load

                model = load(model).model
            return measure(
                report,
                model,
                batch_size=settings.batch_range[1],
                options=settings.options,
                on_backend=lambda name: self._post("log", f"timing {name} against eager"),
                should_stop=self._stop.is_set,
            )
        except Exception as exc:  # latency is a bonus: the export's results stand without it
            self._post("log", f"latency not measured: {type(exc).__name__}: {exc}")
            return None

    # -- applying events (main thread) -----------------------------------------------------------
    def _log(self, line: str) -> None:
        self.state.log = [*self.state.log, line]

    def _apply(self, kind: str, payload: Any) -> None:
        state = self.state
        if kind == "call":
            payload()
        elif kind == "log":
            self._log(payload)
        elif kind == "progress":
            self._apply_progress(payload)
        elif kind == "done":
            self._finish(payload)
        elif kind == "latency":
            if payload is not None:  # Timings at the wizard's one batch size (a static artifact: at its own)
                batch = payload.batch_sizes[0]
                values = {name: next(iter(ms.values())) for name, ms in payload.latency_ms.items()}
                if batch in payload.eager_ms:
                    values["eager"] = payload.eager_ms[batch]
                if batch in payload.safe_ms:
                    values["eager_safe"] = payload.safe_ms[batch]
                state.latency_batches = {name: next(iter(ms)) for name, ms in payload.latency_ms.items()}
                state.latency = values
                for name, why in payload.skipped.items():
                    self._log(f"latency of {name} not measured: {why}")
                host = payload.host
                self._log(f"latency at batch {batch} with {payload.threads.get(batch)} intra-op thread(s) on "
                          f"{host.get('cpu')} ({host.get('cpu_count')} cores, load {host.get('load_1min')})")
                for line in payload.warnings:
                    self._log(f"latency warning: {line}")
        elif kind == "error":
            exc, text = payload
            state.run_error = f"{type(exc).__name__}: {exc}"
            self._log(f"export failed: {state.run_error}")
            if not isinstance(exc, EnnError):  # an unexpected error: its traceback helps a bug report
                self._log(text.rstrip())
            state.running = False

    def _apply_progress(self, event: dict[str, Any]) -> None:
        state = self.state
        name = str(event.get("backend") or "")
        stage = str(event.get("stage") or "")
        status = str(event.get("status") or "")
        entry = dict(state.progress.get(name, {"stage": "", "status": "", "fraction": 0.0}))
        entry["stage"] = stage or entry["stage"]
        if status in TERMINAL:
            entry["status"] = status
            entry["fraction"] = 1.0
        else:
            entry["fraction"] = max(entry["fraction"], _stage_fraction(stage))
        if name:
            state.progress = {**state.progress, name: entry}
        state.overall = sum(1 for v in state.progress.values() if v.get("status") in TERMINAL)
        where = f"[{int(event['index']) + 1}/{event['total']}] " if name and "total" in event else ""
        cached = " (cached)" if event.get("cached") else ""
        self._log(f"{where}{name or 'shared'}: {stage}{(' -> ' + status) if status else ''}{cached}")

    def _finish(self, report: Any) -> None:
        state = self.state
        # The engine marks backends it did not attempt after should_stop() as `cancelled`.
        skipped = [r.backend for r in report.results if r.status == "cancelled"]
        state.skipped = skipped
        progress = dict(state.progress)
        for result in report.results:
            entry = dict(progress.get(result.backend, {}))
            entry.update(status=result.status, fraction=0.0 if result.status == "cancelled" else 1.0)
            entry["stage"] = "cancelled" if result.status == "cancelled" else "done"
            progress[result.backend] = entry
        state.progress = progress
        state.report = report
        state.overall = len(report.results)
        self._log(
            "export finished" + (f"; skipped after Cancel: {', '.join(skipped)}" if skipped else "")
        )
        state.running = False
        state.step = STEPS.index("results")


# Rough position of each pipeline stage in a backend's progress bar; unknown stages nudge it forward.
_STAGES = {"start": 0.05, "queued": 0.0, "capture": 0.2, "convert": 0.45, "write": 0.6, "verify": 0.75,
           "parity": 0.75, "latency": 0.85, "sidecar": 0.9, "metadata": 0.9, "cache": 0.9, "done": 1.0}  # fmt: skip


def _stage_fraction(stage: str) -> float:
    return _STAGES.get(stage, 0.5)


def _describe(model: Any) -> str:
    if isinstance(model, Path):
        return f"checkpoint `{model}`"
    return f"`{type(model).__name__}`"


class _ThreadLogHandler(logging.Handler):
    """Forwards ``enn_nb`` log records emitted by one thread (the export's) to the live log."""

    def __init__(self, thread_id: int, sink: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.thread_id = thread_id
        self.sink = sink
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread_id:
            try:
                self.sink(self.format(record))
            except Exception:  # a log line must never break the export
                self.handleError(record)
