"""notebooks/03_wizard.ipynb, executed for real through a Jupyter kernel (nbclient)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "03_wizard.ipynb"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def test_the_notebook_is_stored_without_outputs_and_with_a_python3_kernelspec():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.slow
@pytest.mark.notebook
def test_the_wizard_notebook_runs_and_exports(tmp_path):
    work = tmp_path / "nb"
    work.mkdir()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    nb = nbformat.read(work / NOTEBOOK.name, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}}
    )
    client.execute()  # raises CellExecutionError on any failing cell

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    widget_views = [o for o in outputs if WIDGET_MIME in o.get("data", {})]
    assert widget_views, "the wizard did not display as a widget"
    assert json.loads(json.dumps(widget_views[0]["data"][WIDGET_MIME]))["model_id"]

    streams = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "results" in streams  # the scripted run reached the results step
    htmls = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    report_html = next(h for h in htmls if "enn-export-report" in h)
    assert "onnx" in report_html
    assert ">ok<" in report_html  # converted now: conftest gives every test an empty export cache
    out = work / "wizard_exports"
    assert (out / "model.onnx").is_file() and (out / "model.onnx.enn.json").is_file()
    sidecar = json.loads((out / "model.onnx.enn.json").read_text())
    assert sidecar["status"] == "ok" and sidecar["backend"] == "onnx"
