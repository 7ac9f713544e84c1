"""notebooks/03_wizard.ipynb as users run it: in JupyterLab, in Debian's Chromium, clicked through an ONNX export."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from tests.fixtures.browser import chromium_page
from tests.fixtures.jupyterlab import jupyterlab

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "03_wizard.ipynb"


@pytest.fixture
def lab(tmp_path):
    pytest.importorskip("jupyterlab")
    # an empty export cache: the wizard really converts
    with jupyterlab(tmp_path, env={"ENN_NB_CACHE_DIR": str(tmp_path / "enn_cache")}) as server:
        shutil.copy(NOTEBOOK, server.root / NOTEBOOK.name)
        yield server


def test_the_wizard_notebook_in_jupyterlab_exports_to_onnx(lab, tmp_path, artifacts_dir):
    started = time.monotonic()
    with chromium_page(tmp_path / "chromium-profile", height=1400) as page:
        page.set_default_timeout(60_000)
        try:
            _drive(page, lab, artifacts_dir)
        except Exception:
            page.screenshot(path=str(artifacts_dir / "lab_wizard_failure.png"), full_page=True)
            print(lab.log.read_text()[-5000:])
            raise
    elapsed = time.monotonic() - started

    out = lab.root / "wizard_exports"
    assert (out / "model.onnx").stat().st_size > 0
    sidecar = json.loads((out / "model.onnx.enn.json").read_text())
    assert sidecar["status"] == "ok" and sidecar["parity"]["status"] == "passed"
    # JupyterLab told the kernel which notebook it runs: the provenance names it, and says how it knows
    assert sidecar["provenance"]["notebook"].endswith("03_wizard.ipynb"), sidecar["provenance"]
    # ipykernel copies Jupyter Server's JPY_SESSION_NAME into `__session__`, which provenance reads first
    assert sidecar["provenance"]["notebook_source"] == "__session__"
    print(f"JupyterLab wizard test: {elapsed:.1f} s in the browser")


def _drive(page, lab, artifacts_dir) -> None:
    page.goto(lab.notebook_url(NOTEBOOK.name), timeout=120_000)
    lab.wait_for_kernel()
    cells = page.locator(".jp-Notebook .jp-Cell")
    cells.nth(4).wait_for()  # JupyterLab renders cells progressively
    # run the two cells that train a model and open the wizard as a user does, Shift+Enter on each
    # (the last cell would click the wizard through from code)
    cells.nth(1).locator(".jp-InputPrompt").click()  # selects the cell, in command mode
    page.keyboard.press("Shift+Enter")
    page.keyboard.press("Shift+Enter")
    page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt", has_text="[*]").first.wait_for()  # it runs

    page.get_by_text("enn_nb export wizard").wait_for(timeout=180_000)  # after torch import and training
    assert page.get_by_text("ReferenceModel").first.is_visible()  # the model step shows the spec
    next_button = page.locator("button.enn-wizard-next")
    next_button.click()

    onnx = page.get_by_role("checkbox", name="onnx", exact=True)
    onnx.wait_for()
    assert onnx.is_checked()  # the notebook asked for onnx
    slow = page.locator(".enn-wizard-slow")
    assert slow.count() >= 1 and "a minute or more" in slow.first.inner_text()
    # a real conversion, not a hit of the export cache
    page.get_by_role("checkbox", name="reuse identical earlier exports (cache)").uncheck()
    next_button.click()
    page.get_by_text("ready: onnx (press Run)").wait_for()

    page.locator("button.enn-wizard-run").click()
    table = page.locator("table.enn-wizard-results")
    table.wait_for(timeout=300_000)
    row = table.locator("tr[data-backend='onnx']")
    cells = row.locator("td")
    assert cells.nth(1).inner_text() == "ok · verified"
    assert "model.onnx" in cells.nth(2).inner_text()
    assert "(batch 8)" in cells.nth(5).inner_text()  # latency names its batch size
    page.locator(".enn-wizard-links a", has_text="model.onnx.enn.json").wait_for()
    page.locator(".enn-wizard img").nth(2).wait_for()  # parity, latency and size plots
    page.locator(".enn-wizard").first.scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts_dir / "lab_wizard_results.png"), full_page=True)
