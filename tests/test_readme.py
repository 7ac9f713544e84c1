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
    assert "enn_nb.reference" in inspected and "sha256" in inspected
    exported = _text(outputs["%%enn_export model --out exports"])
    assert "onnx" in exported and "ok" in exported
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs["import enn_nb"])

    from enn_nb.reports.html import to_html

    to_html(artifacts_dir / "readme_notebook.ipynb", artifacts_dir / "readme_notebook.html")


def _text(outputs: list) -> str:
    parts = []
    for o in outputs:
        if o.output_type == "stream":
            parts.append(o.text)
        elif "data" in o:
            parts.append(o.data.get("text/plain", ""))
    return "".join(parts).strip()
