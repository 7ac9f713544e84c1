"""Preloaded into the worker processes of enn_nb's LocalClusters: Ctrl-C is the client's to handle.

A terminal's Ctrl-C (and a notebook's kernel interrupt) reaches the whole process group, the workers
included. A worker that died of it would count as a crash of the task it ran; instead the client
cancels the remaining tasks, writes the index of what finished and closes the workers.
"""

from __future__ import annotations

import signal
from typing import Any


def dask_setup(worker: Any) -> None:
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread of the worker process: leave the default
        pass
