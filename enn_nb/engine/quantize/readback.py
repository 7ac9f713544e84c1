"""What a quantized artifact really holds, read back from the file (never from the flag that asked for it).

Every reader returns the same keys: ``weights`` (constant elements per dtype), ``int8_weight_fraction``
and ``fp16_weight_fraction`` (of all constant elements), ``activation_dtype`` (what flows between ops:
``int8`` for static quantization, ``float32`` for dynamic-range, ``float16``), ``quantized_ops`` and
``float_ops`` (op type -> count: compute that runs on quantized tensors, and compute left in float),
``int8_tensors`` (int8 constant tensors) and ``qdq_nodes`` (quantize/dequantize nodes, where the
format has them). ``weight_bytes`` is what those constant elements take at their dtypes: set against the
file size (or the float artifact's ``weight_bytes``) it tells the quantized weights apart from what the
format adds around them (graph, names, per-channel scales, metadata).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

#: Ops that only move or reshape data: neither float compute nor quantized compute.
_PLUMBING = {"Shape", "Reshape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Constant", "Identity", "Cast",
             "Transpose", "Flatten", "Expand", "Range", "ConstantOfShape", "Split"}


def read_back(artifact: Path) -> dict[str, Any]:
    """The quantization an artifact holds (its format from its suffix); ``{"error": ...}`` when it cannot be read."""
    if Path(artifact).name.endswith(".aoti.pt2"):  # not a torch.export archive: compiled code and weights
        return {"error": "an AOTInductor package holds compiled code; read back the program it was compiled from "
                         "(`read_back_program`)"}
    reader = {".onnx": _onnx, ".ort": _ort, ".pte": _pte, ".tflite": _tflite, ".mlpackage": _mlpackage,
              ".pt2": _pt2}.get(Path(artifact).suffix)
    if reader is None:
        return {"error": f"enn_nb reads no quantization from `{Path(artifact).suffix}` files"}
    try:
        found = reader(Path(artifact))
    except Exception as exc:  # a reader's failure is reported, the artifact stays
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return _fractions(found)


#: Bytes per element of the dtype names the readers use (ONNX's own names lower-cased among them).
_ITEMSIZE = {"float64": 8, "double": 8, "int64": 8, "uint64": 8, "float32": 4, "int32": 4, "uint32": 4, "float16": 2,
             "bfloat16": 2, "int16": 2, "uint16": 2, "int8": 1, "uint8": 1, "bool": 1, "int4": 0.5, "uint4": 0.5}


def _fractions(found: dict[str, Any]) -> dict[str, Any]:
    weights = {k: int(v) for k, v in found.get("weights", {}).items() if v}
    total = sum(weights.values())
    found["weights"] = weights
    found["weight_bytes"] = int(sum(n * _ITEMSIZE.get(k, 4) for k, n in weights.items()))
    found["int8_weight_fraction"] = (weights.get("int8", 0) + weights.get("uint8", 0)) / total if total else 0.0
    found["fp16_weight_fraction"] = weights.get("float16", 0) / total if total else 0.0
    for key in ("quantized_ops", "float_ops"):
        found[key] = dict(sorted(Counter(found.get(key, {})).items()))
    return found


# -- ONNX -------------------------------------------------------------------------------------------------------
def _onnx(path: Path) -> dict[str, Any]:
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    names = {t.name: t for t in graph.initializer}
    weights: Counter[str] = Counter()
    for t in graph.initializer:
        count = 1
        for d in t.dims:
            count *= int(d)
        weights[TensorProto.DataType.Name(t.data_type).lower()] += count
    producers = {o: n for n in graph.node for o in n.output}
    quantized: Counter[str] = Counter()
    floating: Counter[str] = Counter()
    activation = "float32"
    qdq = 0
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            qdq += 1
            if node.op_type == "QuantizeLinear" and node.input[0] not in names:
                zero_point = names.get(node.input[2]) if len(node.input) > 2 else None
                activation = TensorProto.DataType.Name(zero_point.data_type).lower() if zero_point else "uint8"
            continue
        if node.op_type == "DynamicQuantizeLinear":
            continue
        if node.op_type in _PLUMBING:
            continue
        fed_quantized = any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
                            for i in node.input)
        if node.op_type.startswith("QLinear") or node.op_type.endswith("Integer") or fed_quantized:
            quantized[node.op_type] += 1
        else:
            floating[node.op_type] += 1
    if activation == "float32" and weights.get("float16", 0) > weights.get("float", 0):
        activation = "float16"
    weights["float32"] = weights.pop("float", 0)
    int8_tensors = sum(1 for t in graph.initializer if t.data_type in (TensorProto.INT8, TensorProto.UINT8))
    return {"format": "onnx", "weights": dict(weights), "activation_dtype": activation, "quantized_ops": quantized,
            "float_ops": floating, "qdq_nodes": qdq, "int8_tensors": int8_tensors}


def _ort(path: Path) -> dict[str, Any]:
    """An .ort file: onnxruntime's own flatbuffer reader (``onnxruntime.tools.ort_format_model``)."""
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs

    buf = path.read_bytes()
    session = fbs.InferenceSession.InferenceSession.GetRootAsInferenceSession(buf, 0)
    graph = session.Model().Graph()
    dtype_names = {v: k.lower() for k, v in vars(fbs.TensorDataType.TensorDataType).items() if not k.startswith("_")}
    weights: Counter[str] = Counter()
    int8_tensors = 0
    for i in range(graph.InitializersLength()):
        t = graph.Initializers(i)
        count = 1
        for d in range(t.DimsLength()):
            count *= int(t.Dims(d))
        name = dtype_names.get(t.DataType(), str(t.DataType()))
        name = "float32" if name == "float" else name
        weights[name] += count
        int8_tensors += name in ("int8", "uint8")
    quantized: Counter[str] = Counter()
    floating: Counter[str] = Counter()
    qdq = 0
    activation = "float32"
    for i in range(graph.NodesLength()):
        op = graph.Nodes(i).OpType().decode()
        if op in ("QuantizeLinear", "DequantizeLinear"):
            qdq += 1
            activation = "int8" if op == "QuantizeLinear" else activation
        elif op.startswith("QLinear") or op.endswith("Integer") or op.startswith("Q"):
            quantized[op] += 1
        elif op not in _PLUMBING and op != "DynamicQuantizeLinear":
            floating[op] += 1
    if activation == "float32" and weights.get("float16", 0) > weights.get("float32", 0):
        activation = "float16"
    return {"format": "ort", "weights": dict(weights), "activation_dtype": activation, "quantized_ops": quantized,
            "float_ops": floating, "qdq_nodes": qdq, "int8_tensors": int8_tensors}


