"""``enn-nb inspect PATH [--json]`` and ``enn-nb convert SRC DST [--format]``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import enn_nb
from enn_nb.checkpoint.schema import validate
from enn_nb.surfaces.cli import main

from tests.fixtures.models import tiny


ENN_NB = Path(sys.executable).with_name("enn-nb")


@pytest.fixture
def saved(tmp_path) -> tuple[Path, enn_nb.checkpoint.Manifest]:
    path = tmp_path / "m.pt"
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.forward_export(torch.randn(2, 6)).sum().backward()
    opt.step()
    return path, enn_nb.save(model, path, metadata={"run": "cli"}, optimizer=opt)


def test_inspect_prints_a_table(saved, capsys):
    path, manifest = saved
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "enn_nb checkpoint (pt)" in out and manifest.content_hash in out
    assert "fc1.weight" in out and "float64" in out and "tests.checkpoint.tiny" in out
    assert "SGD" in out


def test_inspect_json_is_the_manifest_document(saved, capsys):
    path, manifest = saved
    assert main(["inspect", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc.pop("content_hash") == manifest.content_hash
    validate(doc)
    assert doc == manifest.to_dict()


@pytest.mark.parametrize(("dst", "fmt", "expected"), [
    ("c.safetensors", None, "safetensors"), ("c_dcp", None, "dcp"), ("c.pth", None, "pt"),
    ("c.bin", "safetensors", "safetensors"),
])
def test_convert(saved, tmp_path, capsys, dst, fmt, expected):
    path, manifest = saved
    args = ["convert", str(path), str(tmp_path / dst)] + (["--format", fmt] if fmt else [])
    assert main(args) == 0
    assert manifest.content_hash in capsys.readouterr().out
    converted = enn_nb.inspect(tmp_path / dst)
    assert converted.format == expected and converted.content_hash == manifest.content_hash
    assert converted.metadata == {"run": "cli"} and converted.optimizer["class"] == "SGD"
    loaded = enn_nb.load(tmp_path / dst)
    assert loaded.verified
    assert loaded.optimizer_state["state"][0]["momentum_buffer"].shape == (8, 6)


def test_errors_exit_1_with_a_message(tmp_path, capsys):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    assert main(["inspect", str(tmp_path / "notes.pt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("enn-nb inspect: error:") and "notes.pt" in err
    assert main(["convert", str(tmp_path / "missing.pt"), str(tmp_path / "x.safetensors")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.slow
def test_the_installed_command(saved):
    path, manifest = saved
    result = subprocess.run([str(ENN_NB), "inspect", str(path), "--json"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["content_hash"] == manifest.content_hash
    helptext = subprocess.run([str(ENN_NB), "--help"], capture_output=True, text=True, timeout=120).stdout
    assert "inspect" in helptext and "convert" in helptext
