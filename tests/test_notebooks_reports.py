"""notebooks/04_reports.ipynb run end to end through papermill: it runs reports in kernels of their own."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.fixtures.notebooks import cell_with, check_stored, execute, html, metadata, stdout


NAME = "04_reports.ipynb"
VERDICT_MIME = "application/vnd.enn-nb.verdict+json"


def test_stored_without_outputs_with_a_kernelspec_and_parameters() -> None:
    check_stored(NAME)


def _links_resolve(page: str, base: Path) -> list[str]:
    hrefs = re.findall(r"href='([^']+)'", page)
    assert hrefs, page[:500]
    missing = [h for h in hrefs if not (base / h).is_file()]
    assert not missing, missing
    return hrefs


@pytest.mark.notebook
@pytest.mark.slow
def test_reports_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Short training and one batch size keep it quick; the four reports still run in kernels of their own.
    nb = execute(NAME, tmp_path, monkeypatch, backends="onnx,pt2", batch_sizes=[2], out_dir="rep", steps=30)
    out = tmp_path / "rep"
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["seed0.safetensors", "seed1.safetensors"]

    # the export report: executed notebook, HTML, artifacts, and the verdict it computed
    exported = out / "export"
    for name in ("export_report.ipynb", "export_report.html"):
        assert (exported / name).is_file(), name
    for name in ("model.onnx", "model.onnx.enn.json", "model.pt2", "model.pt2.enn.json"):
        assert (exported / "export_report-artifacts" / name).is_file(), name
    record = metadata(exported / "export_report.ipynb")["enn_nb"]
    assert record["parameters"]["checkpoint"] == str((checkpoints / "seed0.safetensors").resolve())
    assert record["parameters"]["batch_sizes"] == [2] and record["parameters"]["backends"] == "onnx,pt2"
    assert record["verdict"]["ok"] is True and set(record["sidecars"]) == {"onnx", "pt2"}
    assert "Export report: seed 0" in (exported / "export_report.html").read_text(encoding="utf-8")

    # ... shown in this notebook: the verdict, one line per backend, the gate and where the HTML is
    shown = cell_with(nb, "display(result.verdict)")
    (verdict,) = [o.data[VERDICT_MIME] for o in shown.outputs if VERDICT_MIME in o.get("data", {})]
    assert verdict == record["verdict"]
    assert {k: v["status"] for k, v in verdict["backends"].items()} == {"onnx": "ok", "pt2": "ok"}
    text = stdout(shown)
    assert re.search(r"^onnx: ok, max abs error \d\.\d\de-\d\d$", text, re.M), text
    assert "gate passed: True" in text
    assert f"HTML: {(exported / 'export_report.html').resolve()}" in text
    result_html = html(cell_with(nb, '"export_report",\n    out / "export"'))
    assert "<b>PASS</b>" in result_html
    assert "rep/export/export_report.html" in _links_resolve(result_html, tmp_path)  # relative to the notebook
    assert "sidecars: {'onnx': 'export_report-artifacts/model.onnx.enn.json'" in stdout(cell_with(nb, "record = "))

    # the comparison of the two checkpoints
    compared = out / "compare"
    assert (compared / "checkpoint_report.ipynb").is_file()
    page = (compared / "checkpoint_report.html").read_text(encoding="utf-8")
    assert "Seed 0 vs seed 1" in page and "seed0.safetensors vs seed1.safetensors" in page
    assert "Tensors changed" in page and "Metadata changes" in page
    assert stdout(cell_with(nb, '"checkpoint_report"')).startswith("PASS: ")  # no gate: it ran to the end

    # the batch: one export report per checkpoint, and the index linking them with their verdicts
    nightly = out / "nightly"
    index = json.loads((nightly / "index.json").read_text(encoding="utf-8"))
    assert index["template"] == "export_report"
    assert {Path(r["source"]).name: r["status"] for r in index["reports"]} == {
        "seed0.safetensors": "pass",
        "seed1.safetensors": "pass",
    }
    for entry in index["reports"]:
        assert (nightly / entry["notebook"]).is_file() and (nightly / entry["html"]).is_file()
        assert entry["headline"].startswith("2 verified")
    index_page = (nightly / "index.html").read_text(encoding="utf-8")
    assert index_page.count("data-status='pass'") == 2
    _links_resolve(index_page, nightly)
    shown = html(cell_with(nb, "batch = run_batch("))
    assert shown.count("data-status='pass'") == 2
    assert "rep/nightly/export_report-seed1_safetensors.html" in _links_resolve(shown, tmp_path)
    summary = stdout(cell_with(nb, "print(batch)"))
    assert summary.startswith("2 of 2 reports passed") and "all passed: True" in summary
