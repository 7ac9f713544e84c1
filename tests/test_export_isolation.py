"""Isolation: converters that segfault, abort or exit kill only the spawned child; the caller records `crashed`."""

from __future__ import annotations

import os

import pytest
import torch

import enn_nb
from enn_nb.engine import sidecar
from enn_nb.engine.registry import register_backend, unregister_backend

from tests.fixtures.backends import AbortBackend, EchoBackend, ExitBackend, SegfaultBackend
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
