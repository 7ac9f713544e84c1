"""Each runtime's own quantizer, called the way its documentation shows; nothing here quantizes by hand.

==============  ==============================================================================
backend         quantizer
==============  ==============================================================================
onnx, ort       ``onnxruntime.quantization``: ``quantize_dynamic`` (int8-weights), ``quantize_static``
                with a calibration reader, QDQ format (int8); fp16 with onnxruntime's
                ``transformers.float16.convert_float_to_float16`` (float inputs/outputs kept)
executorch      torchao's PT2E flow (``prepare_pt2e`` / ``convert_pt2e``) with ExecuTorch's
                ``XNNPACKQuantizer`` (symmetric per-channel; dynamic for int8-weights)
litert          ``ai_edge_quantizer`` on the converted ``.tflite`` (recipes ``dynamic_wi8_afp32``,
                ``static_wi8_ai8`` calibrated)
coreml          the converter's ``compute_precision=FLOAT16`` (fp16); ``coremltools.optimize.coreml
                .linear_quantize_weights`` (int8-weights)
pt2, aoti       torchao's PT2E flow with ``X86InductorQuantizer`` (``get_default_x86_inductor_quantization_config``;
                ``is_dynamic=True`` for int8-weights), the result exported again and saved / compiled
==============  ==============================================================================

Each function takes the backend, the export's job, the artifact path, the backend's options, the mode
and the calibration batches (lists of numpy arrays), and returns the backend's ``Conversion``. (Typed
``Any``: the backends import this module, so it imports none of theirs.)
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from enn_nb._optional import require


Calibration = Sequence[Sequence[Any]]  # batches of numpy arrays, in input order


# -- ONNX (onnx, ort) ------------------------------------------------------------------------------------------
def quantize_onnx_file(source: Path, target: Path, mode: str, input_names: Sequence[str],
                       calibration: Calibration) -> Path:
    """``source`` (float ONNX, maybe with external data beside it) quantized into the single file ``target``."""
    require("onnxruntime", purpose="ONNX quantization")
    if mode == "fp16":
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        from onnxruntime.transformers.onnx_model import OnnxModel

        model = OnnxModel(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True))
        model.topological_sort()  # the input casts it adds are appended last; the checker wants graph order
        onnx.save(model.model, str(target))
        return target
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if mode == "int8-weights":
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=False)
        return target
    quantize_static(str(source), str(target), _OrtReader(input_names, calibration), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True)
    return target


class _OrtReader:
    """onnxruntime's ``CalibrationDataReader`` protocol: ``get_next()`` -> ``{input name: array}`` or None."""

    def __init__(self, names: Sequence[str], batches: Calibration) -> None:
        self._items = iter([dict(zip(names, b)) for b in batches])

    def get_next(self) -> dict[str, Any] | None:
        return next(self._items, None)

    def rewind(self) -> None:  # part of the protocol; one pass is all quantize_static needs
        pass


def quantize_onnx(backend: Any, job: Any, out_path: Path, options: dict[str, Any], mode: str,
          calibration: Calibration) -> Any:
    quantized = job.workdir / f"quantized-{mode}-{out_path.parent.name.replace(':', '-')}.onnx"
    quantize_onnx_file(job.onnx_path, quantized, mode, job.input_names, calibration)
    qjob = dataclasses.replace(job, get_onnx_path=lambda: quantized)
    conv = backend.convert(qjob, out_path, options)
    conv.details["quantizer_call"] = _ONNX_CALLS[mode]
    return conv


_ONNX_CALLS = {
    "fp16": "onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)",
    "int8-weights": "onnxruntime.quantization.quantize_dynamic(weight_type=QInt8)",
    "int8": "onnxruntime.quantization.quantize_static(QDQ, QInt8 activations and weights, per_channel, "
            "MinMax calibration)",
}


# -- PT2E (executorch) --------------------------------------------------------------------------------
def pt2e_program(job: Any, quantizer: Any, calibration: Calibration, *, static: bool,
                 drop_unused: bool = False) -> Any:
    """The captured program quantized by torchao's PT2E flow with ``quantizer``, exported again (same batch dims).

    ``drop_unused``: remove the float parameters the quantized graph no longer reads (their int8 copies
    replaced them); ``torch.export`` would otherwise store both (the executorch lowering drops them itself).
    """
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from enn_nb.engine.backends._edge_common import batch_bounds
    from enn_nb.engine.quantize.calibration import rebatch

    ep = job.exported_program
    static_batch = None if batch_bounds(ep) is not None else int(job.example_inputs[0].shape[0])
    batches = rebatch(calibration, static_batch)  # a static program runs at its capture batch only
    prepared = prepare_pt2e(ep.module(), quantizer)
    with torch.no_grad():
        for batch in (batches if static else batches[:1]):
            prepared(*(torch.from_numpy(a.copy()) for a in batch))
    converted = convert_pt2e(prepared)
    if drop_unused:
        _drop_unused_attributes(converted)
    return torch.export.export(converted, job.example_inputs, dynamic_shapes=_batch_shapes(ep, job))


