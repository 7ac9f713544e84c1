"""A converter that hangs is killed after its backend's timeout, reported as `timeout` with its stage; the rest finish."""

from __future__ import annotations

import os
import time

import pytest
import torch

import enn_nb
from enn_nb.engine import sidecar
from enn_nb.engine.lanes import timeout_of
from enn_nb.engine.plan import Plan
from enn_nb.engine.registry import get_backend, register_backend, unregister_backend

from tests.fixtures.backends import HangWithHelperBackend, HangInVerifyBackend
from tests.fixtures.conformance import assert_backend_conforms
from tests.fixtures.models import TinyMLP


@pytest.fixture()
def hangers():
    for cls in (HangWithHelperBackend, HangInVerifyBackend):
        register_backend(cls, replace=True)
    yield
    for cls in (HangWithHelperBackend, HangInVerifyBackend):
        unregister_backend(cls.name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie waiting for init to reap it is dead too
        return fh.read().split()[2] != "Z"


@pytest.mark.slow
@pytest.mark.multiprocess
def test_hanging_backends_time_out_in_their_stage_and_the_others_finish(hangers, tmp_path):
    pid_file = tmp_path / "helper.pid"
    started = time.monotonic()
    report = enn_nb.export(
        TinyMLP(), "hanghelper,hangverify,pt2", out_dir=tmp_path / "out", example_inputs=torch.randn(3, 6), cache=False,
        workers=3, options={"hanghelper": {"timeout_s": 4, "pid_file": str(pid_file)}, "hangverify": {"timeout_s": 4}},
    )
    assert time.monotonic() - started < 300  # not the 600 s the converters would sleep
    hang, verify, pt2 = report["hanghelper"], report["hangverify"], report["pt2"]
    assert (hang.status, hang.stage, hang.error_type) == ("timeout", "convert", "Timeout")
    assert (verify.status, verify.stage) == ("timeout", "verify")
    assert "did not finish within 4 s (option `timeout_s`)" in hang.error and "the other backends went on" in hang.error
    data = sidecar.read(hang.sidecar)  # schema-valid with the new status
    assert data["status"] == "timeout" and data["stage"] == "convert"
    assert "hang backend: converting forever" in data["error"]["log_tail"]
    assert_backend_conforms(report, "pt2")
    assert pt2.status == "ok"
    assert "2 timeout" in report.summary and {r.backend for r in report.failed} == {"hanghelper", "hangverify"}
    helper = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(helper) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(helper)  # the converter's own helper process went with it


def test_timeouts_are_per_backend_generous_by_default_and_configurable():
    backend = get_backend("pt2")
    default = Plan(0, "pt2", backend, {}, (1e-5, 1e-5))
    assert timeout_of(default) == backend.default_timeout_s >= 600
    assert timeout_of(Plan(0, "pt2", backend, {"timeout_s": 12}, (1e-5, 1e-5))) == 12.0
    assert timeout_of(Plan(0, "tensorflow", get_backend("tensorflow"), {}, (1e-4, 1e-4))) == 1800.0


def test_the_cache_key_ignores_the_time_limit(tmp_path):
    from enn_nb.engine.cache import export_key
    from enn_nb.engine.settings import ExportSettings

    settings = ExportSettings.from_call("pt2", tmp_path)
    backend = get_backend("pt2")
    keys = {export_key(Plan(0, "pt2", backend, opts, (1e-5, 1e-5)), {"module": "m", "inputs": "i"}, None, {}, settings)
            for opts in ({}, {"timeout_s": 5}, {"timeout_s": 5000})}
    assert len(keys) == 1


def test_cli_timeout_sets_every_backends_limit():
    from enn_nb.surfaces.cli.export import _with_timeout

    assert _with_timeout({"pt2": {"timeout_s": 9}}, "pt2,onnx", 60.0) == {"pt2": {"timeout_s": 9}, "onnx": {"timeout_s": 60.0}}
    assert _with_timeout({}, "pt2", None) == {}
