"""Render an executed report notebook as one self-contained HTML file (nbconvert, images inlined)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from enn_nb._fs import write_text
from enn_nb._optional import require
from enn_nb.errors import ReportError


def to_html(
    notebook: str | os.PathLike[str], html_path: str | os.PathLike[str] | None = None, *, no_input: bool = False
) -> Path:
    """Write ``notebook`` as HTML next to it (or at ``html_path``) and return the HTML file's path.

    Args:
        notebook: an executed ``.ipynb``.
        html_path: where to write; defaults to the notebook's path with ``.html``.
        no_input: leave code cells' source and prompts out, keeping their outputs and the markdown.

    Raises:
        ReportError: nbconvert could not render the notebook (the cause is chained).
    """

    nbconvert = require("nbconvert", purpose="HTML reports")
    nbformat = require("nbformat", purpose="HTML reports")
    src = Path(notebook)
    dst = Path(html_path) if html_path is not None else src.with_suffix(".html")
    nb = _without_logs(nbformat.read(src, as_version=4))
    if no_input:  # without their code, cells that print nothing (the parameter cells) are empty boxes
        nb.cells = [c for c in nb.cells if c.cell_type != "code" or c.get("outputs")]
    exporter = nbconvert.HTMLExporter()
    exporter.exclude_input = no_input
    exporter.exclude_input_prompt = no_input
    exporter.exclude_output_prompt = no_input
    try:
        body, _resources = exporter.from_notebook_node(nb, resources={"metadata": {"name": _title(nb, src)}})
    except Exception as exc:
        raise ReportError(f"nbconvert could not render `{src}` as HTML: {type(exc).__name__}: {exc}") from exc
    write_text(dst, body)
    return dst


#: Cells tagged so keep their log streams (converter warnings...) in the .ipynb but not in the HTML.
LOG_TAG = "enn-nb-log"


def _without_logs(nb: Any) -> Any:
    for cell in nb.cells:
        if LOG_TAG in cell.get("metadata", {}).get("tags", []) and cell.get("outputs"):
            cell.outputs = [o for o in cell.outputs if o.get("output_type") != "stream"]
    return nb


def _title(nb: object, src: Path) -> str:
    meta = getattr(nb, "metadata", {}) or {}
    params = (meta.get("enn_nb") or {}).get("parameters") or {}
    return str(params.get("title") or src.stem)