# -- torch.export (pt2; aoti's source program) ------------------------------------------------------------------
#: ops that only move data in an exported graph (the ONNX list above, in aten spelling)
_ATEN_PLUMBING = {"view", "reshape", "_unsafe_view", "unsqueeze", "squeeze", "cat", "slice", "select", "permute",
                  "transpose", "t", "expand", "flatten", "clone", "contiguous", "getitem", "split", "alias",
                  "_assert_tensor_metadata", "sym_size", "detach"}


def _pt2(path: Path) -> dict[str, Any]:
    import torch

    from enn_nb.engine.backends._torch_common import register_quantized_ops
    from enn_nb.engine.trust import check_pt2_archive

    check_pt2_archive(path)
    register_quantized_ops()
    return _program(torch.export.load(str(path)), "pt2")


def read_back_program(ep: Any) -> dict[str, Any]:
    """The quantization an in-memory ``ExportedProgram`` holds (same keys as :func:`read_back`)."""
    try:
        return _fractions(_program(ep, "exported program"))
    except Exception as exc:  # a reader's failure is reported, the artifact stays
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}


def _program(ep: Any, fmt: str) -> dict[str, Any]:
    """Constants per dtype, quantize/dequantize nodes, and which compute nodes read dequantized tensors."""
    import torch

    sig = ep.graph_signature
    stored = {**ep.state_dict, **ep.constants}
    by_placeholder = {**sig.inputs_to_parameters, **sig.inputs_to_buffers, **sig.inputs_to_lifted_tensor_constants}
    weights: Counter[str] = Counter()
    int8_tensors = 0
    for target in by_placeholder.values():
        tensor = stored.get(target)
        if isinstance(tensor, torch.Tensor):
            dtype = str(tensor.dtype).removeprefix("torch.")
            weights[dtype] += tensor.numel()
            int8_tensors += tensor.dtype in (torch.int8, torch.uint8)
    quantized: Counter[str] = Counter()
    floating: Counter[str] = Counter()
    qdq = 0
    activation = "float32"
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        namespace = str(getattr(node.target, "namespace", ""))
        if namespace == "quantized_decomposed" or name.startswith(("quantize_", "dequantize_")):
            if name.startswith(("quantize_", "dequantize_")):
                qdq += 1
            source = node.args[0] if node.args else None
            if name == "quantize_per_tensor" and str(node.target).endswith(".default") and (
                    getattr(source, "op", None) != "placeholder" or source.name not in by_placeholder):
                # a static quantize of a computed tensor: its dtype is the activation's (the last argument)
                activation = str(node.args[-1]).removeprefix("torch.")
            continue
        if name in _ATEN_PLUMBING:
            continue
        fed = any(getattr(a, "op", None) == "call_function" and "dequantize" in str(a.target) for a in node.args)
        (quantized if fed else floating)[name] += 1
    return {"format": fmt, "weights": dict(weights), "activation_dtype": activation, "quantized_ops": quantized,
            "float_ops": floating, "qdq_nodes": qdq, "int8_tensors": int8_tensors}