def _drop_unused_attributes(module: Any) -> None:
    """Delete the parameters and buffers no ``get_attr`` node of ``module``'s graphs reads any more."""
    used = {n.target for m in module.modules() if hasattr(m, "graph") for n in m.graph.nodes if n.op == "get_attr"}
    for name, _ in [*module.named_parameters(), *module.named_buffers()]:
        if name not in used:
            owner, _, leaf = name.rpartition(".")
            delattr(module.get_submodule(owner) if owner else module, leaf)


def _batch_shapes(ep: Any, job: Any) -> Any:
    import torch

    from enn_nb.engine.backends._edge_common import BATCH, batch_bounds

    bounds = batch_bounds(ep)
    if not job.dynamic_batch or bounds is None:
        return None
    batch = torch.export.Dim(BATCH, min=max(1, bounds[0]), max=bounds[1])
    return tuple({0: batch} if t.dim() >= 1 else None for t in job.example_inputs)


def quantize_executorch(backend: Any, job: Any, out_path: Path, options: dict[str, Any], mode: str,
                calibration: Calibration) -> Any:
    require("executorch.exir", purpose="ExecuTorch quantization")
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    dynamic = mode == "int8-weights"
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                                is_dynamic=dynamic))
    qep = pt2e_program(job, quantizer, calibration, static=not dynamic)
    conv = backend.convert(dataclasses.replace(job, get_exported_program=lambda: qep), out_path, options)
    conv.details["quantizer_call"] = (f"torchao prepare_pt2e/convert_pt2e with XNNPACKQuantizer("
                                      f"get_symmetric_quantization_config(is_per_channel=True, is_dynamic={dynamic}))")
    return conv


# -- PT2E X86 Inductor (pt2, aoti) ----------------------------------------------------------------------------
def quantize_pt2(backend: Any, job: Any, out_path: Path, options: dict[str, Any], mode: str,
                 calibration: Calibration) -> Any:
    """pt2 and aoti: the X86 Inductor PT2E program saved by the backend (``.pt2``) or compiled by AOTInductor.

    What it holds is read back from the saved program (pt2) or, for aoti, from the very program handed to
    AOTInductor: the compiled package keeps its weights inside a shared library that nothing reads back.
    """
    require("torchao", purpose=f"`{backend.name}` quantization")
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    from enn_nb.engine.quantize.readback import read_back_program

    dynamic = mode == "int8-weights"
    quantizer = _float32_only(X86InductorQuantizer)().set_global(
        get_default_x86_inductor_quantization_config(is_dynamic=dynamic))
    qep = pt2e_program(job, quantizer, calibration, static=not dynamic, drop_unused=True)
    conv = backend.convert(dataclasses.replace(job, get_exported_program=lambda: qep), out_path, options)
    conv.details["quantizer_call"] = ("torchao prepare_pt2e/convert_pt2e with X86InductorQuantizer("
                                      f"get_default_x86_inductor_quantization_config(is_dynamic={dynamic}))")
    if quantizer.left_float:
        conv.details["quantizer_call"] += ", annotations on float64 ops removed"
        conv.notes.append(f"{quantizer.left_float} op(s) computing in float64 left unquantized (the X86 Inductor "
                          "quantizer's observers take float32/16 only).")
    if backend.name == "aoti":
        found = read_back_program(qep)
        found["read_from"] = "the quantized program AOTInductor compiled (the package's weights are compiled in)"
        conv.details["quantization_readback"] = found
    return conv


def _float32_only(base: type) -> type:
    """``base`` (a torchao PT2E quantizer) that leaves alone the ops reading or making float64 tensors.

    The X86 Inductor quantizer annotates every add/mul it sees, and its quantize ops accept float32/16 only:
    a model computing partly in float64 (the reference model's Scaler) would fail at calibration.
    """
    import torch

    def is_f64(node: Any) -> bool:
        val = getattr(node, "meta", {}).get("val")
        return isinstance(val, torch.Tensor) and val.dtype == torch.float64

    class Float32Only(base):  # type: ignore[misc,valid-type]
        left_float = 0

        def annotate(self, model: Any) -> Any:
            model = super().annotate(model)
            for node in model.graph.nodes:
                note = node.meta.get("quantization_annotation")
                if note is None:
                    continue
                if is_f64(node) or any(is_f64(a) for a in node.all_input_nodes):
                    del node.meta["quantization_annotation"]
                    self.left_float += 1
            return model

    return Float32Only


