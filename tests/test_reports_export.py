"""export_report executed for real (papermill, a kernel, ONNX + PT2) on a tiny checkpoint; the CI gate; batches."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest

from tests.fixtures.models import tiny_reference
from tests.fixtures.notebooks import metadata, outputs


pytestmark = [pytest.mark.slow, pytest.mark.notebook]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import enn_nb

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    enn_nb.save(tiny_reference(), path, metadata={"purpose": "report tests"})
    return path


@pytest.fixture(scope="module")
def passed(tiny_checkpoint, tmp_path_factory):
    from enn_nb.cli import main

    out = tmp_path_factory.mktemp("report")
    code = main(["report", "export_report", "-p", f"checkpoint={tiny_checkpoint}", "-p", "backends=[onnx, pt2]",
                 "-p", "batch_sizes=[1, 4]", "-p", "title=Tiny export", "-p", "author=CI bot",
                 "--out", str(out), "--html", "--no-progress"])
    return code, out


def test_report_passes_and_writes_notebook_html_artifacts_and_sidecars(passed):
    code, out = passed
    assert code == 0
    for name in ("export_report.ipynb", "export_report.html"):
        assert (out / name).is_file()
    arts = out / "export_report-artifacts"
    for name in ("model.onnx", "model.onnx.enn.json", "model.pt2", "model.pt2.enn.json", "model.vectors.safetensors"):
        assert (arts / name).is_file(), name


def test_header_and_verdict_are_the_first_outputs(passed):
    _, out = passed
    first, second = [o for _, o in outputs(out / "export_report.ipynb")][:2]
    assert "Tiny export" in first["data"]["text/html"] and "CI bot" in first["data"]["text/html"]
    verdict = second["data"]["application/vnd.enn-nb.verdict+json"]
    assert verdict["ok"] is True and verdict["failures"] == []
    assert {k: v["status"] for k, v in verdict["backends"].items()} == {"onnx": "ok", "pt2": "ok"}
    assert verdict["headline"].startswith("2 of 2 backends")
    assert second["data"]["text/plain"].startswith("PASS")


def test_sidecars_are_attached_to_the_notebook_metadata(passed):
    _, out = passed
    meta = metadata(out / "export_report.ipynb")["enn_nb"]
    assert meta["template"] == "export_report" and meta["verdict"]["ok"] is True
    assert meta["parameters"]["backends"] == ["onnx", "pt2"] and meta["parameters"]["batch_sizes"] == [1, 4]
    assert set(meta["sidecars"]) == {"onnx", "pt2"}
    for backend, entry in meta["sidecars"].items():
        on_disk = json.loads((out / entry["path"]).read_text())
        assert entry["content"] == on_disk
        assert on_disk["schema"] == "enn_nb.export/1" and on_disk["backend"] == backend and on_disk["status"] == "ok"


def test_plots_are_png_images(passed):
    _, out = passed
    images = [o["data"]["image/png"] for _, o in outputs(out / "export_report.ipynb")
              if "image/png" in o.get("data", {})]
    assert len(images) == 4  # parity, latency at batch 1 and 4, size
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)


def test_artifact_table_has_status_error_and_latency_per_batch(passed):
    _, out = passed
    tables = [o["data"] for _, o in outputs(out / "export_report.ipynb")
              if "text/html" in o.get("data", {}) and "ms @ 1 (vs eager)" in o["data"]["text/html"]]
    assert len(tables) == 1
    text = tables[0]["text/plain"]
    rows = {line.split()[0]: line for line in text.splitlines()[1:]}
    assert {"onnx", "pt2", "eager"} <= set(rows)
    assert re.search(r"onnx\s+ok\s+model\.onnx\s+[\d.]+ KiB\s+\d\.\d\de-\d\d", rows["onnx"]), rows["onnx"]
    assert "ms @ 4 (vs eager)" in text
    assert "href='export_report-artifacts/model.onnx'" in tables[0]["text/html"]


def test_html_report_has_verdict_collapsed_sidecars_and_working_links(passed):
    _, out = passed
    page = (out / "export_report.html").read_text(encoding="utf-8")
    assert page.index("data-verdict=\"pass\"") < page.index("enn-nb-manifest")  # verdict above the details
    assert page.count("<details class=\"enn-nb-sidecar\"") == 2
    links = set(re.findall(r'href="(export_report-artifacts/[^"]+)"', page))
    assert "export_report-artifacts/model.onnx.enn.json" in links
    assert all((out / link).exists() for link in links)
    assert "custom_kernel" in page and "attention" in page  # export-safe deviations of the fast paths
    assert "flex_attention called without torch.compile" not in page  # converter log kept out of the HTML
    assert "enn-nb report export_report -p checkpoint=" in page


def test_zero_tolerance_forces_a_mismatch_and_the_gate_fails(tiny_checkpoint, tmp_path, capsys):
    from enn_nb.cli import main

    code = main(["report", "export_report", "-p", f"checkpoint={tiny_checkpoint}", "-p", "backends=[onnx]",
                 "-p", "atol=0", "-p", "rtol=0", "-p", "batch_sizes=[2]", "--out", str(tmp_path), "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    expected = r"enn-nb report: FAIL: onnx: mismatch \(max abs error \S+ at batch \d+ beyond atol=0, rtol=0\)"
    assert re.search(expected, err), err
    meta = metadata(tmp_path / "export_report.ipynb")["enn_nb"]
    assert meta["verdict"]["ok"] is False and meta["verdict"]["backends"]["onnx"]["status"] == "mismatch"
    assert meta["sidecars"]["onnx"]["content"]["status"] == "mismatch"


def test_batch_runs_one_report_per_checkpoint_and_indexes_verdicts(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from enn_nb.cli import main

    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    shutil.copy2(tiny_checkpoint, ckpts / "good.safetensors")
    (ckpts / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    monkeypatch.chdir(tmp_path)
    code = main(["report", "export_report", "--each", "ckpts/*.safetensors", "-p", "backends=[pt2]",
                 "-p", "batch_sizes=[2]", "--out", "nightly", "--html", "--no-progress"])
    assert code == 1  # one checkpoint could not be reported on
    err = capsys.readouterr().err
    assert "FAIL: ckpts/broken.safetensors:" in err
    index = json.loads((tmp_path / "nightly" / "index.json").read_text())
    status = {Path(r["source"]).name: r["status"] for r in index["reports"]}
    assert status == {"broken.safetensors": "error", "good.safetensors": "pass"}
    page = (tmp_path / "nightly" / "index.html").read_text(encoding="utf-8")
    assert "data-status='pass'" in page and "data-status='error'" in page
    for href in re.findall(r"href='([^']+)'", page):
        assert (tmp_path / "nightly" / href).is_file(), href
    assert (tmp_path / "nightly" / "export_report-good_safetensors.html").is_file()
    assert (tmp_path / "nightly" / "export_report-good_safetensors-artifacts" / "model.pt2.enn.json").is_file()
    broken = metadata(tmp_path / "nightly" / "export_report-broken_safetensors.ipynb")
    assert broken["enn_nb"]["verdict"] is None  # it failed before a verdict: kept for inspection
