"""Helpers of the report tests: tiny checkpoints, small throwaway templates, reading executed notebooks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "templates"

# A tiny reference model: fast paths on (FlexAttention, the custom op, bucketize calibration), so the
# export-safe deviations are real, but small enough that an export report runs in well under a minute.
TINY = {"steps": 20, "n_sensors": 2, "n_steps": 24 * 7, "d_model": 8, "heads": 2, "depth": 1, "n_knots": 4,
        "horizon": 2}


def tiny_model(seed: int = 0, **overrides: Any) -> Any:
    from enn_nb.reference import train_reference

    return train_reference(seed=seed, **{**TINY, **overrides})


def write_notebook(path: Path, params: str, *cells: str, metadata: dict[str, Any] | None = None) -> Path:
    """A notebook with a parameters cell and code cells (a template made for one test)."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                                **({"enn_nb": metadata} if metadata else {})})
    first = new_code_cell(params)
    first.metadata["tags"] = ["parameters"]
    nb.cells = [first, *(new_code_cell(src) for src in cells)]
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return path


def outputs(nb_path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Every output of an executed notebook as ``(cell index, output)``."""
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)  # joins the stored line lists into strings
    return [(i, o) for i, c in enumerate(nb.cells) if c.cell_type == "code" for o in c.get("outputs", [])]


def metadata(nb_path: Path) -> dict[str, Any]:
    return json.loads(Path(nb_path).read_text(encoding="utf-8"))["metadata"]


def documented_parameters(template: str) -> list[tuple[str, str]]:
    """``(name, default)`` rows of the template's parameter table in templates/README.md."""
    text = (TEMPLATES / "README.md").read_text(encoding="utf-8")
    section = text.split(f"## {template}.ipynb", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`") and cells[1].startswith("`"):
            rows.append((cells[0].strip("`"), cells[1].strip("`")))
    return rows
