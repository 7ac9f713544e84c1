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
    from enn_nb.surfaces.cli import main

    out = tmp_path_factory.mktemp("report")
    _git_repo(out)  # the report records the commit of the working tree it is written in
    code = main(["report", "export_report", "-p", f"checkpoint={tiny_checkpoint}", "-p", "backends=[onnx, pt2]",
                 "-p", "batch_sizes=[1, 4]", "-p", "title=Tiny export", "-p", "author=CI bot",
                 "--out", str(out), "--html", "--no-progress"])
    return code, out


def _git_repo(folder: Path) -> None:
    import subprocess

    git = ["git", "-C", str(folder), "-c", "user.name=CI", "-c", "user.email=ci@example.invalid"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "start"], check=True)


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
    assert verdict["headline"].startswith("2 verified")
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
              if "text/html" in o.get("data", {}) and "latency, batch 1" in o["data"]["text/html"]]
    assert len(tables) == 1
    text = tables[0]["text/plain"]
    rows = {line.split()[0]: line for line in text.splitlines()[1:]}
    assert {"onnx", "pt2", "eager"} <= set(rows)
    # the session's export cache starts empty (conftest): the first export of this checkpoint is not a cache hit
    assert re.search(r"onnx\s+ok\s+verified\s+model\.onnx\s+[\d.]+ KiB\s+\d\.\d\de-\d\d", rows["onnx"]), rows["onnx"]
    # compact cells (a number and the speed-up, or — when the machine was too busy); the detail is the tooltip
    assert "latency, batch 4" in text and re.search(r"(\S+ ms · \S+x|—)\s*$", rows["onnx"]), rows["onnx"]
    assert "±" not in text and "[noisy]" not in text
    assert re.search(r"title='[\d.e-]+ ms ±[\d.e-]+ IQR, batch 4, 1 thread", tables[0]["text/html"])
    assert tables[0]["text/html"].count("class='enn-nb-footnote'") == 1  # legend, threads and host: one footnote
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
    assert "enn-nb report export_report \\\n    -p checkpoint=" in page  # one option per line