# -- LiteRT --------------------------------------------------------------------------------------------------------
def quantize_tflite_file(source: Path, target: Path, mode: str, calibration: Calibration) -> Path:
    """``source`` (.tflite) quantized by ai_edge_quantizer into ``target``; static batches fit its input shapes."""
    from ai_edge_quantizer import quantizer as aq
    from ai_edge_quantizer import recipe

    from enn_nb.engine.backends._edge_common import captured_output

    qt = aq.Quantizer(str(source))
    qt.load_quantization_recipe(recipe.dynamic_wi8_afp32() if mode == "int8-weights" else recipe.static_wi8_ai8())
    with captured_output():  # it prints a size/time report
        result = None
        if qt.need_calibration:
            signature, names, batch = _tflite_signature(source)
            from enn_nb.engine.quantize.calibration import rebatch

            samples = [dict(zip(names, b)) for b in rebatch(calibration, batch)]
            result = qt.calibrate({signature: samples})
        quantized = qt.quantize(result)
    target.write_bytes(bytes(quantized.quantized_model))
    return target


def _tflite_signature(path: Path) -> tuple[str, list[str], int | None]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    key, sig = next(iter(interp.get_signature_list().items()))
    runner = interp.get_signature_runner(key)
    details = runner.get_input_details()
    names = list(sig["inputs"])
    first = details[names[0]]["shape"]
    return key, names, int(first[0]) if len(first) else None


def quantize_litert(backend: Any, job: Any, out_path: Path, options: dict[str, Any], mode: str,
            calibration: Calibration) -> Any:
    require("ai_edge_quantizer", purpose="LiteRT quantization")
    float_path = out_path.with_name("float-" + out_path.name)
    conv = backend.convert(job, float_path, options)
    quantize_tflite_file(float_path, out_path, mode, _by_signature_order(calibration, job, float_path))
    float_path.unlink(missing_ok=True)
    conv.artifact = out_path
    conv.embedded_metadata = False
    conv.notes.append("the essentials are in the sidecar only: ai_edge_quantizer writes a new flatbuffer without "
                      "the float model's metadata entries.")
    conv.details["quantizer_call"] = ("ai_edge_quantizer.Quantizer(recipe." +
                                      ("dynamic_wi8_afp32()" if mode == "int8-weights" else "static_wi8_ai8()") +
                                      (").calibrate(...).quantize()" if mode == "int8" else ").quantize()"))
    return conv


def _by_signature_order(calibration: Calibration, job: Any, path: Path) -> list[list[Any]]:
    """Calibration batches reordered into the .tflite signature's input order (litert-torch sorts them)."""
    import numpy as np

    _, names, _ = _tflite_signature(path)
    index = {n: i for i, n in enumerate(job.input_names)}
    out = []
    for batch in calibration:
        arrays = [np.asarray(batch[index[n]]) if n in index else np.asarray(batch[i]) for i, n in enumerate(names)]
        out.append([a.astype(np.int32) if a.dtype == np.int64 else a for a in arrays])
    return out


# -- CoreML -------------------------------------------------------------------------------------------------------
def quantize_coreml(backend: Any, job: Any, out_path: Path, options: dict[str, Any], mode: str,
            calibration: Calibration) -> Any:
    if mode == "fp16":
        conv = backend.convert(job, out_path, {**options, "compute_precision": "float16"})
        conv.details["quantizer_call"] = "coremltools.convert(compute_precision=ct.precision.FLOAT16)"
        return conv
    ct = require("coremltools", purpose="CoreML quantization")
    import coremltools.optimize.coreml as cto

    float_path = out_path.with_name("float-" + out_path.name)
    conv = backend.convert(job, float_path, options)
    model = ct.models.MLModel(str(float_path), skip_model_load=True)
    config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                                                              weight_threshold=0))
    quantized = cto.linear_quantize_weights(model, config=config)
    quantized.save(str(out_path))
    shutil.rmtree(float_path, ignore_errors=True)
    conv.artifact = out_path
    conv.details["quantizer_call"] = ("coremltools.optimize.coreml.linear_quantize_weights(OpLinearQuantizerConfig("
                                      "mode='linear_symmetric', dtype='int8', weight_threshold=0))")
    return conv
