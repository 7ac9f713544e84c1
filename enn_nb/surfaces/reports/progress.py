"""A report's progress bar over backends, not notebook cells.

The export report spends nearly all its time in one cell, so papermill's bar over cells stands still
and then jumps. A template that declares ``"progress": "backends"`` in its ``enn_nb`` metadata gets
a bar over backends instead: the runner names a file in :data:`ENV`, the kernel's export appends one
JSON line per finished backend to it (:func:`kernel_callback`), and :class:`BackendBar` polls it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The environment variable that tells a report's kernel where to write progress events.
ENV = "ENN_NB_REPORT_PROGRESS"


def kernel_callback() -> Callable[[dict[str, Any]], None] | None:
    """Inside a report's kernel: an export ``progress`` callback feeding the runner's bar (None elsewhere)."""
    path = os.environ.get(ENV)
    if not path:
        return None

    def callback(event: dict[str, Any]) -> None:
        if event.get("stage") == "done" and event.get("backend"):
            line = {"backend": event["backend"], "status": event.get("status"), "total": event.get("total")}
            with open(path, "a", encoding="utf-8") as fh:  # one short line per write: read whole or not at all
                fh.write(json.dumps(line) + "\n")

    return callback


class BackendBar:
    """A tqdm bar over backends, fed from the kernel's progress file while the report runs."""

    def __init__(self, path: Path, desc: str, *, poll_s: float = 0.2) -> None:
        from tqdm.auto import tqdm

        self.path = Path(path)
        self.bar = tqdm(total=None, desc=desc, unit="backend")
        self.done: list[str] = []
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="enn-report-progress")

    def __enter__(self) -> BackendBar:
        self.path.write_text("", encoding="utf-8")
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.update()
        self.bar.close()
        self.path.unlink(missing_ok=True)

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_s):
            self.update()

    def update(self) -> None:
        """Read the events written since the last call and move the bar."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return
        for line in lines[len(self.done):]:
            try:
                event = json.loads(line)
            except ValueError:  # a line being written: read it next time
                break
            self.done.append(str(event["backend"]))
            if event.get("total") and self.bar.total != event["total"]:
                self.bar.total = int(event["total"])
            self.bar.set_postfix_str(f"{event['backend']}: {event.get('status')}")
            self.bar.update(1)
