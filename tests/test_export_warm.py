"""The warm export engine: isolated workers are forked from one pre-imported server, reused across exports."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import enn_nb
from enn_nb.engine import warm
from enn_nb.engine.isolate import Setup, Task, Worker

from tests.fixtures.models import TinyMLP

pytestmark = [pytest.mark.multiprocess, pytest.mark.skipif(not warm.supported(), reason="needs fork")]


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def _started(tmp_path: Path) -> Worker:
    worker = Worker(None, tmp_path)
    worker.start()
    worker._ready()
    return worker


@pytest.mark.slow
def test_workers_are_forks_of_one_server_that_already_imported_torch(tmp_path):
    first = _started(tmp_path)
    server_pid = warm.server()._forkserver_pid
    assert server_pid not in (None, os.getpid())
    assert _parent_of(first._proc.pid) == server_pid
    assert "libtorch_cpu" in _maps(first._proc.pid)  # mapped before the worker was asked to do anything
    first.close()
    assert first._proc is None

    # an export in between forks its workers from the same server, which outlives it
    report = enn_nb.export(TinyMLP(), "pt2", out_dir=tmp_path / "out", example_inputs=torch.randn(2, 6), cache=False)
    assert report["pt2"].status == "ok"
    assert not any("ran in this process" in n for n in report["pt2"].notes)
    second = _started(tmp_path)
    assert warm.server()._forkserver_pid == server_pid and _parent_of(second._proc.pid) == server_pid
    second.close()


@pytest.mark.slow
def test_a_hung_worker_is_killed_and_reported_like_a_crash(tmp_path):
    ep = torch.export.export(TinyMLP().eval(), (torch.randn(2, 6),))
    torch.export.save(ep, str(tmp_path / "capture.pt2"))
    setup = Setup(
        workdir=str(tmp_path), stem="m", ep_path=str(tmp_path / "capture.pt2"), module_path=None,
        example_inputs=[np.zeros((2, 6), np.float32)], dynamic_batch=False, batch_range=(1, 2, 4),
        input_names=["x"], output_names=["y"], spec=None, essentials={}, onnx_options={}, sdpa=None,
        sys_path=[p for p in sys.path if p],
    )
    task = Task(name="hang", backend_ref="tests.fixtures.backends:HangBackend", out_path=str(tmp_path / "m.hang"),
                options={}, verify=False, tolerance=(1e-5, 1e-5), cases=[])
    worker = Worker(setup, tmp_path)
    worker.start()
    outcome: list = []
    runner = threading.Thread(target=lambda: outcome.append(worker.run(task, lambda event: None)))
    runner.start()
    deadline = time.monotonic() + 120
    while "hang backend: stuck" not in (worker._log.read_text() if worker._log.exists() else ""):
        assert time.monotonic() < deadline, "the hang backend never started"
        time.sleep(0.05)
    pid = worker._proc.pid
    worker._proc.kill()  # what a watchdog does to a lane past its time
    runner.join(60)
    assert not runner.is_alive()
    crash = outcome[0].crash
    assert crash is not None and crash.signal == "SIGKILL" and crash.exit_code == -9
    assert f"stuck in process {pid}" in crash.log_tail
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists():  # the fork server reaps its killed child (SIGCHLD): gone, not a zombie
        assert time.monotonic() < deadline, Path(f"/proc/{pid}/status").read_text()
        time.sleep(0.05)
    # the server survives its child's death and forks the next worker
    again = _started(tmp_path)
    assert _parent_of(again._proc.pid) == warm.server()._forkserver_pid
    again.close()


def test_a_script_without_a_main_guard_is_not_run_again(tmp_path):
    """Workers drop the preparation step that would re-import the caller's ``__main__``."""
    marker = tmp_path / "ran"
    script = tmp_path / "script.py"
    script.write_text(
        "import pathlib, torch, enn_nb\n"
        "from tests.fixtures.models import TinyMLP\n"
        f"pathlib.Path({str(marker)!r}).open('a').write('x')\n"
        f"r = enn_nb.export(TinyMLP(), 'pt2', out_dir={str(tmp_path / 'o')!r}, example_inputs=torch.randn(2, 6), cache=False)\n"
        "print(r['pt2'].status)\n"
    )
    import subprocess

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), *sys.path]))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "ok"
    assert marker.read_text() == "x"  # once: the worker did not execute the script again


@pytest.mark.slow
@pytest.mark.parametrize("inductor", [True, False])
def test_a_server_started_for_an_inductor_export_detects_the_cpu_isa_before_forking(tmp_path, monkeypatch, inductor):
    """The detection compiles a probe per vector ISA into the inductor cache: a server started for an
    AOTI export has done it before its first worker exists (every worker inherits the answer); one
    started for other backends has not (an ONNX-only export does not wait for it)."""
    cache = tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    monkeypatch.setattr(warm, "_server", None)  # a server of this test's own, started with this env
    worker = Worker(None, tmp_path)
    worker.start(inductor=inductor)
    try:
        worker._ready()
        probes = list(cache.rglob("*.so")) if cache.exists() else []
        assert bool(probes) is inductor, probes
    finally:
        worker.close()
        server = warm._server
        if server is not None and hasattr(server, "_stop"):
            server._stop()


def test_aoti_precompiled_headers_go_to_the_inductor_cache(tmp_path, monkeypatch):
    from torch._inductor import codecache

    from enn_nb.engine import inductor

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setattr(codecache, "_HEADER_DIR", codecache._HEADER_DIR)
    monkeypatch.setattr(codecache, "_HEADER_LOCK_DIR", codecache._HEADER_LOCK_DIR)
    assert inductor.headers_in_cache() == tmp_path / "inductor" / "precompiled_headers"
    assert codecache._HEADER_DIR == str(tmp_path / "inductor" / "precompiled_headers")
    assert codecache._HEADER_LOCK_DIR == str(tmp_path / "inductor" / "precompiled_headers" / "locks")
    monkeypatch.delattr(codecache, "_HEADER_DIR")  # a torch that keeps them elsewhere: headers stay off
    assert inductor.headers_in_cache() is None


def test_a_failing_isa_detection_is_only_logged(monkeypatch):
    from torch._inductor import cpu_vec_isa

    from enn_nb.engine import inductor

    def broken() -> list:
        raise RuntimeError("no compiler")

    logged: list[str] = []
    monkeypatch.setattr(cpu_vec_isa, "valid_vec_isa_list", broken)
    monkeypatch.setattr(inductor.log, "info", lambda message, *args: logged.append(message % args))
    inductor.warm_vec_isa()  # does not raise: each compile detects the ISA itself then
    assert logged == ["inductor ISA detection not warmed (RuntimeError: no compiler)"]
