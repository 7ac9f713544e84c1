"""A warm parent for isolated workers: one fork server per session, with torch and the engine imported.

Starting a fresh interpreter per lane costs seconds (torch, the converters). Instead, the first
isolated export of a session starts one fork server (``multiprocessing``'s, a private instance,
so a user's own forkserver settings are untouched) that imports :data:`PRELOAD` once; every worker
of this and later exports is a ``fork()`` of it: it starts in milliseconds with everything imported.
A worker that segfaults or aborts still dies alone: the server reports its exit status (a negative
signal number, or the exit code) like ``subprocess`` would, and the next worker is forked anew.

Workers never re-run the caller's ``__main__`` (the preparation data that would is dropped), take
the caller's current environment and ``sys.path``, and write their stdout/stderr (native crash
messages included) to the log file the caller names. Nothing runs torch code in the server, so no
OpenMP/thread pool exists to be broken by ``fork()``.
"""

from __future__ import annotations

import functools
import io
import os
import sys
import threading
from collections.abc import Callable
from multiprocessing.context import ForkServerProcess
from pathlib import Path
from typing import Any

from enn_nb.engine.outlog import CHILD_LOG

# Imported once in the server; missing optional packages are skipped by the server.
PRELOAD = [
    "torch",
    "torch.export",
    "enn_nb.engine.isolate",
    "enn_nb.engine.capture",
    "enn_nb.engine.parity",
    "enn_nb.engine.backends.base",
    "onnx",
    "onnxscript",
    "torch.onnx",
    "onnxruntime",
]
#: Also imported when the export that starts the server compiles with inductor: the CPU ISA detection
#: (~1 s, ~6 s with an empty inductor cache) then runs once there instead of in every such worker.
#: It compiles and loads small probes in subprocesses; no torch thread pool starts.
PRELOAD_INDUCTOR = ["enn_nb.engine.warm_inductor"]

_lock = threading.Lock()
_server: Any = None


def server(*, inductor: bool = False) -> Any:
    """The session's fork server (created on first use; restarted by multiprocessing if it died).

    ``inductor``: the call that creates it also preloads :data:`PRELOAD_INDUCTOR` (the first
    isolated export of a session decides; a later AOTI export without it detects the ISA per worker).
    """
    global _server
    with _lock:
        if _server is None:
            from multiprocessing.forkserver import ForkServer

            _server = ForkServer()
            _server.set_forkserver_preload(PRELOAD + (PRELOAD_INDUCTOR if inductor else []))
        return _server


def supported() -> bool:
    import multiprocessing

    return os.name == "posix" and "forkserver" in multiprocessing.get_all_start_methods()


@functools.lru_cache(maxsize=1)
def _popen_class() -> type:
    from multiprocessing import context, popen_forkserver, reduction, spawn, util
    from multiprocessing import forkserver as forkserver_module

    class Popen(popen_forkserver.Popen):
        """``popen_forkserver.Popen`` on our server, without re-importing the caller's ``__main__``."""

        def _launch(self, process_obj: Any) -> None:
            prep = spawn.get_preparation_data(process_obj._name)
            prep.pop("init_main_from_path", None)  # a script without a __main__ guard must not run again
            prep.pop("init_main_from_name", None)
            buf = io.BytesIO()
            context.set_spawning_popen(self)
            try:
                reduction.dump(prep, buf)
                reduction.dump(process_obj, buf)
            finally:
                context.set_spawning_popen(None)
            self.sentinel, w = server().connect_to_new_process(self._fds)
            parent_w = os.dup(w)  # kept open: the child sees its parent die when this closes
            self.finalizer = util.Finalize(self, util.close_fds, (parent_w, self.sentinel))
            with open(w, "wb", closefd=True) as fh:
                fh.write(buf.getbuffer())
            self.pid = forkserver_module.read_signed(self.sentinel)

    return Popen


class _Process(ForkServerProcess):
    """multiprocessing's forkserver process, started through :func:`server` (pickled: module level)."""

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _popen_class()(process_obj)


class WarmProcess:
    """A forked worker with the small part of ``subprocess.Popen``'s interface the engine uses."""

    def __init__(self, target: Any, args: tuple[Any, ...]) -> None:
        self._process = _Process(target=target, args=args, name="enn-nb-export-worker", daemon=False)
        self._process.start()
        self.pid = self._process.pid

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        import subprocess

        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired("enn-nb-export-worker", timeout or 0)
        return code

    def kill(self) -> None:
        if self._process.exitcode is None:
            self._process.kill()


def child_environment() -> dict[str, str]:
    """The environment a worker (and any tool it runs) gets: the caller's, with its ``sys.path``."""
    env = dict(os.environ)
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join([*paths, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_forked(recv: Any, send: Any, log: str, env: dict[str, str], serve: Callable[[Any, Any], None]) -> None:
    """The forked worker's entry point: adopt the caller's environment, log to ``log``, then ``serve``.

    ``serve`` (the engine's task loop) is handed in, pickled by reference, so that this module does not
    import the module that starts workers through it.
    """
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(write_through=True)  # type: ignore[union-attr]
        except (AttributeError, ValueError):
            pass
    os.environ.clear()
    os.environ.update(env)

    os.environ[CHILD_LOG] = log  # its output stays in the log (crash tails) and is read back as its log
    try:
        os.setsid()  # a process group of its own: a timeout kills the tools it started too
    except OSError:
        pass
    serve(recv, send)


def start_worker(log: Path, serve: Callable[[Any, Any], None], *, inductor: bool = False) -> tuple[WarmProcess, Any, Any]:
    """Fork a worker from the warm server that runs ``serve(recv, send)`` (a module-level function);
    returns (process, connection to send to, connection to read)."""
    import multiprocessing

    server(inductor=inductor)  # the first call creates it, with the preload this export needs
    task_r, task_w = multiprocessing.Pipe(duplex=False)
    res_r, res_w = multiprocessing.Pipe(duplex=False)
    log.touch()
    try:
        proc = WarmProcess(run_forked, (task_r, res_w, str(log), child_environment(), serve))
    finally:
        task_r.close()
        res_w.close()
    return proc, task_w, res_r