# -- ExecuTorch ----------------------------------------------------------------------------------------------------
_XNN_DTYPES = {"fp32": "float32", "fp16": "float16", "qint8": "int8", "quint8": "uint8", "qcint8": "int8",
               "qint32": "int32", "qcint32": "int32", "qdint8": "int8 (dynamic)", "qcint4": "int4", "qbint4": "int4",
               "int32": "int32", "bf16": "bfloat16"}
_ET_SCALAR = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64"}


def _pte(path: Path) -> dict[str, Any]:
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(path.read_bytes()).program
    weights: Counter[str] = Counter()
    quantized: Counter[str] = Counter()
    floating: Counter[str] = Counter()
    activations: Counter[str] = Counter()
    int8_tensors = qdq = 0
    for plan in program.execution_plan:
        if plan.name != "forward":
            continue
        for value in plan.values:  # constants outside any delegate (portable kernels)
            tensor = value.val
            if type(tensor).__name__ == "Tensor" and getattr(tensor, "data_buffer_idx", 0):
                dtype = _ET_SCALAR.get(int(tensor.scalar_type), str(tensor.scalar_type))
                count = 1
                for d in tensor.sizes:
                    count *= int(d)
                weights[dtype] += count
                int8_tensors += dtype == "int8"
        for op in plan.operators:
            name = op.name.split("::")[-1]
            if "quantize" in name:
                qdq += 1
            else:
                floating[f"{name} (portable)"] += 1
        for delegate in plan.delegates:
            if delegate.id != "XnnpackBackend":
                floating[f"{delegate.id} delegate"] += 1
                continue
            blob = bytes(program.backend_delegate_data[delegate.processed.index].data)
            graph = _xnnpack_graph(blob)
            values = [v["xvalue_union"] for v in graph["xvalues"]]
            tensors = [v.get("tensor_value", v) for v in values]
            for t in tensors:
                dtype = _XNN_DTYPES.get(t["datatype"].removeprefix("xnn_datatype_"), t["datatype"])
                count = 1
                for d in t.get("dims", []):
                    count *= int(d)
                if t.get("constant_buffer_idx", 0):
                    weights[dtype.replace(" (dynamic)", "")] += count
                    int8_tensors += dtype == "int8"
                elif t.get("external_id", 4294967295) == 4294967295:  # an intermediate, not a graph input/output
                    activations[dtype] += 1
            by_id = {t.get("id_out", i): t for i, t in enumerate(tensors)}
            for node in graph["xnodes"]:
                kind = node["xnode_union_type"].removeprefix("XNN")
                if kind == "Convert":
                    qdq += 1
                    continue
                out = by_id.get(node["xnode_union"].get("output_id"))
                dtype = out["datatype"] if out else ""
                (quantized if "int" in dtype else floating)[kind] += 1
    activation = _activation_dtype(activations)
    return {"format": "pte", "weights": dict(weights), "activation_dtype": activation, "quantized_ops": quantized,
            "float_ops": floating, "qdq_nodes": qdq, "int8_tensors": int8_tensors}


def _activation_dtype(activations: Counter[str]) -> str:
    """``int8`` when any intermediate tensor is statically quantized (ops left in float are listed apart, in
    ``float_ops``); else the most common intermediate dtype (a dynamically quantized one counts as float32)."""
    if activations.get("int8") or activations.get("uint8"):
        return "int8"
    if not activations:
        return "float32"
    top = max(activations, key=lambda k: activations[k])
    return "float32" if "dynamic" in top else top


def _xnnpack_graph(blob: bytes) -> dict[str, Any]:
    """An XNNPACK delegate payload as JSON, through ExecuTorch's own flatc and schema."""
    import executorch.backends.xnnpack.serialization.xnnpack_graph_serialize as xs
    from executorch.exir._serialize._flatbuffer import _run_flatc

    header = xs.XNNHeader.from_bytes(blob[: xs.XNNHeader.EXPECTED_LENGTH])
    flatbuffer = blob[header.flatbuffer_offset: header.flatbuffer_offset + header.flatbuffer_size]
    schema = Path(xs.__file__).with_name("schema.fbs")
    with tempfile.TemporaryDirectory() as tmp:
        binary = os.path.join(tmp, "graph.bin")
        Path(binary).write_bytes(flatbuffer)
        _run_flatc(["--json", "--strict-json", "--raw-binary", "-o", tmp, str(schema), "--", binary])
        text = Path(tmp, "graph.json").read_text()
    return json.loads(re.sub(r"(?<=[:\[,\s])(-?)(inf|nan)\b", r'"\1\2"', text))  # quant params may be inf


