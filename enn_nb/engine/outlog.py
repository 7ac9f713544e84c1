"""Warnings and converter output of an export, captured instead of printed: kept in the sidecar and a log file.

torch warns about unfused FlexAttention and LSTM ``_flat_weights`` at every export of such a model,
converters print progress and C++ lines (LiteRT's XNNPACK delegate), and none of it is the user's
business unless something fails. :func:`capture` takes Python warnings, ``sys.stdout/stderr`` and the
native file descriptors 1 and 2 for the duration of a block; the engine writes what it took into each
backend's sidecar (``log``: counts and the warnings) and ``<artifact>.enn.log``, and the report shows
one line of counts. Asked for (``logging.getLogger("enn_nb.converters").setLevel(logging.DEBUG)`` or
``enn-nb export --verbose``), every captured line is logged there as well.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from enn_nb._fs import write_text

#: Captured lines are re-logged here at DEBUG: configure this logger to see them.
LOGGER = logging.getLogger("enn_nb.converters")
LOG_SUFFIX = ".enn.log"
#: Set in an isolated child's environment: the file its stdout and stderr go to.
CHILD_LOG = "ENN_NB_CHILD_LOG"
#: Warnings kept verbatim in the sidecar (all of them go to the log file).
SIDECAR_WARNINGS = 20


@dataclasses.dataclass
class OutputLog:
    """What one stage printed or warned.

    Attributes:
        warnings: ``"Category: message (file:line)"``, each distinct warning once.
        lines: printed lines (Python and native), blank lines dropped.
    """

    warnings: list[str] = dataclasses.field(default_factory=list)
    lines: list[str] = dataclasses.field(default_factory=list)

    def extend(self, other: OutputLog | dict[str, Any] | None) -> OutputLog:
        if other is None:
            return self
        data = other if isinstance(other, dict) else dataclasses.asdict(other)
        self.warnings += [w for w in data.get("warnings", []) if w not in self.warnings]
        self.lines += list(data.get("lines", []))
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def counts(self) -> str:
        """``2 warnings, 14 output lines``."""
        return f"{_plural(len(self.warnings), 'warning')}, {_plural(len(self.lines), 'output line')}"

    def sidecar_block(self, file: str | None) -> dict[str, Any]:
        """The sidecar's ``log``: counts, the log file's name and the first warnings."""
        return {"warnings": len(self.warnings), "lines": len(self.lines), "file": file,
                "warning_messages": self.warnings[:SIDECAR_WARNINGS]}  # fmt: skip

    def text(self) -> str:
        parts = [f"# {self.counts()} captured during the export"]
        if self.warnings:
            parts += ["", "## warnings", *self.warnings]
        if self.lines:
            parts += ["", "## output", *self.lines]
        return "\n".join(parts) + "\n"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@contextlib.contextmanager
def capture(stage: str = "", *, streams: bool = True) -> Iterator[OutputLog]:
    """Collect the block's Python warnings and (with ``streams``) everything it prints, fds 1/2 included.

    Process-wide while active (other threads' output is taken too): the engine uses it around
    conversions, verification and its own eager runs, never around a user's progress callback. In an
    isolated child (:data:`CHILD_LOG` set) the output stays in the child's log file, so that a crash
    or a timeout still shows its tail; the lines written there during the block are collected instead.
    """
    from enn_nb.engine.backends._edge_common import captured_output  # not at %load_ext

    log = OutputLog()
    child_log = os.environ.get(CHILD_LOG)
    with contextlib.ExitStack() as stack:
        # the user's filters stay in force: an ignored warning is not recorded either
        records = stack.enter_context(warnings.catch_warnings(record=True))
        printed = stack.enter_context(captured_output()) if streams and not child_log else None
        offset = _size(child_log) if streams and child_log else None
        try:
            yield log
        finally:
            stack.close()
            for record in records:
                text = f"{record.category.__name__}: {_first_line(record.message)} ({Path(record.filename).name}:{record.lineno})"
                if text not in log.warnings:
                    log.warnings.append(text)
            if printed is not None:
                log.lines += [line.rstrip() for line in printed.text.splitlines() if line.strip()]
            if offset is not None:
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):
                        stream.flush()
                log.lines += [line.rstrip() for line in _read_from(child_log, offset).splitlines() if line.strip()]
            prefix = f"[{stage}] " if stage else ""
            for line in [*log.warnings, *log.lines]:
                LOGGER.debug("%s%s", prefix, line)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _read_from(path: str, offset: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _first_line(message: Any) -> str:
    text = str(message).strip()
    return text.splitlines()[0] if text else type(message).__name__


def write_log(path: Path, log: OutputLog) -> None:
    """Write ``log`` to ``path`` atomically (a new file: never into one another folder links to)."""

    write_text(path, log.text())
