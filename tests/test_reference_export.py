"""The reference model's fast paths really break exporters, and the safe values really fix them."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from enn_nb.engine.wrapper import ForwardExport  # what the export engine captures
from enn_nb.model.fastpaths import declared_fast_paths
from enn_nb.reference import make_dataset


@pytest.fixture()
def model(trained_model):
    return copy.deepcopy(trained_model)


@pytest.fixture(scope="module")
def example() -> torch.Tensor:
    return make_dataset(3, n_sensors=1, n_steps=48)[0][:8]


def _fast_markers(model) -> list[str]:
    return [m for p in declared_fast_paths(model) if p.is_fast for m in p.markers]


def _set_safe(model) -> None:
    for path in declared_fast_paths(model):
        setattr(path.module, path.attr, path.safe_value)


def test_torch_export_fails_with_fast_paths_on_and_names_one(model, example):
    # Grad-requiring weights: FlexAttention refuses first; under no_grad the custom op does.
    for context in (torch.enable_grad, torch.no_grad):
        with context(), pytest.raises(Exception) as info:
            torch.export.export(ForwardExport(model), (example,))
        assert any(marker in str(info.value) for marker in _fast_markers(model)), str(info.value)
    assert "no fake impl registered" in str(info.value) and "enn_nb::fused_gelu_linear" in str(info.value)


def test_torch_export_succeeds_with_every_fast_path_safe(model, example):
    with torch.no_grad():
        eager_fast = model.forward_export(example)
    _set_safe(model)
    assert not _fast_markers(model)
    program = torch.export.export(ForwardExport(model), (example,))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("fused_gelu_linear" in t or "flex" in t or "bucketize" in t for t in targets)
    with torch.no_grad():
        exported = program.module()(example)
        eager_safe = model.forward_export(example)
    assert torch.allclose(exported, eager_safe, rtol=0, atol=1e-6)
    assert torch.allclose(eager_safe, eager_fast, rtol=0, atol=1e-5)


def test_onnx_export_fails_on_flex_attention_and_succeeds_when_safe(model, example, tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    for block in model.blocks:
        block.fc1.fused = False  # only flex_attention (and bucketize) left on
    path = tmp_path / "ref.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception) as info:
            torch.onnx.export(ForwardExport(model), (example,), str(path), dynamo=True, external_data=False)
        assert type(info.value).__name__ == "ConversionError"
        assert any(marker in str(info.value) for marker in _fast_markers(model)), str(info.value)
        _set_safe(model)
        torch.onnx.export(ForwardExport(model), (example,), str(path), dynamo=True, external_data=False)
        expected = model.forward_export(example).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    assert got.shape == (8, 4, 2)
    assert abs(got - expected).max() < 1e-5


def test_float32_compute_removes_float64_arithmetic_from_the_graph(model, example):
    _set_safe(model)
    with torch.no_grad():
        f64 = model.forward_export(example)
        model.scaler.compute_dtype = "float32"  # for runtimes without float64 Sub (onnx2tf)
        f32 = model.forward_export(example)
    assert 0 < float((f64 - f32).abs().max()) < 1e-4
    program = torch.export.export(ForwardExport(model), (example,))
    f64_arith = [
        str(node.target) for node in program.graph.nodes
        if node.op == "call_function" and "_to_copy" not in str(node.target)
        and getattr(node.meta.get("val"), "dtype", None) == torch.float64
    ]
    assert f64_arith == []
