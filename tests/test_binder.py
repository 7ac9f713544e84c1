"""binder/: what mybinder.org installs parses, agrees with constraints.txt, resolves with pip, opens real notebooks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and "==" in line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.strip()
    return pins


def _binder_lines() -> list[str]:
    return [ln.split(" #", 1)[0].strip() for ln in (BINDER / "requirements.txt").read_text().splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")]


def _pins() -> dict[str, str]:
    pins = {}
    for line in _binder_lines():
        if line.startswith("-"):
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # exactly one ==pin each
        assert spec.operator == "==", line
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def _extras() -> list[str]:
    (line,) = [ln for ln in _binder_lines() if ln.startswith("-e ")]
    match = re.fullmatch(r"-e \.\[([a-z,]+)\]", line)
    assert match, line
    return match.group(1).split(",")


def test_requirements_parse_and_use_the_cpu_index_and_the_constraints():
    lines = _binder_lines()
    options = [ln for ln in lines if ln.startswith("-")]
    assert options == [f"--extra-index-url {CPU_INDEX}", "-c ../constraints.txt",
                       "-e .[onnx,executorch,litert,coreml,notebook]"]
    assert (BINDER / "../constraints.txt").resolve() == ROOT / "constraints.txt"  # pip reads -c relative to the file
    assert _pins()["torch"] == "2.13.0"


def test_every_pin_agrees_with_constraints():
    constraints = _constraints()
    pins = _pins()
    assert len(pins) >= 15
    disagree = {name: (v, constraints.get(name)) for name, v in pins.items() if constraints.get(name) != v}
    assert disagree == {}


def test_extras_exist_and_their_direct_requirements_are_pinned():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = _extras()
    assert set(extras) <= set(project["optional-dependencies"]), extras
    assert "tensorflow" not in extras and "tensorrt" not in extras and "notebook" in extras
    pinned = set(_pins()) | set(_constraints())
    direct = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        direct += [Requirement(r) for r in project["optional-dependencies"][extra] if not r.startswith("enn-nb")]
    unpinned = sorted({canonicalize_name(r.name) for r in direct} - pinned)
    assert unpinned == []


def test_runtime_python_satisfies_every_pinned_package():
    match = re.fullmatch(r"python-(\d+)\.(\d+)", (BINDER / "runtime.txt").read_text().strip())
    assert match
    python = Version(f"{match.group(1)}.{match.group(2)}.0")
    checked = 0
    for name in _pins():
        try:
            requires = metadata(name).get("Requires-Python")
        except PackageNotFoundError:
            continue
        if requires:
            assert python in SpecifierSet(requires), (name, requires)
            checked += 1
    assert checked >= 5


def test_scripts_are_executable_bash():
    for name in ("postBuild", "start"):
        path = BINDER / name
        assert os.access(path, os.X_OK), f"binder/{name} must be executable"
        subprocess.run(["bash", "-n", str(path)], check=True)
    assert (BINDER / "start").read_text().rstrip().endswith('exec "$@"')


def test_listed_notebooks_exist_and_are_valid():
    import nbformat

    listed = re.findall(r"^- ((?:notebooks|templates)/[\w.-]+\.ipynb)", (BINDER / "README.md").read_text(), re.M)
    assert "notebooks/01_quickstart.ipynb" in listed and "templates/export_report.ipynb" in listed
    for rel in listed:
        nbformat.validate(nbformat.read(ROOT / rel, as_version=4))
    badge = (ROOT / "README.md").read_text()
    target = re.search(r"mybinder\.org/v2/gh/[^)]*labpath=([^)&]+)", badge)
    assert target and target.group(1).replace("%2F", "/") in listed


@pytest.mark.slow
def test_pip_resolves_the_binder_set_together(tmp_path):
    """pip's resolver on binder/requirements.txt, as repo2docker runs it (from the repository root).

    PyTorch's CPU index cannot be reached from here, so that one line is left out: torch 2.13.0's CPU
    wheel comes from this machine's configured wheel folder instead, the same build.
    """
    text = (BINDER / "requirements.txt").read_text().replace(f"--extra-index-url {CPU_INDEX}", "")
    text = text.replace("-c ../constraints.txt", f"-c {ROOT / 'constraints.txt'}")
    req = tmp_path / "requirements.txt"
    req.write_text(text)
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
         "-r", str(req)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    installs = json.loads(report.read_text())["install"]
    resolved = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}
    assert resolved["enn-nb"] and resolved["torch"].startswith("2.13.0")
    constraints = _constraints()
    off = {n: (v, constraints[n]) for n, v in resolved.items()
           if n in constraints and Version(v).public != constraints[n]}
    assert off == {}
    for name in ("onnxruntime", "executorch", "litert-torch", "coremltools", "papermill", "nbconvert", "ipywidgets"):
        assert name in resolved, name
    assert "tensorflow" not in resolved
