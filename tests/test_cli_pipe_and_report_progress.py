"""Small annoyances: `enn-nb inspect | head`, the report's progress over backends, why parity checks batch 7."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_inspect_into_a_closed_pipe_ends_quietly(tmp_path):
    import torch

    import enn_nb

    ckpt = tmp_path / "net.safetensors"
    enn_nb.save(torch.nn.Linear(3, 2), ckpt, spec={"in_dim": 3, "out_shape": [2]})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "enn_nb.surfaces.cli", "inspect", str(ckpt)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)  # fmt: skip
    proc.stdout.close()  # `| head -0`: the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_report_progress_counts_backends(tmp_path, monkeypatch):
    from enn_nb.surfaces.reports.progress import ENV, BackendBar, create_events_file, kernel_callback

    assert kernel_callback() is None or ENV in os.environ  # outside a report run: no callback
    events = create_events_file(tmp_path, "export_report")
    monkeypatch.setenv(ENV, str(events))
    with BackendBar(events, "export_report", poll_s=60) as bar:
        callback = kernel_callback()
        callback({"backend": None, "stage": "capture", "status": "running", "index": 0, "total": 3})
        callback({"backend": "onnx", "stage": "verify", "status": "running", "index": 0, "total": 3})
        callback({"backend": "onnx", "stage": "done", "status": "ok", "index": 0, "total": 3})
        callback({"backend": "pt2", "stage": "done", "status": "failed", "index": 1, "total": 3})
        bar.update()
        assert (bar.bar.n, bar.bar.total, bar.bar.unit) == (2, 3, "backend")
        assert bar.done == ["onnx", "pt2"]
    assert not events.exists()  # the runner's scratch file is gone


def test_the_export_report_asks_for_the_backend_bar_and_feeds_it():
    from enn_nb.surfaces.reports.catalog import resolve_template, template_metadata

    path = resolve_template("export_report")
    assert template_metadata(path)["progress"] == "backends"
    sources = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"]]
    assert any("progress=rs.progress_callback()" in s for s in sources)
    assert any("display(rs.Prose(rs.PARITY_LEGEND))" in s for s in sources)  # prose that wraps on a narrow page


def test_the_parity_legend_says_why_batch_7():
    from enn_nb.engine.parity import DYNAMIC_BATCHES
    from enn_nb.surfaces.reports.sections import PARITY_LEGEND

    assert DYNAMIC_BATCHES == (1, 7)
    assert "batch 1 and batch 7" in PARITY_LEGEND and "other than the capture batch" in PARITY_LEGEND
    assert "plus this report's batch sizes" in PARITY_LEGEND


@pytest.mark.parametrize("args", [["backends", "--options"], ["backends"]])
def test_other_commands_into_a_closed_pipe_end_quietly(args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "enn_nb.surfaces.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)  # fmt: skip
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err, err
