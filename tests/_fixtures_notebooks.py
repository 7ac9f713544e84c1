"""Helpers of the example-notebook tests: run a notebook of notebooks/ with papermill, read its cells back."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def execute(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **parameters: Any) -> Any:
    """Run ``notebooks/<name>`` in ``tmp_path`` with papermill; return the executed notebook."""
    import nbformat
    import papermill as pm

    # Jupyter Server tells the kernel its notebook this way; ipykernel exposes it as `__session__`.
    monkeypatch.setenv("JPY_SESSION_NAME", f"notebooks/{name}")
    # the kernel inherits this process's environment: conftest's compile caches and empty export cache
    output = tmp_path / name
    pm.execute_notebook(
        str(NOTEBOOKS / name), str(output), parameters=parameters, cwd=str(tmp_path),
        kernel_name="python3", progress_bar=False, log_output=False,
    )  # fmt: skip
    return nbformat.read(output, as_version=4)


def check_stored(name: str) -> None:
    """The notebook is valid, stored without outputs, with a python3 kernelspec and a parameters cell first."""
    import nbformat

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert "parameters" in code[0].metadata.get("tags", [])


def cell_with(nb: Any, text: str) -> Any:
    matches = [c for c in nb.cells if c.cell_type == "code" and text in c.source]
    assert len(matches) == 1, f"expected one cell containing {text!r}, found {len(matches)}"
    return matches[0]


def stdout(cell: Any) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def html(cell: Any) -> str:
    return "".join(
        o.data.get("text/html", "") for o in cell.outputs if o.output_type in ("execute_result", "display_data")
    )


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
