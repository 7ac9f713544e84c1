"""Sweeps on Dask: a LocalCluster of 2 worker processes gives the serial run's index, survives a SIGKILLed
worker, reports a task that always crashes, refuses an unreachable scheduler, and keeps the index on Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small checkpoints with different weights (no export of one is a cache hit of another)."""
    import enn_nb
    from tests.fixtures.models import tiny_reference

    folder = tmp_path_factory.mktemp("ckpts")
    model = tiny_reference(seed=0)
    first = next(p for p in model.parameters() if p.is_floating_point())
    for i in range(3):
        with torch.no_grad():
            first.add_(1e-3 * i)
        enn_nb.save(model, folder / f"m{i}.safetensors", metadata={"sweep": i})
    return folder


@pytest.fixture(scope="module")
def client():
    from enn_nb.surfaces.sweep import local_cluster

    with local_cluster(2) as c:
        yield c


def _rows(index: Path, drop: tuple[str, ...] = ()) -> list[dict]:
    doc = json.loads(index.read_text(encoding="utf-8"))
    rows = doc.get("reports", doc.get("exports"))
    return [{k: v for k, v in row.items() if k not in drop} for row in rows]


@pytest.mark.slow
@pytest.mark.notebook
def test_report_sweep_on_a_cluster_equals_the_serial_run(checkpoints, client, tmp_path, monkeypatch):
    import enn_nb

    monkeypatch.chdir(checkpoints.parent)
    params = {"backends": ["onnx", "pt2"], "batch_sizes": [2]}
    serial = enn_nb.report_batch("export_report", f"{checkpoints.name}/*.safetensors", tmp_path / "serial",
                                 progress=False, **params)
    cluster = enn_nb.report_batch("export_report", f"{checkpoints.name}/*.safetensors", tmp_path / "dask",
                                  cluster=client, progress=False, **params)
    assert serial.runner == "this process" and cluster.runner.startswith("tcp://127.0.0.1:")
    rows = _rows(serial.index.with_name("index.json"))
    assert [r["status"] for r in rows] == ["pass"] * 3 and all(r["retries"] == 0 for r in rows)
    assert rows == _rows(cluster.index.with_name("index.json"))  # sources, verdicts, links, failures, retries
    assert serial.ok is cluster.ok is True
    for s, c in zip(serial.entries, cluster.entries):
        assert s.result.verdict.to_dict()["backends"].keys() == {"onnx", "pt2"}
        statuses = {k: v["status"] for k, v in s.result.verdict.to_dict()["backends"].items()}
        assert statuses == {k: v["status"] for k, v in c.result.verdict.to_dict()["backends"].items()}
        for backend in ("onnx", "pt2"):  # each sidecar exists on both sides and says the same of its artifact
            stem = s.result.notebook.stem
            sides = [json.loads((run / f"{stem}-artifacts" / f"model.{backend}.enn.json").read_text())
                     for run in (tmp_path / "serial", tmp_path / "dask")]
            assert sides[0]["status"] == sides[1]["status"] == "ok"
            assert [f["sha256"] for f in sides[0]["files"]] != [] and sides[0]["source"] == sides[1]["source"]


def _kill_first_busy_worker(client, stop: threading.Event, killed: list[str]) -> None:
    """SIGKILL the worker process that runs a task, once it has run for a moment."""
    while not stop.is_set():
        info = client.run(lambda dask_worker: (os.getpid(), [str(t.key) for t in dask_worker.state.executing]))
        busy = [(pid, keys[0]) for pid, keys in info.values() if keys]
        if busy:
            time.sleep(0.5)
            os.kill(busy[0][0], signal.SIGKILL)
            killed.append(busy[0][1])
            return
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_worker_killed_mid_task_has_its_task_retried_once_and_the_sweep_finishes(checkpoints, client, tmp_path):
    import enn_nb

    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first_busy_worker, args=(client, stop, killed))
    killer.start()
    try:
        sweep = enn_nb.export_many(sorted(checkpoints.glob("*.safetensors"))[:2], "pt2", out_dir=tmp_path / "out",
                                   cluster=client, progress=False, isolate=False)
    finally:
        stop.set()
        killer.join()
    assert len(killed) == 1, "no task was seen running"
    rows = _rows(tmp_path / "out" / "index.json")
    assert [(r["backend"], r["status"], r["verified"]) for r in rows] == [("pt2", "ok", True)] * 2
    retried = {Path(r["source"]).stem: r["retries"] for r in rows}
    victim = "m0" if "m0_safetensors" in killed[0] else "m1"
    assert retried == {"m0": int(victim == "m0"), "m1": int(victim == "m1")}
    assert sweep.ok and "retried 1x after its worker died" in repr(sweep)
    assert "retried 1x after its worker died" in (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    for row in rows:  # the retried export's sidecar is whole and names its artifact's hash
        side = json.loads((tmp_path / "out" / row["sidecar"]).read_text())
        assert side["status"] == "ok" and side["files"][0]["sha256"]


@pytest.mark.multiprocess
def test_a_task_that_always_kills_its_worker_fails_with_the_cause_and_the_others_finish(client):
    from enn_nb.surfaces.sweep.cluster import Runner
    from enn_nb.surfaces.sweep.engine import Task, run_tasks
    from tests.fixtures.sweep import die, pid_and_square

    tasks = [Task("ok-a", pid_and_square, (2,)), Task("crash", die, ()), Task("ok-b", pid_and_square, (3,))]
    seen: list[int] = []
    outcomes = run_tasks(tasks, Runner(client, "test"), desc="crash", progress=False,
                         on_change=lambda done: seen.append(len(done)))
    assert [o.state for o in outcomes] == ["done", "failed", "done"]
    assert [o.value[1] for o in outcomes if o.state == "done"] == [4, 9]
    assert all(o.value[0] != os.getpid() for o in outcomes if o.state == "done")  # ran in worker processes
    crash = outcomes[1]
    assert crash.retries == 1  # tried on a second worker, which died too
    assert "died 2 time(s)" in crash.cause and "tcp://127.0.0.1:" in crash.cause
    assert sorted(seen) == [1, 2, 3]  # the index was rewritten after each task


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_scheduler_is_one_clear_error_before_anything_runs(checkpoints, tmp_path, monkeypatch, capsys):
    from enn_nb.cli import main
    from enn_nb.surfaces.sweep import cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1.0)
    address = f"tcp://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    code = main(["export", "--each", str(checkpoints / "*.safetensors"), "-b", "pt2", "-o", str(tmp_path / "out"),
                 "--cluster", address])
    err = capsys.readouterr().err
    assert code == 1 and time.monotonic() - start < 20
    assert f"Cannot reach the Dask scheduler at `{address}`" in err and "nothing was run" in err
    assert err.count("error:") == 1 and not any((tmp_path / "out").iterdir())  # checked, nothing written


