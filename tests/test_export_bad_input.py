"""Bad input to the export engine: each gets one clear error, and nothing is lost."""

from __future__ import annotations

import sys

import pytest
import torch

import enn_nb
from enn_nb.errors import InputMismatchError, MissingDependencyError, OutputDirError, UnknownNameError
from enn_nb.engine import sidecar
from enn_nb.engine.registry import register_backend, unregister_backend

from tests.fixtures.backends import HalfWriteBackend
from tests.fixtures.models import TinyMLP


def test_unknown_backend_suggests_the_closest_and_lists_the_known(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UnknownNameError) as info:
        enn_nb.export(TinyMLP(), "onx,pt2", out_dir=out, example_inputs=torch.randn(2, 6))
    message = str(info.value)
    assert "Unknown backend `onx`" in message and "Did you mean `onnx`?" in message
    for name in ("onnx", "ort", "pt2", "aoti", "tensorrt"):
        assert name in info.value.known
    assert not out.exists()  # checked before anything was created


def test_missing_package_gives_one_line_with_the_extra_and_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if onnxruntime were not installed
    row = next(r for r in enn_nb.backends() if r.name == "ort")
    assert not row.available and "%pip install 'enn-nb[onnx]'" in row.reason
    report = enn_nb.export(TinyMLP(), "ort", out_dir=tmp_path, example_inputs=torch.randn(2, 6), isolate=False)
    result = report["ort"]
    assert result.status == "unavailable"
    assert "\n" not in result.error
    assert "`onnxruntime` is not installed" in result.error
    assert "extra `onnx`" in result.error and result.error.endswith("%pip install 'enn-nb[onnx]'")
    data = sidecar.read(result.sidecar)  # the sidecar says so too
    assert data["status"] == "unavailable" and data["error"]["message"] == result.error
    with pytest.raises(MissingDependencyError) as info:
        enn_nb.export(TinyMLP(), "ort", out_dir=tmp_path, example_inputs=torch.randn(2, 6), isolate=False, strict=True)
    assert info.value.install_line == "%pip install 'enn-nb[onnx]'"
    # `all` lists what cannot convert here without failing the request, also in strict mode
    from enn_nb.engine.pipeline import _raise_if_needed
    from enn_nb.engine.settings import ExportSettings

    every = ExportSettings.from_call("all", tmp_path / "all", strict=True)
    assert "ort" in every.names and not every.named
    _raise_if_needed(report, every)  # the same unavailable `ort` result: no error
    with pytest.raises(MissingDependencyError):
        _raise_if_needed(report, ExportSettings.from_call("ort", tmp_path / "named", strict=True))


def test_wrong_example_input_shape_says_expected_and_got(trained_model, tmp_path):
    with pytest.raises(InputMismatchError) as info:
        enn_nb.export(trained_model, "pt2", out_dir=tmp_path, example_inputs=torch.randn(2, 5))
    err = info.value
    assert err.expected == ("B", trained_model.in_dim) and err.received == (2, 5)
    assert "[2, 5]" in str(err) and f"[B, {trained_model.in_dim}]" in str(err)
    with pytest.raises(InputMismatchError, match="float64"):
        enn_nb.export(trained_model, "pt2", out_dir=tmp_path,
                      example_inputs=torch.randn(2, trained_model.in_dim, dtype=torch.float64))
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_unwritable_out_dir_fails_before_any_work(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    calls = []
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: calls.append(1))  # must never be reached
    with pytest.raises(OutputDirError) as info:
        enn_nb.export(TinyMLP(), "pt2", out_dir=blocker / "sub", example_inputs=torch.randn(2, 6))
    message = str(info.value)
    assert str(blocker / "sub") in message and "is a file" in message and "Choose a folder" in message
    assert isinstance(info.value, OSError) and calls == []
    assert blocker.read_text() == "not a folder"


def test_existing_artifact_is_never_half_overwritten(tmp_path):
    model = TinyMLP().eval()
    first = enn_nb.export(model, "pt2", out_dir=tmp_path, example_inputs=torch.randn(2, 6), isolate=False, cache=False)
    artifact = first["pt2"].artifact
    original = artifact.read_bytes()
    register_backend(HalfWriteBackend, replace=True)
    try:
        report = enn_nb.export(model, "halfpt2", out_dir=tmp_path, example_inputs=torch.randn(2, 6), cache=False)
    finally:
        unregister_backend("halfpt2")
    result = report["halfpt2"]
    assert result.status == "failed" and result.stage == "convert" and "disk full" in result.error
    assert artifact.read_bytes() == original  # the half-written file never replaced it
    torch.export.load(str(artifact))  # still a valid archive
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"options": {"onnx": {"opset": 18}, "ort": {}}}, "not being exported"),
        ({"options": {"pt2": 3}}, "must be a dict"),
        ({"batch_range": (8, 1, 64)}, "min <= opt <= max"),
        ({"stem": "../evil"}, "plain file name stem"),
        ({"tolerances": {"pt2": "tight"}}, "give \\(atol, rtol\\)"),
        ({"backends": ""}, "name at least one"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, match):
    kwargs = {"backends": "pt2", **kwargs}
    backends = kwargs.pop("backends")
    with pytest.raises(ValueError, match=match):
        enn_nb.export(TinyMLP(), backends, out_dir=tmp_path, example_inputs=torch.randn(2, 6), isolate=False, **kwargs)


def test_not_a_model_and_missing_checkpoint(tmp_path):
    with pytest.raises(TypeError, match="torch.nn.Module, the path of a checkpoint"):
        enn_nb.export({"w": 1}, "pt2", out_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        enn_nb.export(tmp_path / "nope.safetensors", "pt2", out_dir=tmp_path)
