"""Every surface takes a signature: the CLI (--model, --input), the %%enn_export body, the wizard, reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from IPython.core.error import UsageError

import enn_nb
from enn_nb.engine import ExportReport
from enn_nb.reference import zoo
from tests.fixtures.magics import run_cell

ROOT = Path(__file__).resolve().parents[1]
FACTORY = "enn_nb.reference.zoo:gru_forecaster"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "enn_nb.surfaces.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture
def byo_checkpoints(tmp_path: Path) -> dict[str, Path]:
    """A GRU forecaster of our own (no registered builder), saved with and without its signature."""
    model = zoo.gru_forecaster()
    plain, typed = tmp_path / "plain.safetensors", tmp_path / "typed.safetensors"
    enn_nb.save(model, plain)
    enn_nb.save(model, typed, spec=enn_nb.ModelSpec.from_model(model, zoo.example_inputs("gru_forecaster")))
    return {"plain": plain, "typed": typed}


# -- CLI ----------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_exports_a_bring_your_own_checkpoint(byo_checkpoints, tmp_path) -> None:
    done = cli("export", str(byo_checkpoints["typed"]), "--model", FACTORY, "-b", "onnx,pt2", "-o", "out",
               "--no-isolate", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    results = {r["backend"]: r for r in json.loads(done.stdout)["results"]}
    assert {k: r["status"] for k, r in results.items()} == {"onnx": "ok", "pt2": "ok"}
    side = json.loads((tmp_path / "out" / "model.onnx.enn.json").read_text())
    assert side["source"]["kind"] == "checkpoint"
    assert side["source"]["content_hash"] == enn_nb.inspect(byo_checkpoints["typed"]).content_hash
    assert side["signature"]["inputs"] == [{"name": "values", "dtype": "float32", "shape": ["batch", 12, 5]}]

    # a checkpoint saved without a signature: --input gives it; without, the error says how
    done = cli("export", str(byo_checkpoints["plain"]), "--model", FACTORY, "-b", "pt2", "-o", "out2", cwd=tmp_path)
    assert done.returncode == 1 and "--input values:float32[B,24,6]" in done.stderr
    done = cli("export", str(byo_checkpoints["plain"]), "--model", FACTORY, "--input", "values:float32[B,12,5]",
               "-b", "pt2", "-o", "out3", "--no-isolate", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "out3" / "model.pt2.enn.json").read_text())["status"] == "ok"


def test_cli_model_errors_name_the_fix(byo_checkpoints, tmp_path, capsys, monkeypatch) -> None:
    from enn_nb.surfaces.cli import main

    monkeypatch.chdir(tmp_path)
    typed = str(byo_checkpoints["typed"])

    def run(*args: str) -> str:
        assert main(["export", typed, "-b", "pt2", "-o", "out", *args]) == 1
        return capsys.readouterr().err

    assert "--model pkg.module:factory" in run()
    assert "is not `package.module:factory`" in run("--model", "models.py")
    err = run("--model", "enn_nb.reference.zoo:nope")
    assert "has no `nope`" in err and "gru_forecaster" in err
    err = run("--model", FACTORY, "--input", "values:float32[B,12,4]", "--no-isolate")
    assert "Expected signature (values: float32[batch, 12, 4]), received (values: float32[2, 12, 4])" in err
    assert "Traceback" not in err


@pytest.mark.slow
@pytest.mark.notebook
def test_cli_report_of_a_bring_your_own_checkpoint(byo_checkpoints, tmp_path) -> None:
    done = cli("report", "export_report", "-p", f"checkpoint={byo_checkpoints['typed']}", "-p", "backends=[pt2]",
               "-p", "batch_sizes=[1, 4]", "--model", FACTORY, "--out", "report", "--json", "--no-progress",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout)
    notebook = json.loads(Path(outcome["notebook"]).read_text())
    texts = [out.get("data", {}).get("text/html", "") for cell in notebook["cells"] for out in cell.get("outputs", [])]
    table = next("".join(t) for t in texts if "[batch, 12, 5]" in "".join(t))  # rmi.signature_table
    assert ">values</td>" in table and ">prediction</td>" in table and "[batch, 5]" in table
    assert "--model enn_nb.reference.zoo:gru_forecaster" in json.dumps(notebook)  # the reproduce line


# -- the %%enn_export body ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_magic_draws_example_inputs_from_a_per_input_map(ip, tmp_path) -> None:
    ip.user_ns["net"] = zoo.ids_mask()
    report = run_cell(ip, (
        "%%enn_export net --out exports\n"
        "backends: [onnx, pt2]\n"
        "example_inputs: {ids: int64[B, 16]{50}, mask: bool[B, 16]}\n"
        "isolate: false\n"
    ))
    assert isinstance(report, ExportReport)
    assert [r.status for r in report.results] == ["ok", "ok"]
    assert [t["name"] for t in report["onnx"].inputs] == ["ids", "mask"]
    assert [t["dtype"] for t in report["onnx"].inputs] == ["int64", "bool"]


def test_magic_states_the_signature_on_a_mismatch(ip, tmp_path) -> None:
    ip.user_ns["net"] = zoo.gru_forecaster()
    with pytest.raises(UsageError) as err:
        run_cell(ip, "%%enn_export net --out exports\nbackends: [pt2]\nexample_inputs: [B, 12, 4]\nisolate: false\n")
    text = str(err.value)
    assert "Expected signature (features: float32[batch, 12, 4])" in text
    assert "input.size(-1) must be equal to input_size" in text


def test_magic_body_rejects_a_malformed_shape(ip) -> None:
    ip.user_ns["net"] = zoo.gru_forecaster()
    with pytest.raises(UsageError, match="name:dtype\\[dims\\]"):
        run_cell(ip, "%%enn_export net\nexample_inputs: {values: float32[B, 12, 5], mask: bool}\n")


# -- wizard ---------------------------------------------------------------------------------------------------------
def test_wizard_shows_and_edits_the_signature_of_a_model_without_in_dim() -> None:
    from enn_nb.surfaces.notebook.wizard import wizard

    net = zoo.calendar_forecaster()
    w = wizard({"net": net})
    state, view = w.state, w.view
    assert not state.validate_step("model")
    assert "declares no input signature" in state.messages["model"]
    view.signature.value = "values:float32[B, 12, 5]\ncalendar:int64[B, 12, 2]{7}"
    assert state.signature.startswith("values") and state.validate_step("model")
    assert "calendar: int64[batch, 12, 2]{7}" in view.model_info.value
    view.next_button.click()
    assert w.step == "targets"
    view.back_button.click() if hasattr(view, "back_button") else w.back()
    values, calendar = state.export_example_inputs()
    assert values.shape == (2, 12, 5) and calendar.dtype.is_floating_point is False
    assert int(calendar.max()) < 7
    view.signature.value = "values:float32[B, 12"
    assert not state.validate_step("model") and "name:dtype[dims]" in state.messages["model"]
