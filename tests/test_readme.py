"""The README's notebook example runs exactly as written: each ```python block is one cell of a real kernel."""

from __future__ import annotations

import re
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def readme_cells() -> list[str]:
    """The README's ```python blocks, in order: each one is a notebook cell."""
    return [block.rstrip("\n") for block in FENCE.findall(README.read_text(encoding="utf-8"))]


def test_the_blocks_show_where_cells_break() -> None:
    cells = readme_cells()
    assert len(cells) >= 4
    # a cell magic works only on a cell's first line: its block must start with it
    for cell in cells:
        assert "%%" not in cell or cell.startswith("%%"), cell
        # a trailing comment after a line magic is passed to it as arguments (a UsageError)
        for line in cell.splitlines():
            if line.startswith("%") and not line.startswith("%%"):
                assert "#" not in line, f"a comment on a line magic's line: {line!r}"


@pytest.mark.notebook
@pytest.mark.slow
def test_readme_blocks_run_in_a_kernel_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, artifacts_dir) -> None:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    monkeypatch.setenv("ENN_NB_CACHE_DIR", str(tmp_path / "enn_cache"))  # really convert, not a cache hit
    monkeypatch.setenv("JPY_SESSION_NAME", str(tmp_path / "readme.ipynb"))
    cells = readme_cells()
    nb = new_notebook(
        cells=[new_markdown_cell("# The README's example\nEach code cell is one ```python block of README.md.")]
        + [new_code_cell(source) for source in cells],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    client = NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except CellExecutionError as exc:  # the message holds the cell's source and the traceback
        pytest.fail(f"a README block failed in the kernel:\n{exc}")
    finally:
        nbformat.write(nb, artifacts_dir / "readme_notebook.ipynb")

    # what each cell says it does happened, and each cell shows something readable
    outputs = {c.source.splitlines()[0]: c.outputs for c in nb.cells if c.cell_type == "code"}
    assert (tmp_path / "checkpoints" / "model.safetensors").is_file()
    for artifact in ("model.onnx", "model.ort", "model.pt2"):
        assert (tmp_path / "exports" / artifact).is_file(), artifact
        assert (tmp_path / "exports" / f"{artifact}.enn.json").is_file(), artifact
    saved = _text(outputs["%enn_save model checkpoints/model.safetensors --meta run=42"])
    assert saved.count("\n") == 0 and "model.safetensors" in saved  # one line, not the whole manifest
    inspected = _text(outputs["# The manifest from the file's header only: no tensor is read."])
    assert "enn_nb.reference" in inspected and "blake3:" in inspected
    exported = _text(outputs["%%enn_export model --out exports"])
    assert "onnx" in exported and "ok" in exported
    # finished progress bars become their final state as HTML and text (nbconvert HTML, GitHub), not "0%"
    bars = [o.data["text/plain"] for o in outputs["%%enn_export model --out exports"]
            if "enn-nb-progress" in o.get("data", {}).get("text/html", "")]
    assert len(bars) == 4 and all("100%" in bar and " ok" in bar for bar in bars), bars
    assert any(bar.startswith("[1/3] onnx: 100%") for bar in bars), bars
    wizard = [o.data for o in outputs["import enn_nb"] if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(wizard) == 1
    assert wizard[0]["text/plain"].startswith("enn_nb export wizard, step 1 of 4 (model); backends: onnx, ort, pt2")

    from enn_nb.surfaces.reports.html import to_html

    page = to_html(artifacts_dir / "readme_notebook.ipynb", artifacts_dir / "readme_notebook.html", no_input=False)
    from tests.fixtures.browser import screenshot_html

    screenshot_html(page, artifacts_dir / "readme_notebook.png", tmp_path / "chromium-profile")  # to look at


def _text(outputs: list) -> str:
    parts = []
    for o in outputs:
        if o.output_type == "stream":
            parts.append(o.text)
        elif "data" in o:
            parts.append(o.data.get("text/plain", ""))
    return "".join(parts).strip()


# -- the magics' own examples (`%enn_save?` shows them) ------------------------------------------------
def magic_examples() -> list[tuple[str, str]]:
    """``(magic, cell)`` for each ``Example::`` block of the magics' docstrings, in the class's order."""
    import inspect
    import textwrap

    from enn_nb.surfaces.notebook.magics import EnnMagics

    found = []
    for name, method in inspect.getmembers(EnnMagics, inspect.isfunction):
        doc = inspect.getdoc(method) or ""
        if "Example::" in doc:
            block = doc.split("Example::", 1)[1].split("\n\n", 2)[1]
            found.append((name, textwrap.dedent(block).strip()))
    order = ["enn_save", "enn_inspect", "enn_load", "enn_backends", "enn_export", "enn_wizard"]
    return sorted(found, key=lambda item: order.index(item[0]))


def test_every_magic_has_an_example() -> None:
    assert [name for name, _ in magic_examples()] == [
        "enn_save", "enn_inspect", "enn_load", "enn_backends", "enn_export", "enn_wizard"]  # fmt: skip


@pytest.mark.slow
def test_the_magics_examples_run_as_written(ip, trained_model) -> None:
    """Each example is one cell, run in a real shell after `model = train_reference(seed=0)`."""
    from tests.fixtures.magics import run_cell

    ip.user_ns["model"] = trained_model
    results = {name: run_cell(ip, cell) for name, cell in magic_examples()}
    assert (Path.cwd() / "checkpoints" / "model_dcp").is_dir()
    assert results["enn_inspect"].spec.builder == "enn_nb.reference"
    assert results["enn_load"] is ip.user_ns["restored"] and not ip.user_ns["restored"].training
    report = ip.user_ns["report"]
    assert [(r.backend, r.status) for r in report.results] == [("onnx", "ok"), ("pt2", "ok")]
    assert type(results["enn_wizard"]).__name__ == "Wizard"
