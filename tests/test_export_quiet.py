"""Warnings and converter output during an export are captured into the sidecar and a log file, not printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "ENN_NB_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)


def test_capture_takes_warnings_and_native_prints():
    from enn_nb.engine.outlog import capture

    with capture("probe") as log:
        line = sys._getframe().f_lineno + 1
        warnings.warn("a converter complains", UserWarning)
        print("progress 50%")
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
    assert log.warnings == [f"UserWarning: a converter complains ({Path(__file__).name}:{line})"]
    assert log.lines == ["progress 50%", "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."]
    assert log.counts() == "1 warning, 2 output lines"
    block = log.sidecar_block("model.onnx.enn.log")
    assert block == {"warnings": 1, "lines": 2, "file": "model.onnx.enn.log", "warning_messages": log.warnings}


def test_capture_keeps_the_users_filters():
    from enn_nb.engine.outlog import capture

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ignored on purpose")
        with capture(streams=False) as log:
            warnings.warn("ignored on purpose", UserWarning)
    assert log.warnings == []


@pytest.mark.slow
def test_exporting_the_reference_checkpoint_prints_only_the_exit_line(trained_model, tmp_path):
    """The issue's case: the reference model (FlexAttention when trained) exported from the CLI."""
    import enn_nb

    ckpt = tmp_path / "ref.safetensors"
    enn_nb.save(trained_model, ckpt)
    proc = _run(["-m", "enn_nb.surfaces.cli", "export", str(ckpt), "-b", "pt2", "-o", "out", "--no-cache"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "flex_attention" not in proc.stderr and "Warning" not in proc.stderr
    assert proc.stderr.strip() == "enn-nb export: 1 verified"  # the exit line, nothing else
    assert "captured, not printed: " in proc.stdout
    side = json.loads((tmp_path / "out" / "model.pt2.enn.json").read_text())
    assert {"warnings", "lines", "file"} <= set(side["log"])
    if side["log"]["warnings"]:  # torch warns once per process: whatever came during the export is kept
        assert (tmp_path / "out" / side["log"]["file"]).is_file()


LSTM_SCRIPT = """
import logging, sys, torch, enn_nb
if "--verbose" in sys.argv:  # asked for: the captured lines are logged
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("enn_nb.converters").setLevel(logging.DEBUG)
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(4, 8, batch_first=True)
        self.in_dim = 4
    def forward(self, x):
        return self.lstm(x.unsqueeze(1))[0][:, 0]
report = enn_nb.export(Net(), ["pt2"], out_dir=sys.argv[1], cache=False)
print(report.log_line)
"""


@pytest.mark.slow
def test_lstm_flat_weights_warning_is_captured(tmp_path):
    proc = _run(["-c", LSTM_SCRIPT, str(tmp_path / "out")], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # nothing printed
    assert proc.stdout.startswith("captured, not printed: 1 warning")
    side = json.loads((tmp_path / "out" / "model.pt2.enn.json").read_text())
    assert "_flat_weights" in side["log"]["warning_messages"][0]
    assert "_flat_weights" in (tmp_path / "out" / side["log"]["file"]).read_text()

    loud = _run(["-c", LSTM_SCRIPT, str(tmp_path / "loud"), "--verbose"], tmp_path)
    assert loud.returncode == 0 and "_flat_weights" in loud.stderr  # printed only when asked for
