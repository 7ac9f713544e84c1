"""The report templates as files: valid, output-free, one parameters cell, documented, shipped in the wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.fixtures.notebooks import ROOT, TEMPLATES, documented_parameters


NAMES = ["export_report", "checkpoint_report"]


@pytest.mark.parametrize("name", NAMES)
def test_template_is_valid_output_free_with_one_parameters_cell(name):
    import nbformat

    nb = nbformat.read(TEMPLATES / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), "stored with outputs"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"
    assert nb.cells.index(tagged[0]) == 0  # parameters first: the verdict/summary is the first output


@pytest.mark.parametrize("name", NAMES)
def test_papermill_parameters_are_the_documented_ones(name):
    import papermill

    found = papermill.inspect_notebook(str(TEMPLATES / f"{name}.ipynb"))
    documented = documented_parameters(name)
    assert [n for n, _ in documented] == list(found)
    assert {n: d for n, d in documented} == {n: p["default"] for n, p in found.items()}
    assert all(p["help"] for p in found.values()), "every parameter has a help comment"


def test_expected_parameter_names():
    # The names the issue and the wizard's "Save as report" rely on.
    assert [n for n, _ in documented_parameters("export_report")] == [
        "checkpoint", "backends", "out_dir", "batch_sizes", "atol", "rtol", "model", "options", "quantize", "calibration",
        "eval_data", "accuracy_budget", "allow_degraded", "threads", "title", "author"]
    assert [n for n, _ in documented_parameters("checkpoint_report")] == ["checkpoint", "other", "title", "author"]


def test_package_templates_resolve_to_the_top_level_folder():
    from enn_nb.surfaces.reports import resolve_template, templates
    from enn_nb.surfaces.reports.catalog import PACKAGE_TEMPLATES

    assert PACKAGE_TEMPLATES.is_dir()
    assert PACKAGE_TEMPLATES.resolve() == TEMPLATES.resolve()
    assert os.readlink(ROOT / "enn_nb" / "templates") == os.path.join("..", "templates")  # relative, as committed
    assert set(NAMES) <= set(templates())
    assert resolve_template("export_report").read_bytes() == (TEMPLATES / "export_report.ipynb").read_bytes()
    assert resolve_template("checkpoint_report.ipynb").name == "checkpoint_report.ipynb"


def test_unknown_template_names_the_known_ones(tmp_path):
    from enn_nb.errors import UnknownNameError
    from enn_nb.surfaces.reports import resolve_template

    with pytest.raises(UnknownNameError) as err:
        resolve_template("export_reprot")
    message = str(err.value)
    assert "`export_reprot`" in message and "Did you mean `export_report`?" in message
    assert "checkpoint_report" in message
    with pytest.raises(UnknownNameError):
        resolve_template(str(tmp_path / "missing.ipynb"))


@pytest.mark.slow
def test_wheel_ships_the_templates_and_finds_them_installed(tmp_path):
    """Build a wheel from a copy of the tree (symlink kept), install it elsewhere, resolve the templates."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "templates", src / "templates")
    shutil.copytree(ROOT / "enn_nb", src / "enn_nb", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    assert (src / "enn_nb" / "templates").is_symlink()
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    wheel = next(dist.glob("enn_nb-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for name in NAMES:
            assert f"enn_nb/templates/{name}.ipynb" in names
            assert zf.read(f"enn_nb/templates/{name}.ipynb") == (TEMPLATES / f"{name}.ipynb").read_bytes()
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    assert (target / "enn_nb" / "templates").is_dir() and not (target / "enn_nb" / "templates").is_symlink()
    code = ("import json, enn_nb.surfaces.reports as r; "
            "print(json.dumps([str(r.resolve_template(n)) for n in ('export_report', 'checkpoint_report')]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)},
                         check=True, capture_output=True, text=True, timeout=120)
    paths = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(Path(p).is_relative_to(target) for p in paths), paths
