"""Each edge backend on its own (convert -> load -> parity -> metadata), with the options the engine
test does not exercise, plus the float64 -> float32 rewrites and the flatbuffer metadata helpers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures.edge import ESSENTIALS, features, make_job, parity


@pytest.fixture(scope="module")
def job(trained_model, tmp_path_factory):
    """The reference model's ExportJob (dynamic batch), shared by this module's tests."""
    return make_job(trained_model, tmp_path_factory.mktemp("edge-job"))


# -- float64 -> float32 rewrites ------------------------------------------------------------------------
def test_demote_float64_module_removes_every_float64_and_keeps_the_numbers(job, trained_model):
    from enn_nb.engine.backends._edge_common import demote_float64_module

    ep = job.exported_program
    gm, counts = demote_float64_module(ep)
    assert counts["tensors"] >= 6 and counts["ops"] > 0  # the Scaler's buffers and its casts
    assert not [n for n, t in gm.named_buffers() if t.dtype == torch.float64]
    assert any(t.dtype == torch.float64 for t in ep.state_dict.values())  # the shared program is untouched
    x = features(trained_model, 5, seed=3)
    with torch.no_grad():
        exact, demoted = ep.module()(x), gm(x)
    assert demoted.dtype == torch.float32
    err = (exact - demoted).abs().max().item()
    assert 0 < err < 1e-4  # float32 scaler arithmetic: small but real


def test_demote_float64_onnx_rewrites_initializers_and_casts(job, trained_model):
    import onnx

    from enn_nb.engine.backends._edge_common import demote_float64_onnx
    from enn_nb.engine.backends._onnx_common import ort_runner

    model = onnx.load(str(job.onnx_path))

    def doubles(m):
        inits = [i.name for i in m.graph.initializer if i.data_type == onnx.TensorProto.DOUBLE]
        casts = [n.name for n in m.graph.node for a in n.attribute if a.name == "to" and a.i == onnx.TensorProto.DOUBLE]
        return inits + casts

    assert doubles(model)
    counts = demote_float64_onnx(model)
    assert doubles(model) == [] and counts["tensors"] > 0 and counts["ops"] > 0
    onnx.checker.check_model(model, full_check=True)
    path = Path(job.workdir) / "fp32.onnx"
    onnx.save(model, str(path))
    x = features(trained_model, 4, seed=9).numpy()
    (a,) = ort_runner(job.onnx_path, {})([x.copy()])
    (b,) = ort_runner(path, {})([x.copy()])
    assert np.abs(a - b).max() < 1e-4


# -- executorch -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_executorch_portable_delegates_nothing_and_matches(job, trained_model, tmp_path):
    from enn_nb.engine.backends.executorch import ExecutorchBackend, _program

    backend = ExecutorchBackend()
    conv = backend.convert(job, tmp_path / "model.pte", {"delegate": "portable", "max_batch": 16})
    assert conv.dynamic_batch is True and conv.details["batch_bounds"] == [1, 16]
    assert conv.details["delegate"] == "portable" and conv.details["delegated_nodes"] == 0
    assert conv.details["delegated_ratio"] == 0.0 and conv.details["non_delegated_nodes"] > 0
    assert conv.inputs[0].shape == ["batch", 38] and conv.outputs[0].shape == ["batch", 4, 2]
    errors = parity(backend, conv, trained_model, batches=(1, 7, 16))
    assert max(errors.values()) < 1e-4
    program = _program(conv.artifact)
    assert {"forward", "enn_nb_essentials"} <= set(program.method_names)
    assert backend.read_metadata(conv.artifact) == ESSENTIALS
    runner = backend.load(conv.artifact, {})
    with pytest.raises(RuntimeError):  # memory was planned for at most 16 rows
        runner([features(trained_model, 17, seed=1).numpy()])


# -- litert -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_litert_dynamic_on_request_named_signature_and_metadata(job, trained_model, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from enn_nb.engine.backends.litert import LitertBackend, read_flatbuffer_metadata

    backend = LitertBackend()
    conv = backend.convert(job, tmp_path / "model.tflite", {"dynamic_batch": True})
    if conv.dynamic_batch:  # a litert-torch that lowers a symbolic batch
        assert conv.inputs[0].shape == ["batch", 38]
    else:  # litert-torch 0.10.0: the attempt fails and the reason is kept
        (why,) = [n for n in conv.notes if "could not lower a dynamic batch" in n]
        assert why.startswith("litert-torch ") and why.endswith("the artifact is static at batch 2.")
        assert [t.to_dict() for t in conv.inputs] == [{"name": "features", "shape": [2, 38], "dtype": "float32"}]
    sig = Interpreter(model_path=str(conv.artifact)).get_signature_list()
    assert sig == {"serving_default": {"inputs": ["features"], "outputs": ["prediction"]}}
    errors = parity(backend, conv, trained_model)
    assert max(errors.values()) < 1e-4
    entries = read_flatbuffer_metadata(conv.artifact)
    assert json.loads(entries["enn_nb_essentials"]) == ESSENTIALS
    assert backend.read_metadata(conv.artifact) == ESSENTIALS


def test_flatbuffer_metadata_entries_are_added_and_replaced(tmp_path):
    pytest.importorskip("ai_edge_litert")
    from enn_nb.engine.backends.litert import embed_metadata, read_flatbuffer_metadata

    litert_torch = pytest.importorskip("litert_torch")
    from enn_nb.engine.backends._edge_common import captured_output

    with captured_output():
        model = litert_torch.convert(torch.nn.Linear(3, 2).eval(), (torch.randn(2, 3),))
    content = bytes(model.model_content())
    once = embed_metadata(content, {"a": b"1", "b": b"xyz"})
    twice = embed_metadata(once, {"a": b"22"})
    path = tmp_path / "m.tflite"
    path.write_bytes(twice)
    meta = read_flatbuffer_metadata(path)
    assert meta["a"] == b"22" and meta["b"] == b"xyz"
    assert sum(1 for k in meta if k == "a") == 1
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))  # still a valid model
    interpreter.allocate_tensors()


# -- coreml -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_coreml_fp16_target_and_metadata_in_the_spec(job, tmp_path):
    import coremltools as ct

    from enn_nb.errors import PlatformUnavailableError
    from enn_nb.engine.backends.coreml import CoremlBackend

    backend = CoremlBackend()
    conv = backend.convert(
        job, tmp_path / "model.mlpackage",
        {"compute_precision": "float16", "minimum_deployment_target": "iOS17", "version": "7.1", "author": "tests"},
    )
    assert conv.artifact.is_dir() and (conv.artifact / "Manifest.json").is_file()
    spec = ct.utils.load_spec(str(conv.artifact))
    assert spec.specificationVersion >= 8  # iOS17
    assert spec.description.metadata.versionString == "7.1" and spec.description.metadata.author == "tests"
    assert spec.description.metadata.shortDescription.startswith("ENN model exported by enn_nb")
    arr = spec.description.input[0].type.multiArrayType
    assert spec.description.input[0].name == "features" and list(arr.shape) == [8, 38]  # default = opt batch
    ranges = arr.shapeRange.sizeRanges
    assert (ranges[0].lowerBound, ranges[0].upperBound) == (1, 64)
    assert [t.to_dict() for t in conv.outputs] == [{"name": "prediction", "shape": ["batch", 4, 2], "dtype": "float16"}]
    assert backend.read_metadata(conv.artifact) == ESSENTIALS
    if sys.platform != "darwin":
        assert backend.runtime_unavailable_reason() == "CoreML prediction requires macOS"
        with pytest.raises(PlatformUnavailableError, match="CoreML prediction requires macOS"):
            backend.load(conv.artifact, {})
    with pytest.raises(ValueError, match="`minimum_deployment_target` is 'iOS99'; allowed values: .*iOS16"):
        backend.convert(job, tmp_path / "other.mlpackage", {"minimum_deployment_target": "iOS99"})


# -- tensorflow ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_tensorflow_success_is_quiet_and_failure_shows_onnx2tf_output(job, trained_model, tmp_path, capfd):
    import onnx
    from onnx import TensorProto, helper

    from enn_nb.errors import BackendError
    from enn_nb.engine.backends.tensorflow import TensorflowBackend

    backend = TensorflowBackend()
    assert job.onnx_path.is_file()  # the shared ONNX is made by the engine, not by this backend
    capfd.readouterr()
    conv = backend.convert(job, tmp_path / "model.savedmodel", {})
    seen = capfd.readouterr()
    assert seen.out == "" and "onnx2tf" not in seen.err and "TensorSpec" not in seen.err
    assert conv.dynamic_batch is True
    assert sorted(p.name for p in (conv.artifact / "assets").iterdir()) == ["enn_nb_essentials.json", "enn_nb_io.json"]
    errors = parity(backend, conv, trained_model)
    assert max(errors.values()) < 1e-4

    # an op onnx2tf does not know: the error carries its output, the partial SavedModel is not left behind
    node = helper.make_node("NoSuchOp", ["features"], ["prediction"], domain="enn.test")
    graph = helper.make_graph(
        [node], "bad",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 38])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["batch", 38])],
    )
    bad = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("enn.test", 1)])
    bad_path = tmp_path / "bad.onnx"
    onnx.save(bad, str(bad_path))
    def no_program():  # the static-shape fallback re-exports from the program: make it fail too
        raise RuntimeError("no program in this test")

    bad_job = type(job)(**{**job.__dict__, "get_onnx_path": lambda: bad_path, "get_exported_program": no_program})
    with pytest.raises(BackendError) as info:
        backend.convert(bad_job, tmp_path / "bad.savedmodel", {})
    message = str(info.value)
    assert "onnx2tf failed" in message and "--- onnx2tf output (tail) ---" in message and "NoSuchOp" in message
    assert "with static ones (" in message and "no program in this test" in message
    assert info.value.stage == "convert" and info.value.backend == "tensorflow"
    assert not (tmp_path / "bad.savedmodel" / "saved_model.pb").exists()
    assert not list(tmp_path.glob(".tensorflow-*"))  # the scratch folder is removed
