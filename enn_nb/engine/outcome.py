"""What one backend's convert-and-verify step hands to ``finish``: picklable, so a worker process sends it back as is."""

from __future__ import annotations

import dataclasses
import traceback
from typing import Any

from enn_nb.errors import FastPathExportError, MissingDependencyError

#: The keys of an error that the sidecar records (``export.schema.json`` allows these).
SIDECAR_ERROR_KEYS = ("type", "message", "exit_code", "signal", "log_tail", "fast_path")


@dataclasses.dataclass
class ErrorInfo:
    """Why a stage failed: the exception's type and message, and what the sidecar and UI show of it."""

    type: str
    message: str
    traceback: str | None = None
    chain: str | None = None  # every message of the cause chain, where fast-path markers are looked for
    missing_package: str | None = None  # set for a MissingDependencyError
    missing_extra: str | None = None
    fast_path: str | None = None
    cause: str | None = None
    exit_code: int | None = None
    signal: str | None = None
    log_tail: str | None = None

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        info = cls(
            type=type(exc).__name__,
            message=str(exc) or type(exc).__name__,
            traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-6000:],
            chain=_chain(exc),
        )
        if isinstance(exc, MissingDependencyError):
            info.missing_package, info.missing_extra = exc.package or None, exc.extra or None
        if isinstance(exc, FastPathExportError):
            info.type, info.fast_path = "FastPathExportError", exc.fast_path
        return info

    @property
    def missing(self) -> bool:
        return self.missing_package is not None or self.missing_extra is not None

    def sidecar(self) -> dict[str, Any]:
        """The sidecar's ``error`` block (``type`` and ``message`` always, the rest when known)."""
        block = {"type": self.type, "message": self.message}
        block.update({k: getattr(self, k) for k in SIDECAR_ERROR_KEYS[2:] if getattr(self, k) is not None})
        return block


def _chain(exc: BaseException) -> str:
    parts, seen = [], set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        parts.append(f"{type(cur).__name__}: {cur}")
        cur = cur.__cause__ or cur.__context__
    return "\n".join(parts)[-8000:]


@dataclasses.dataclass
class Crash:
    """How an isolated child process died."""

    exit_code: int | None
    signal: str | None
    log_tail: str = ""
    log: str = ""
    timeout_s: float | None = None  # set when the parent killed it for running past its time limit


@dataclasses.dataclass
class UnitResult:
    """One backend's convert-and-verify outcome, in this process or sent back by a worker.

    Exactly one of: ``crash`` (the child died), ``error`` (a stage raised, ``stage`` names it), or
    ``conversion`` (with ``parity`` when verified, ``metadata`` when the artifact embeds it).
    """

    stage: str | None = None
    error: ErrorInfo | None = None
    conversion: Any = None  # a backends.base.Conversion
    parity: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    shared_timings: dict[str, float] = dataclasses.field(default_factory=dict)  # the worker's shared ONNX export
    crash: Crash | None = None
    log: Any = None  # an outlog.OutputLog: what converting and verifying warned and printed (captured)
    eval_outputs: Any = None  # a quantized artifact's (outputs, rows run) on the evaluation set
