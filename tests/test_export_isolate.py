"""Isolation: the convert-and-verify unit, its picklable result, and a worker child that may crash."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from enn_nb.engine import parity
from enn_nb.engine.backends.base import ExportJob
from enn_nb.engine.capture import Shared, capture_program
from enn_nb.engine.isolate import Setup, Task, Worker, importable_reference, run_unit
from enn_nb.engine.outcome import UnitResult

from tests.fixtures.backends import EchoBackend, HalfWriteBackend, SegfaultBackend
from tests.fixtures.models import TinyMLP


def _job(workdir: Path) -> tuple[ExportJob, Shared, list[parity.Case]]:
    module = TinyMLP().eval()
    inputs = (torch.randn(2, 6),)
    ep, dynamic, _, _ = capture_program(module, inputs, dynamic_batch=True, fast_paths=[])
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
