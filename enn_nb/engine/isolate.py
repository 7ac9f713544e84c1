"""Run a backend's conversion and verification, in this process or in a child process that may crash.

The child is forked from the session's warm server (``engine/warm.py``: torch and the engine already
imported, reused by every lane and every export), or, where that is unavailable, a fresh interpreter
started as ``python -m enn_nb.engine.isolate``. Neither re-imports the caller's ``__main__``, so both
are safe from notebooks and from scripts without an ``if __name__ == "__main__"`` guard. It receives
what it needs once: the captured program saved as ``capture.pt2`` in the export's work folder (not
the model: unpickling it would import the model's module and run its top-level code), the example
inputs, names, spec and essentials; a save or export started in it is refused (``_reentry``). Then
it converts and verifies one backend per request. A converter that segfaults or aborts kills only
the child: the caller records ``crashed`` with the signal or exit code and the tail of the child's
log, and starts a new child for the next backend.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import enn_nb.engine.capture
import enn_nb.engine.parity
from enn_nb.engine.backends.base import Conversion, ExportJob
from enn_nb.engine.capture import Shared
from enn_nb.engine.outcome import Crash, ErrorInfo, UnitResult
from enn_nb.engine.outlog import CHILD_LOG, OutputLog, capture
from enn_nb.engine.parity import check_artifact
from enn_nb.engine.safe import _SDPA
from enn_nb.model.spec import ModelSpec

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]


@dataclasses.dataclass
class Setup:
    """What a child needs to rebuild the export job (all picklable, no torch objects)."""

    workdir: str
    stem: str
    ep_path: str | None
    module_path: str | None
    example_inputs: list[Any]  # numpy arrays
    dynamic_batch: bool
    batch_range: tuple[int, int, int]
    input_names: list[str]
    output_names: list[str]
    spec: dict[str, Any] | None
    essentials: dict[str, str]
    onnx_options: dict[str, Any]
    sdpa: str | None
    sys_path: list[str]
    signature: dict[str, Any] | None = None  # the export's ModelIO as JSON


@dataclasses.dataclass
class Task:
    """Convert (and verify) one backend."""

    name: str
    backend_ref: str  # "module:Qualname" of the backend class
    out_path: str
    options: dict[str, Any]
    verify: bool
    tolerance: tuple[float, float]
    cases: list[Any]  # parity.Case
    quantize: str | None = None  # the mode of a quantized artifact (then evaluated, not parity-checked)
    calibration: list[Any] | None = None  # batches of numpy arrays, in input order
    eval_inputs: list[Any] | None = None  # one numpy array per input: the evaluation rows


# -- the work unit, shared by both modes ---------------------------------------------------------------
def run_unit(backend: Any, job: Any, task: Task, emit: Emit) -> UnitResult:
    """Convert, then verify; never raises: an error comes back in ``UnitResult.error`` with its stage."""

    out = UnitResult(log=OutputLog())
    stage = "convert"
    try:
        emit({"backend": task.name, "stage": "convert", "status": "running"})
        started = time.perf_counter()
        out_path = Path(task.out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        # captured, not printed; emit() stays outside: a progress callback's prints belong to the user
        with capture(f"{task.name} convert") as got:
            try:
                if task.quantize:
                    from enn_nb.engine.quantize.run import convert as quantized

                    conv = quantized(backend, job, out_path, task.options, task.quantize, task.calibration or [])
                else:
                    conv = backend.convert(job, out_path, dict(task.options))
            finally:
                out.log.extend(got)
        out.timings["convert"] = time.perf_counter() - started
        artifact = Path(conv.artifact)
        if not conv.deferred and not artifact.exists():
            raise RuntimeError(f"the backend reported artifact `{artifact}` but did not write it")
        # a plain Conversion of plain values: it crosses the pipe whatever class the backend returned
        out.conversion = Conversion(
            artifact=artifact,
            inputs=list(conv.inputs),
            outputs=list(conv.outputs),
            extra_files=[Path(p) for p in conv.extra_files],
            format=dict(conv.format),
            dynamic_batch=bool(conv.dynamic_batch),
            deferred=conv.deferred,
            notes=list(conv.notes),
            details=dict(conv.details),
            embedded_metadata=bool(conv.embedded_metadata),
            path=dict(conv.path) if conv.path else None,
        )
        if conv.deferred or not task.verify:
            return out
        stage = "verify"
        reason = backend.runtime_unavailable_reason()
        if reason:
            out.parity = {"status": "skipped", "reason": reason}
            return out
        emit({"backend": task.name, "stage": "verify", "status": "running"})
        started = time.perf_counter()
        with capture(f"{task.name} verify") as got:
            try:
                runner = backend.load(artifact, dict(task.options))
                if task.quantize:  # accuracy against the float model, measured by the parent
                    from enn_nb.engine.quantize.run import evaluate

                    static = int(job.example_inputs[0].shape[0]) if job.example_inputs else 1
                    out.eval_outputs = evaluate(runner, task.eval_inputs or [], bool(conv.dynamic_batch), static)
                else:
                    out.parity = check_artifact(runner, task.cases, dynamic=bool(conv.dynamic_batch),
                                                atol=task.tolerance[0], rtol=task.tolerance[1],
                                                probe_static=backend.refuses_other_shapes)
                if conv.embedded_metadata:
                    out.metadata = backend.read_metadata(artifact)
            finally:
                out.log.extend(got)
        out.timings["verify"] = time.perf_counter() - started
    except BaseException as exc:  # a converter may raise anything; the caller decides
        if isinstance(exc, KeyboardInterrupt):
            raise
        out.stage = stage
        out.error = ErrorInfo.from_exception(exc)
    return out


def build_job(setup: Setup, shared: Any, *, real_module: bool = False) -> Any:
    """The ExportJob of a child, from its Setup and its lazily loaded shared capture.

    Its module is the captured program's (a GraphModule computing the same function): nothing of the
    user's code is imported. ``real_module`` (a backend consuming the module itself) unpickles the
    model the parent shipped, which imports its class's module here.
    """
    import torch

    module = None
    if real_module and setup.module_path:
        try:
            # our own file, written by the parent; mapped, not read: a large model costs no copy in each child
            module = torch.load(setup.module_path, weights_only=False, mmap=True)
            module.train(False)
        except Exception:  # its class cannot be imported here (defined in a notebook or a test function)
            module = None
    if module is None:
        module = shared.exported_program().module()
    return ExportJob(
        module=module,
        example_inputs=tuple(torch.from_numpy(a.copy()) for a in setup.example_inputs),
        dynamic_batch=setup.dynamic_batch,
        batch_range=tuple(setup.batch_range),  # type: ignore[arg-type]
        input_names=list(setup.input_names),
        output_names=list(setup.output_names),
        spec=ModelSpec.from_dict(setup.spec) if setup.spec is not None else None,
        essentials=dict(setup.essentials),
        workdir=Path(setup.workdir),
        get_exported_program=shared.exported_program,
        get_onnx_path=shared.onnx_path,
        signature=setup.signature,
    )


def load_class(ref: str) -> Any:
    module_name, _, qualname = ref.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def importable_reference(cls: type) -> str | None:
    """``module:Qualname`` when a fresh interpreter can import the class, else None."""
    if cls.__module__ in ("__main__", "__mp_main__") or "<locals>" in cls.__qualname__:
        return None
    return f"{cls.__module__}:{cls.__qualname__}"


# -- the child ----------------------------------------------------------------------------------------------
def _serve(recv: Any, send: Any) -> None:
    try:
        setup: Setup | None = recv.recv()
    except EOFError:
        return
    if setup is None:  # the export ended before needing this child (capture failed, cancelled)
        return
    for entry in reversed(setup.sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)

    shared = Shared(
        workdir=Path(setup.workdir),
        stem=setup.stem,
        input_names=setup.input_names,
        output_names=setup.output_names,
        essentials=setup.essentials,
        onnx_options=setup.onnx_options,
        ep_path=Path(setup.ep_path) if setup.ep_path else None,
        signature=setup.signature,
    )
    if setup.sdpa:
        _SDPA.enter(setup.sdpa)  # this child exists only for the export: held until it exits
    job, real_module = None, False
    while True:
        try:
            task = recv.recv()
        except EOFError:
            return
        if task is None:
            return

        def emit(event: dict[str, Any]) -> None:
            send.send(("event", event))

        try:
            backend = load_class(task.backend_ref)()
            wants_module = backend.consumes == "module"
            if job is None or (wants_module and not real_module):
                job, real_module = build_job(setup, shared, real_module=wants_module), wants_module
            result = run_unit(backend, job, task, emit)
        except BaseException as exc:
            result = UnitResult(stage="convert", error=ErrorInfo.from_exception(exc))
        result.shared_timings = dict(shared.timings)
        send.send(("result", result))


def main(argv: list[str]) -> int:
    from multiprocessing.connection import Connection

    # Import what every conversion needs while the parent is still capturing.
    import torch  # noqa: F401

    recv = Connection(int(argv[1]), writable=False)
    send = Connection(int(argv[2]), readable=False)
    _serve(recv, send)
    return 0


# -- the parent's handle on a child ------------------------------------------------------------------------
class Worker:
    """One child process at a time; a new one is started after a crash.

    ``start()`` spawns the child early (its interpreter and torch import overlap the parent's
    capture); ``configure(setup)`` hands it the export once the capture exists; ``run(task)``
    converts one backend.
    """

    def __init__(self, setup: Setup | None, log_dir: Path) -> None:
        self.setup = setup
        self.log_dir = log_dir
        self._proc: Any = None
        self._send: Any = None
        self._recv: Any = None
        self._count = 0
        self._log: Path | None = None
        self._configured = False
        self._starting: threading.Thread | None = None

    def start(self, *, inductor: bool = False) -> None:
        """Start the child without waiting for it: forked from the session's warm server in a
        background thread (the first one waits for the server's imports, overlapping the capture),
        or spawned as a fresh interpreter where forking is not available. ``inductor``: a lane of
        this export compiles with inductor (a server started now detects the CPU's ISA once)."""
        from enn_nb.engine import warm

        self._count += 1
        self._log = self.log_dir / f"child-{id(self):x}-{self._count}.log"
        self._configured = False
        self._proc = None
        if warm.supported() and os.environ.get("ENN_NB_WARM_WORKERS", "1") != "0":
            self._starting = threading.Thread(target=self._start_warm, args=(inductor,), name="enn-nb-worker-start",
                                              daemon=True)
            self._starting.start()
        else:
            self._start_spawned()

    def _start_warm(self, inductor: bool) -> None:
        from enn_nb.engine import warm

        try:
            self._proc, self._send, self._recv = warm.start_worker(self._log, _serve, inductor=inductor)
        except Exception as exc:  # noqa: BLE001 - no fork server here: a fresh interpreter does the same work
            log.info("warm worker unavailable (%s: %s); spawning a fresh interpreter", type(exc).__name__, exc)
            self._start_spawned()

    def _ready(self) -> None:
        """Wait until a start in progress has a process (and hand it the setup if known)."""
        starting, self._starting = self._starting, None
        if starting is not None:
            starting.join()
        if self.setup is not None and not self._configured:
            self.configure(self.setup)

    def _start_spawned(self) -> None:
        from multiprocessing.connection import Connection

        from enn_nb.engine.warm import child_environment

        task_r, task_w = os.pipe()
        res_r, res_w = os.pipe()
        env = child_environment()
        env[CHILD_LOG] = str(self._log)  # its output stays there (crash tails) and is read back as its log
        with open(self._log, "wb") as logfile:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "enn_nb.engine.isolate", str(task_r), str(res_w)],
                pass_fds=(task_r, res_w),
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                env=env,
                close_fds=True,
                start_new_session=True,  # a process group of its own: a timeout kills its helpers too
            )
        os.close(task_r)
        os.close(res_w)
        self._send = Connection(task_w, readable=False)
        self._recv = Connection(res_r, writable=False)

    def configure(self, setup: Setup) -> None:
        self.setup = setup
        if self._starting is not None:
            self._ready()  # configures once the process exists
            return
        if self._proc is not None and not self._configured:
            try:
                self._send.send(setup)
                self._configured = True
            except (BrokenPipeError, OSError):
                pass  # the child died while starting: run() sees it and reports the crash

    def run(self, task: Task, on_event: Emit, timeout_s: float | None = None) -> UnitResult:
        """Run one task in the child; a dead child gives a result whose ``crash`` says how it ended.

        A child still busy ``timeout_s`` seconds after the task was sent is killed with its process
        group (converters start processes of their own); ``crash.timeout_s`` then says so.
        """
        self._ready()
        if self._proc is None or self._proc.poll() is not None:
            self.start()
            self._ready()
        deadline = time.monotonic() + timeout_s if timeout_s else None
        try:
            self._send.send(task)
        except (BrokenPipeError, OSError):
            return self._crashed()
        try:
            while True:
                if deadline is not None and time.monotonic() > deadline:
                    self._kill_group()
                    result = self._crashed()
                    result.crash.timeout_s = timeout_s
                    return result
                try:
                    if self._recv.poll(0.1):
                        kind, payload = self._recv.recv()
                        if kind == "event":
                            on_event(payload)
                            continue
                        return payload
                except (EOFError, OSError):
                    return self._crashed()
                if self._proc.poll() is not None and not self._recv.poll(0):
                    return self._crashed()
        except KeyboardInterrupt:  # the user interrupted the kernel: stop the conversion too
            self.kill()
            raise

    def kill(self) -> None:
        """Stop the child now (an interrupted export)."""
        self._ready()
        if self._proc is not None:
            self._kill_group()
            self._close_pipes()
            self._proc = None

    def _kill_group(self) -> None:
        """SIGKILL the child and whatever it started (its own session: the group is the child's)."""
        if self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except OSError:
                self._proc.kill()
        self._proc.wait()

    def _crashed(self) -> UnitResult:
        try:
            code = self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            code = self._proc.wait()
        self._close_pipes()
        self._proc = None
        sig = None
        if code is not None and code < 0:
            try:
                sig = signal.Signals(-code).name
            except ValueError:
                sig = f"signal {-code}"
        tail = ""
        if self._log is not None and self._log.exists():
            tail = self._log.read_bytes()[-3000:].decode("utf-8", "replace")
        return UnitResult(crash=Crash(exit_code=code, signal=sig, log_tail=tail, log=str(self._log)))

    def _close_pipes(self) -> None:
        for conn in (self._send, self._recv):
            try:
                if conn is not None:
                    conn.close()
            except OSError:
                pass
        self._send = self._recv = None

    def close(self) -> None:
        self._ready()
        if self._proc is None:
            return
        try:
            self._send.send(None)
        except (BrokenPipeError, OSError):
            pass
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._close_pipes()
        self._proc = None


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