def test_zero_tolerance_forces_a_mismatch_and_the_gate_fails(tiny_checkpoint, tmp_path, capsys):
    """Also the run with ``quantize`` set (one kernel for both): fp32 tolerances do not apply to the int8 row,
    which gets its own row in the Quantization section, measured against the float model."""
    import nbformat

    from enn_nb.surfaces.cli import main

    code = main(["report", "export_report", "-p", f"checkpoint={tiny_checkpoint}", "-p", "backends=[onnx]",
                 "-p", "atol=0", "-p", "rtol=0", "-p", "batch_sizes=[2]", "-p", "quantize=int8",
                 "-p", "allow_degraded=true", "--out", str(tmp_path), "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    expected = r"enn-nb report: FAIL: onnx: mismatch \(max abs error \S+ at batch \d+ beyond atol=0, rtol=0\)"
    assert re.search(expected, err), err
    assert "onnx:int8" not in err  # not held to atol=0; over its budget or not, allowed
    meta = metadata(tmp_path / "export_report.ipynb")["enn_nb"]
    assert meta["verdict"]["ok"] is False and meta["verdict"]["backends"]["onnx"]["status"] == "mismatch"
    assert meta["sidecars"]["onnx"]["content"]["status"] == "mismatch"
    assert meta["sidecars"]["onnx:int8"]["content"]["quantization"]["drawn_inputs"] is True

    nb = nbformat.read(tmp_path / "export_report.ipynb", as_version=4)
    start = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith("## Quantization"))
    shown = [o for i, o in outputs(tmp_path / "export_report.ipynb") if i > start]
    shown = shown[:next(i for i, o in enumerate(shown) if "image/png" in o.get("data", {})) + 1]
    table = next(o["data"] for o in shown if "Quantized artifacts" in o.get("data", {}).get("text/plain", ""))
    rows = [line.split() for line in table["text/plain"].splitlines() if line.startswith("onnx ")]
    assert len(rows) == 1 and rows[0][:3] in (["onnx", "int8", "ok"], ["onnx", "int8", "degraded"]), rows
    assert "drawn" in rows[0][-1] and re.search(r"\d+\.\d\d%", table["text/plain"])  # RMSE / std, measured
    assert "WARNING: calibrated and evaluated on inputs drawn" in table["text/plain"]
    assert base64.b64decode(shown[-1]["data"]["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"  # size vs error plot


def test_batch_runs_one_report_per_checkpoint_and_indexes_verdicts(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from enn_nb.surfaces.cli import main

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
    verdict = broken["enn_nb"]["verdict"]  # it failed before the export's verdict: the FAIL box names the cause
    assert verdict["ok"] is False and verdict["headline"].startswith("The report stopped in cell ")
    assert "broken.safetensors" in verdict["failures"][0]


# -- a report worth sharing ------------------------------------------------------------------------
SECTIONS = ["Artifacts", "Plots", "Quantization", "Model", "Environment", "Export-safe deviations",
            "Checkpoint manifest", "Sidecars", "Reproduce"]  # fmt: skip


def test_sections_come_verdict_first_then_results_then_details(passed):
    import nbformat

    _, out = passed
    nb = nbformat.read(out / "export_report.ipynb", as_version=4)
    headings = [c.source.splitlines()[0][3:] for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## ")]
    assert headings == SECTIONS
    # every code cell of the template is folded in JupyterLab too (the parameter cells keep theirs)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if cell.cell_type == "code" and "parameters" not in tags and "injected-parameters" not in tags:
            assert cell.metadata["jupyter"]["source_hidden"] is True, cell.source[:60]

    page = (out / "export_report.html").read_text(encoding="utf-8")
    positions = [page.index(f">{name}<") for name in SECTIONS]  # heading text, as nbconvert renders it
    assert positions == sorted(positions)
    assert page.index('data-verdict="pass"') < positions[0]
    assert page.index("data:image/png;base64") < page.index(">Model<")  # plots before the details


def test_html_hides_the_code_by_default(passed):
    _, out = passed
    page = (out / "export_report.html").read_text(encoding="utf-8")
    for code in ("rs.checkpoint_or_reference(", "display(rs.artifact_table", "checkpoint = ", "injected"):
        assert code not in page, code
    assert 'class="highlight' not in page and "In&nbsp;[" not in page  # no code block, no prompt


def test_model_summary_signature_and_environment(passed, tiny_checkpoint):
    import enn_nb

    _, out = passed
    page = (out / "export_report.html").read_text(encoding="utf-8")
    manifest = enn_nb.inspect(tiny_checkpoint)
    spec = manifest.spec
    assert f"{manifest.parameter_count:,} values in {len(manifest.tensors)} tensors" in page
    assert all(task["name"] in page for task in spec.tasks)
    # the signature: input [batch, in_dim], output [batch, *out_shape], example shapes at the report's batches
    assert f"[batch, {spec.in_dim}]" in page and f"[batch, {', '.join(map(str, spec.out_shape))}]" in page
    assert f"[1, {spec.in_dim}], [4, {spec.in_dim}]" in page
    # the environment
    import onnxruntime
    import torch

    assert f"torch {torch.__version__}" in page and f"onnxruntime {onnxruntime.__version__}" in page
    assert "CPUExecutionProvider" in page and "intra-op" in page
    import subprocess

    sha = subprocess.run(["git", "-C", str(out), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert f"{sha} on main" in page and "uncommitted changes not checked" in page  # read without running git
    # the tensor table is folded, one click away
    folded = page.split('<details class="enn-nb-folded">', 1)
    assert len(folded) == 2 and "enn-nb-tensors" in folded[1] and "enn-nb-tensors" not in folded[0]


def test_reproduce_names_the_real_report_folder(passed):
    import shlex

    _, out = passed
    text = [o for _, o in outputs(out / "export_report.ipynb") if o.get("name") == "stdout"][-1]["text"].strip()
    assert "REPORT_DIR" not in text and text.endswith(f"--out {shlex.quote(str(out.resolve()))} \\\n    --html")
    assert all(line.endswith(" \\") for line in text.splitlines()[:-1])  # a shell reads it as one command
    args = [arg for arg in shlex.split(text) if arg != "\n"]  # shlex keeps the continued newlines
    assert args[:3] == ["enn-nb", "report", "export_report"] and "backends=[onnx, pt2]" in args


@pytest.mark.browser
def test_the_shared_html_opens_on_the_verdict_and_the_artifacts(passed, tmp_path, artifacts_dir):
    from tests.fixtures.browser import chromium_page

    _, out = passed
    shutil.copy(out / "export_report.html", artifacts_dir / "export_report.html")
    with chromium_page(tmp_path / "chromium-profile", width=1100, height=900) as page:
        page.goto((out / "export_report.html").resolve().as_uri())
        # what a colleague sees without scrolling: the title, the verdict and the artifact table
        assert page.get_by_text("Tiny export").first.bounding_box()["y"] < 200
        assert page.locator("[data-verdict='pass']").first.bounding_box()["y"] < 400
        table = page.get_by_text("latency, batch 1").first.bounding_box()["y"]
        assert table < 900 and table < page.get_by_role("heading", name="Environment").bounding_box()["y"]
        # folded until clicked: the tensor table and the sidecars
        tensors = page.locator(".enn-nb-folded .enn-nb-tensors").first
        assert not tensors.is_visible()
        page.locator(".enn-nb-folded summary").first.click()
        assert tensors.is_visible()
        page.locator(".enn-nb-folded summary").first.click()
        page.screenshot(path=str(artifacts_dir / "export_report.png"), full_page=True)
