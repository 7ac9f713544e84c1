"""The wizard in a real browser: Voilà serves a notebook calling it, Debian's Chromium clicks through an ONNX export.

The same run ticks the quantize mode `int8-weights` (onnxruntime's dynamic quantization needs no
calibration and takes seconds), so the targets step's quantize widgets are exercised in the browser too.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.fixtures.browser import chromium_page
from tests.fixtures.servers import free_port, serve

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NOTEBOOK_CELLS = [
    "import enn_nb\n"
    "from enn_nb.reference import train_reference\n"
    "model = train_reference(seed=0, steps=20)  # a quickly trained reference model",
    'enn_nb.wizard(model="model", out_dir="exports", batch_range=(1, 4, 16))',
]


def _write_notebook(path: Path) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(
        cells=[new_code_cell(src) for src in NOTEBOOK_CELLS],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    nbformat.write(nb, path)


@pytest.fixture
def voila_url(tmp_path):
    """Voilà on 127.0.0.1 serving a notebook that opens the wizard; its kernel dies with it."""
    pytest.importorskip("voila")
    work = tmp_path / "work"
    work.mkdir()
    _write_notebook(work / "wizard.ipynb")
    port = free_port()
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [sys.executable, "-m", "voila", "wizard.ipynb", "--no-browser", f"--port={port}",
           "--Voila.ip=127.0.0.1", "--VoilaConfiguration.show_tracebacks=True"]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "voila.log"
    # a static file answers without starting a kernel (a GET of / would start one)
    with serve(cmd, cwd=work, env=env, log=log, ready_url=f"{base}/voila/static/voila.js"):
        yield base + "/", work, log


@pytest.fixture
def browser_page(tmp_path):
    with chromium_page(tmp_path / "chromium-profile") as page:
        yield page


def test_click_through_an_onnx_export_in_chromium(voila_url, browser_page, artifacts_dir):
    url, work, voila_log = voila_url
    page = browser_page
    page.set_default_timeout(60_000)
    try:
        page.goto(url, timeout=180_000)
        # Voilà runs the notebook (imports torch, trains 20 steps) before the wizard appears.
        page.get_by_text("enn_nb export wizard").wait_for(timeout=300_000)
        assert page.get_by_role("combobox").first.input_value() == "model"  # the variable is preselected
        assert page.get_by_text("ReferenceModel").first.is_visible()  # its spec is shown

        # by class: a button's accessible name also holds its icon glyph
        next_button = page.locator("button.enn-wizard-next")
        next_button.click()
        onnx = page.get_by_role("checkbox", name="onnx", exact=True)
        onnx.wait_for()
        # the fast backends come preselected; untick them all: Next without a backend is blocked inline
        for name in ("onnx", "ort", "pt2"):
            box = page.get_by_role("checkbox", name=name, exact=True)
            if box.is_checked():
                box.uncheck()
        next_button.click()
        page.get_by_text("No backend chosen").wait_for()
        onnx.check()
        page.get_by_role("checkbox", name="int8-weights", exact=True).check()
        # a real conversion, not a hit of the export cache an earlier run filled
        page.get_by_role("checkbox", name="reuse identical earlier exports (cache)").uncheck()
        page.screenshot(path=str(artifacts_dir / "wizard_targets.png"), full_page=True)
        next_button.click()

        page.locator("button.enn-wizard-run").click()
        # progress and log flow while the export runs in the kernel's background thread
        page.get_by_text("shared: capture -> ok").wait_for(timeout=300_000)
        page.screenshot(path=str(artifacts_dir / "wizard_run.png"), full_page=True)
        table = page.locator("table.enn-wizard-results")
        table.wait_for(timeout=600_000)
        row = table.locator("tr[data-backend='onnx']")
        assert row.locator("td").nth(1).inner_text() == "ok · verified"
        assert "model.onnx" in row.locator("td").nth(2).inner_text()
        assert "ms" in row.locator("td").nth(5).inner_text()  # latency measured against eager
        quantized = table.locator("tr[data-backend='onnx:int8-weights']")
        assert quantized.locator("td").nth(1).inner_text().startswith("ok")  # within the default budget
        assert "model.int8-weights.onnx" in quantized.locator("td").nth(2).inner_text()
        page.locator("img").nth(3).wait_for()  # parity, latency, size and the quantization trade-off
        assert page.locator(".enn-wizard-links a", has_text="model.onnx.enn.json").count() == 1
        page.screenshot(path=str(artifacts_dir / "wizard_results.png"), full_page=True)
    except Exception:
        page.screenshot(path=str(artifacts_dir / "wizard_failure.png"), full_page=True)
        print(voila_log.read_text()[-5000:])
        raise

    out = work / "exports"
    assert (out / "model.onnx").is_file() and (out / "model.onnx").stat().st_size > 0
    assert (out / "model.onnx.enn.json").is_file()
    side = json.loads((out / "model.int8-weights.onnx.enn.json").read_text())
    assert side["quantization"]["mode"] == "int8-weights"
    assert side["quantization"]["artifact"]["int8_weight_fraction"] > 0
