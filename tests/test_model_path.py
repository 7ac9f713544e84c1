"""``--model`` finds the user's module from where the user stands: ``--model-path DIR`` or a relative PYTHONPATH."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import enn_nb
from enn_nb.surfaces.cli import main
from enn_nb.surfaces.factory import child_pythonpath, import_root, model_path


def test_relative_pythonpath_entries_and_model_paths_are_made_absolute_for_child_processes(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([".", "models"]))
    assert model_path() == [str(tmp_path), str(tmp_path / "models")]
    with child_pythonpath(["models"]) as paths:  # a report kernel starts here: it runs in another folder
        assert os.environ["PYTHONPATH"] == os.pathsep.join([str(tmp_path / "models"), str(tmp_path)])
    assert paths == [str(tmp_path / "models"), str(tmp_path)]
    assert os.environ["PYTHONPATH"] == os.pathsep.join([".", "models"])  # the caller's own is left as it was
    with pytest.raises(enn_nb.errors.SpecError, match="`--model-path nowhere` is not a folder"):
        model_path(["nowhere"])


def test_export_with_model_path_imports_the_factory_without_pythonpath(tmp_path, monkeypatch, capsys):
    models = tmp_path / "src"
    models.mkdir()
    (models / "shop_models.py").write_text("import torch\n\ndef build():\n    return torch.nn.Linear(3, 2)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))  # the import adds src/; undone after the test
    enn_nb.save(torch.nn.Linear(3, 2), "shop.safetensors", spec=enn_nb.ModelSpec(inputs=["x:float32[B, 3]"]))
    assert main(["export", "shop.safetensors", "--model", "shop_models:build", "-b", "pt2", "-o", "e"]) == 2
    assert "name its folder with `--model-path DIR`" in capsys.readouterr().err
    assert main(["export", "shop.safetensors", "--model", "shop_models:build", "--model-path", "src", "-b", "pt2",
                 "-o", "e", "--no-isolate"]) == 0
    assert (tmp_path / "e" / "model.pt2").is_file()
    assert import_root("shop_models") == str(models)
