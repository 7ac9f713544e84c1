"""What the engine tracks per requested backend, and the progress events it sends."""

from __future__ import annotations

import dataclasses
import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from enn_nb.engine.report import BackendResult

if TYPE_CHECKING:
    from enn_nb.engine.backends.base import Backend

Progress = Callable[[dict[str, Any]], None]


@dataclasses.dataclass
class Plan:
    """One requested backend as the engine sees it."""

    index: int
    name: str
    backend: Backend
    options: dict[str, Any]
    tolerance: tuple[float, float] | None  # (atol, rtol); None until the reference outputs are known
    key: str | None = None
    result: BackendResult | None = None
    notes: list[str] = dataclasses.field(default_factory=list)  # this backend's own (a refused cache entry)
    quantize: str | None = None  # the mode of a quantized artifact (``name`` is then ``backend:mode``)

    def artifact_name(self, stem: str) -> str:
        """``model.onnx``, or ``model.int8.onnx`` for a quantized plan."""
        return self.backend.artifact_name(f"{stem}.{self.quantize}" if self.quantize else stem)


class Emitter:
    """Sends progress events to the user's callback, one at a time; a callback that raises warns once."""

    def __init__(self, callback: Progress | None, total: int) -> None:
        self.callback = callback
        self.total = total
        self._warned = False
        self._lock = threading.Lock()  # lanes report from several threads; callbacks see one event at a time

    def __call__(self, backend: str | None, stage: str, status: str, index: int, **extra: Any) -> None:
        if self.callback is None:
            return
        event = {"backend": backend, "stage": stage, "status": status, "index": index, "total": self.total, **extra}
        try:
            with self._lock:
                self.callback(event)
        except Exception as exc:  # a broken progress bar must not fail an export
            if not self._warned:
                self._warned = True
                warnings.warn(f"the `progress` callback raised {type(exc).__name__}: {exc}; further errors are ignored",
                              RuntimeWarning, stacklevel=2)


def cancel(plans: list[Plan], emit: Emitter) -> None:
    """Give each plan the result ``cancelled`` (the user's ``should_stop`` said so)."""
    for plan in plans:
        plan.result = BackendResult(plan.name, "cancelled", error="the export was stopped before this backend")
        emit(plan.name, "done", "cancelled", plan.index)


def stopped(should_stop: Callable[[], bool] | None) -> bool:
    return bool(should_stop and should_stop())
