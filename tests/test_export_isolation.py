"""Isolation: the convert-and-verify unit and its picklable result, a worker child that may crash, and converters
that segfault, abort or exit killing only the spawned child while the caller records `crashed`."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

import enn_nb
from enn_nb.engine import parity, sidecar
from enn_nb.engine.backends.base import ExportJob
from enn_nb.engine.capture import Shared, capture_program
from enn_nb.engine.isolate import Setup, Task, Worker, importable_reference, run_unit
from enn_nb.engine.outcome import UnitResult
from enn_nb.engine.registry import register_backend, unregister_backend

from tests.fixtures.backends import AbortBackend, EchoBackend, ExitBackend, HalfWriteBackend, SegfaultBackend
from tests.fixtures.conformance import assert_backend_conforms
from tests.fixtures.models import TinyMLP


@pytest.fixture()
def crashers():
    for cls in (SegfaultBackend, AbortBackend, ExitBackend):
        register_backend(cls, replace=True)
    yield
    for cls in (SegfaultBackend, AbortBackend, ExitBackend):
        unregister_backend(cls.name)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_crashing_backends_are_recorded_and_the_next_backend_still_runs(crashers, tmp_path):
    pid = os.getpid()
    events: list[dict] = []
    report = enn_nb.export(TinyMLP(), "segfault,abort,exit3,pt2", out_dir=tmp_path,
                           example_inputs=torch.randn(3, 6), cache=False, progress=events.append)
    assert os.getpid() == pid  # we are still here
    seg, abort, exit3 = report["segfault"], report["abort"], report["exit3"]
    assert (seg.status, seg.signal, seg.exit_code) == ("crashed", "SIGSEGV", -11)
    assert (abort.status, abort.signal, abort.exit_code) == ("crashed", "SIGABRT", -6)
    assert (exit3.status, exit3.signal, exit3.exit_code) == ("crashed", None, 3)
    assert seg.stage == "convert" and "SIGSEGV" in seg.error and "this process is unaffected" in seg.error
    data = sidecar.read(seg.sidecar)
    assert data["status"] == "crashed" and data["error"]["signal"] == "SIGSEGV"
    assert "segfault backend: about to crash" in data["error"]["log_tail"]
    assert ("segfault", "done", "crashed") in {(e["backend"], e["stage"], e["status"]) for e in events}
    # a fresh child took over after the crashes
    assert_backend_conforms(report, "pt2")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_plugin_backend_runs_isolated_from_its_module(tmp_path):
    register_backend(EchoBackend, replace=True)
    try:
        report = enn_nb.export(TinyMLP(), "echo", out_dir=tmp_path, example_inputs=torch.randn(2, 6), cache=False)
    finally:
        unregister_backend("echo")
    result = report["echo"]
    assert result.status == "ok" and result.parity["status"] == "passed"
    assert not any("ran in this process" in n for n in result.notes)


def test_a_backend_defined_in_a_function_runs_in_process_with_a_note(tmp_path):
    class LocalEcho(EchoBackend):
        name = "local_echo"
        suffix = ".local.pt2"

    register_backend(LocalEcho, replace=True)
    try:
        report = enn_nb.export(TinyMLP(), "local_echo", out_dir=tmp_path, example_inputs=torch.randn(2, 6), cache=False)
    finally:
        unregister_backend("local_echo")
    result = report["local_echo"]
    assert result.status == "ok"
    assert any("ran in this process" in n and "LocalEcho" in n for n in result.notes)


def _job(workdir: Path) -> tuple[ExportJob, Shared, list[parity.Case]]:
    module = TinyMLP().eval()
    inputs = (torch.randn(2, 6),)
    ep, dynamic, _ = capture_program(module, inputs, dynamic_batch=True, fast_paths=[])
    shared = Shared(workdir=workdir, stem="model", input_names=["features"], output_names=["output"],
                    essentials={}, onnx_options={"opset": None, "optimize": True}, ep=ep)
    job = ExportJob(module=module, example_inputs=inputs, dynamic_batch=dynamic, batch_range=(1, 8, 64),
                    input_names=["features"], output_names=["output"], spec=None, essentials={}, workdir=workdir,
                    get_exported_program=shared.exported_program, get_onnx_path=shared.onnx_path)
    with torch.no_grad():
        cases = parity.make_cases(module, inputs, make=lambda batch, seed: (torch.randn(batch, 6),), dynamic=True)
    return job, shared, cases


def _task(backend: type, workdir: Path, cases: list[parity.Case], verify: bool = True) -> Task:
    return Task(name=backend.name, backend_ref=importable_reference(backend) or "", out_path=str(workdir / backend.name
                / backend().artifact_name("model")), options={}, verify=verify, tolerance=(1e-5, 1e-5), cases=cases)


def test_the_unit_converts_verifies_and_its_result_crosses_a_pipe(tmp_path):
    job, _, cases = _job(tmp_path)
    events: list[dict] = []
    unit = run_unit(EchoBackend(), job, _task(EchoBackend, tmp_path, cases), events.append)
    assert unit.error is None and unit.crash is None and Path(unit.conversion.artifact).is_file()
    assert unit.parity["status"] == "passed" and {c["batch_size"] for c in unit.parity["cases"]} >= {1, 7}
    assert [e["stage"] for e in events] == ["convert", "verify"] and unit.timings["verify"] > 0
    again = pickle.loads(pickle.dumps(unit))  # what a worker sends back
    assert isinstance(again, UnitResult) and again.conversion.inputs[0].shape == ["batch", 6]


def test_the_unit_never_raises_it_records_the_stage_and_the_error(tmp_path):
    job, _, cases = _job(tmp_path)
    unit = run_unit(HalfWriteBackend(), job, _task(HalfWriteBackend, tmp_path, cases), lambda e: None)
    assert unit.stage == "convert" and unit.conversion is None
    assert unit.error.type == "RuntimeError" and "disk full" in unit.error.message
    assert "fixtures/backends.py" in unit.error.traceback and unit.error.chain.startswith("RuntimeError: disk full")


def test_a_worker_survives_its_childs_crash_and_starts_a_new_one(tmp_path):
    job, shared, cases = _job(tmp_path)
    setup = Setup(workdir=str(tmp_path), stem="model", ep_path=str(shared.save_program()), module_path=None,
                  example_inputs=[t.numpy() for t in job.example_inputs], dynamic_batch=job.dynamic_batch,
                  batch_range=job.batch_range, input_names=job.input_names, output_names=job.output_names,
                  spec=None, essentials={}, onnx_options=dict(shared.onnx_options), sdpa=None,
                  sys_path=[str(Path(__file__).parent)])
    worker = Worker(setup, tmp_path)
    try:
        crashed = worker.run(_task(SegfaultBackend, tmp_path, cases), lambda e: None)
        assert crashed.crash is not None and crashed.crash.signal == "SIGSEGV" and crashed.conversion is None
        assert "about to crash" in crashed.crash.log_tail
        ok = worker.run(_task(EchoBackend, tmp_path, cases), lambda e: None)  # a fresh child
        assert ok.crash is None and ok.error is None and ok.parity["status"] == "passed"
        assert "onnx" not in ok.shared_timings  # the child made no ONNX: no backend consumed one
    finally:
        worker.close()
