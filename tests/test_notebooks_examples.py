"""The example notebooks run end to end through a real kernel (papermill), and produce what they say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.notebooks import cell_with, check_stored, execute, html, sha, stdout


EXAMPLES = ("01_quickstart.ipynb", "02_bring_your_own_model.ipynb")


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_are_stored_without_outputs_with_a_kernelspec(name: str) -> None:
    check_stored(name)


@pytest.mark.notebook
@pytest.mark.slow
def test_quickstart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the notebook's default is every available backend; two fast ones keep the test short
    nb = execute("01_quickstart.ipynb", tmp_path, monkeypatch, backends="onnx,pt2", out_dir="qs")
    qs = tmp_path / "qs"

    # three checkpoint formats, each manifest carrying its cell's provenance
    import enn_nb

    for path, fragment in [
        (qs / "checkpoints" / "model.pt", "model.pt --meta"),
        (qs / "checkpoints" / "model.safetensors", "model.safetensors --meta"),
        (qs / "checkpoints" / "model_dcp", "--format dcp"),
    ]:
        manifest = enn_nb.inspect(path)
        cell = cell_with(nb, fragment)
        record = manifest.spec.metadata["provenance"]
        assert record["cell_sha256"] == sha(cell.source)
        assert record["execution_count"] == cell.execution_count
        assert record["notebook"] == "notebooks/01_quickstart.ipynb"
        assert manifest.spec.metadata["run"] == 1
    assert "enn_nb.reference" in html(cell_with(nb, "%enn_inspect"))
    assert "restored == trained, bit for bit: True" in stdout(cell_with(nb, "%enn_load"))
    assert "<table" in html(cell_with(nb, "%enn_backends"))

    # the export: artifacts, sidecars with provenance, the report table shown
    export_cell = cell_with(nb, "%%enn_export")
    for artifact in ("model.onnx", "model.pt2"):
        assert (qs / "exports" / artifact).is_file()
        sidecar = json.loads((qs / "exports" / f"{artifact}.enn.json").read_text())
        assert sidecar["status"] == "ok" and sidecar["parity"]["status"] == "passed"
        assert sidecar["provenance"]["cell_sha256"] == sha(export_cell.source)
        assert sidecar["provenance"]["execution_count"] == export_cell.execution_count
        assert sidecar["provenance"]["notebook"] == "notebooks/01_quickstart.ipynb"
        assert sidecar["metadata"]["notebook"] == "01_quickstart"
    table = html(export_cell)
    assert "model.onnx" in table and "model.pt2" in table
    report_text = stdout(cell_with(nb, "print(report)"))
    assert "onnx: ok" in report_text and "pt2: ok" in report_text
    assert '"schema": "enn_nb.export/1"' in stdout(cell_with(nb, "sidecar = json.loads"))


@pytest.mark.notebook
@pytest.mark.slow
def test_bring_your_own_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = execute("02_bring_your_own_model.ipynb", tmp_path, monkeypatch, out_dir="byo")
    out = tmp_path / "byo"

    import enn_nb

    manifest = enn_nb.inspect(out / "tiny.safetensors")
    assert manifest.spec.builder == "byo.tiny_regressor" and manifest.spec.in_dim == 6
    assert manifest.spec.out_shape == (2,) and manifest.spec.metadata["purpose"] == "demo"
    assert "no fake impl" in stdout(cell_with(nb, "torch.export.export(net")).lower()
    assert "reloaded model is identical" in stdout(cell_with(nb, "%enn_load"))

    for artifact in ("model.onnx", "model.pt2"):
        sidecar = json.loads((out / "exports" / f"{artifact}.enn.json").read_text())
        assert sidecar["status"] == "ok" and sidecar["parity"]["status"] == "passed"
        assert "mlp.fused" in json.dumps(sidecar["deviations"])
        assert sidecar["spec"]["in_dim"] == 6
    summary = stdout(cell_with(nb, "assert net.mlp.fused"))
    assert "onnx: ok" in summary and "pt2: ok" in summary and "mlp.fused" in summary