# -- LiteRT ---------------------------------------------------------------------------------------------------------
def _tflite(path: Path) -> dict[str, Any]:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()  # the op list (documented in the interpreter's own tests)
    produced = {o for op in ops for o in op["outputs"]}
    graph_inputs = {t["index"] for t in interp.get_input_details()}
    weights: Counter[str] = Counter()
    activations: Counter[str] = Counter()
    int8_tensors = 0
    for index, t in tensors.items():
        dtype = np.dtype(t["dtype"]).name
        if index not in produced and index not in graph_inputs:
            weights[dtype] += int(np.prod(t["shape"])) if len(t["shape"]) else 1
            int8_tensors += dtype == "int8"
        elif index in produced:
            activations[dtype] += 1
    quantized: Counter[str] = Counter()
    floating: Counter[str] = Counter()
    qdq = 0
    for op in ops:
        name = op["op_name"]
        if name in ("QUANTIZE", "DEQUANTIZE"):
            qdq += 1
            continue
        dtypes = {np.dtype(tensors[i]["dtype"]).name for i in op["inputs"] if i >= 0 and i in tensors}
        (quantized if dtypes & {"int8", "uint8", "int16"} else floating)[name] += 1
    top = _activation_dtype(activations)
    io = sorted({np.dtype(t["dtype"]).name for t in [*interp.get_input_details(), *interp.get_output_details()]})
    return {"format": "tflite", "weights": dict(weights), "activation_dtype": top, "quantized_ops": quantized,
            "float_ops": floating, "qdq_nodes": qdq, "int8_tensors": int8_tensors, "io_dtypes": io}


# -- CoreML ---------------------------------------------------------------------------------------------------------
_ML_DTYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "INT8": "int8", "UINT8": "uint8", "INT32": "int32",
              "FLOAT64": "float64", "BOOL": "bool", "INT4": "int4", "UINT4": "uint4", "INT16": "int16"}


def _mlpackage(path: Path) -> dict[str, Any]:
    import coremltools as ct
    from coremltools.proto import MIL_pb2

    spec = ct.utils.load_spec(str(path))
    names = {v: _ML_DTYPES.get(k, k.lower()) for k, v in MIL_pb2.DataType.items()}
    weights: Counter[str] = Counter()
    activations: Counter[str] = Counter()
    quantized: Counter[str] = Counter()
    floating: Counter[str] = Counter()
    int8_tensors = 0
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                outputs = [o.type.tensorType for o in op.outputs if o.type.HasField("tensorType")]
                count = sum(_elements(t) for t in outputs)
                if op.type == "const":
                    dtype = names.get(outputs[0].dataType, "?") if outputs else "?"
                    if count > 1:
                        weights[dtype] += count
                elif op.type.startswith("constexpr_"):
                    stored = _stored_dtype(op, names)
                    weights[stored] += count
                    int8_tensors += stored in ("int8", "uint8")
                    quantized[op.type] += 1
                else:
                    for t in outputs:
                        activations[names.get(t.dataType, "?")] += 1
                    floating[op.type] += 1
    top = max(activations, key=lambda k: activations[k]) if activations else "float32"
    return {"format": "mlpackage", "weights": dict(weights), "activation_dtype": top, "quantized_ops": quantized,
            "float_ops": floating, "qdq_nodes": 0, "int8_tensors": int8_tensors}


def _elements(tensor: Any) -> int:
    count = 1
    for dim in tensor.dimensions:
        if dim.HasField("constant"):
            count *= int(dim.constant.size)
    return count


def _stored_dtype(op: Any, names: dict[int, str]) -> str:
    """The dtype a ``constexpr_*`` op stores its weight in (its data input or attribute)."""
    for key in ("data", "quantized_data"):
        value = op.attributes.get(key) if key in op.attributes else None
        if value is not None and value.type.HasField("tensorType"):
            return names.get(value.type.tensorType.dataType, "?")
    for name, arg in op.inputs.items():
        if name in ("data", "quantized_data"):
            for binding in arg.arguments:
                if binding.HasField("value") and binding.value.type.HasField("tensorType"):
                    return names.get(binding.value.type.tensorType.dataType, "?")
    return "int8"