def test_cluster_values_and_a_missing_distributed_are_refused_with_the_fix(checkpoints, tmp_path, monkeypatch):
    import enn_nb
    from enn_nb.errors import ClusterError, MissingDependencyError
    from enn_nb.surfaces.sweep.cluster import is_url, parse

    assert parse("local") == ("local", None) and parse("local:4") == ("local", 4)
    assert parse("tcp://10.0.0.5:8786") == ("address", None)
    for bad in ("local:0", "localhost:8786", "local:two"):
        with pytest.raises(ClusterError, match="tcp://scheduler-host:8786|at least 1 worker"):
            parse(bad)
    assert is_url("s3://bucket/nightly") and is_url("gcs://b/x") and not is_url("/shared/nightly")
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(MissingDependencyError, match=r"%pip install 'enn-nb\[cluster\]'"):
        enn_nb.export_many(str(checkpoints / "*.safetensors"), "pt2", out_dir=tmp_path / "x", cluster="local:2")
    assert not any((tmp_path / "x").iterdir())


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ctrl_c_cancels_the_remaining_tasks_and_writes_the_index_of_what_finished(checkpoints, tmp_path):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for i in range(4):  # two rounds on two workers: Ctrl-C comes after the first finished
        shutil.copy2(checkpoints / f"m{i % 3}.safetensors", ckpts / f"c{i}.safetensors")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "enn_nb.cli", "export", "--each", str(ckpts / "*.safetensors"), "-b", "pt2",
         "-o", str(out), "--no-cache", "--no-isolate", "--cluster", "local:2"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    index = out / "index.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if index.exists() and _rows(index):
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    start = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert time.monotonic() - start < 30
    doc = json.loads(index.read_text(encoding="utf-8"))
    finished = {Path(r["source"]).name for r in doc["exports"]}
    assert doc["interrupted"] is True and finished and len(finished) < 4
    assert finished.isdisjoint(Path(s).name for s in doc["not_run"])
    assert finished | {Path(s).name for s in doc["not_run"]} == {f"c{i}.safetensors" for i in range(4)}
    assert all(r["status"] == "ok" for r in doc["exports"])
    assert f"interrupted; the index of the finished exports: {out / 'index.html'}" in err
    assert "running on local:2 (2 workers); Dask dashboard: http://127.0.0.1:" in err
    assert re.search(r"export: +\d+%.*\| [1-3]/4 .*running [0-2], failed 0", err), err[-2000:]  # the one bar
    with pytest.raises(ProcessLookupError):  # nothing of the sweep (workers, converters) is left running
        for _ in range(50):
            os.killpg(proc.pid, 0)
            time.sleep(0.1)


@pytest.mark.multiprocess
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="a worker that sees another disk needs root's `unshare -m`")
def test_a_folder_the_workers_of_a_scheduler_cannot_see_is_refused_with_the_reason(checkpoints, tmp_path):
    """A real scheduler and a worker in its own mount namespace, where ``hidden/`` is another (empty) disk."""
    from enn_nb.errors import ClusterError
    from enn_nb.surfaces.sweep import export_many

    hidden, shared = tmp_path / "hidden", tmp_path / "shared"
    hidden.mkdir()
    shared.mkdir()
    for ckpt in (hidden, shared):
        shutil.copy2(checkpoints / "m0.safetensors", ckpt / "m0.safetensors")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", str(port), "--no-dashboard"], **quiet)
    worker = subprocess.Popen(["unshare", "-m", "sh", "-c", f"mount -t tmpfs none '{hidden}' && exec '{sys.executable}' "
                               f"-m distributed.cli.dask_worker {address} --nthreads 1 --no-nanny --no-dashboard"], **quiet)
    try:
        from distributed import Client

        with Client(address, timeout=120) as ready:  # both started (slow on a loaded machine) before the checks
            ready.wait_for_workers(1, timeout=120)
        with pytest.raises(ClusterError) as refused:
            export_many([shared / "m0.safetensors"], "pt2", out_dir=hidden / "out", cluster=address, progress=False)
        assert f"`--out {hidden / 'out'}` is a folder on this machine that the workers of `{address}` cannot see" in str(
            refused.value) and "shared by every machine at the same path" in str(refused.value)
        with pytest.raises(ClusterError, match=r"cannot read `.*hidden/m0\.safetensors`"):
            export_many([hidden / "m0.safetensors"], "pt2", out_dir=shared / "out", cluster=address, progress=False)
        assert [p.name for p in (hidden / "out").iterdir()] == [] and [p.name for p in (shared / "out").iterdir()] == []
    finally:
        for proc in (worker, scheduler):
            proc.terminate()
            proc.wait(timeout=30)
