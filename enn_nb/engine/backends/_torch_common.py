"""Helpers shared by the torch-native backends (pt2, aoti): I/O description from a program, torch runners."""

from __future__ import annotations

from typing import Any

from enn_nb.engine.backends.base import ExportJob, TensorInfo


#: The PT2E int8 modes (``quantize_modes``) of pt2 and aoti.
X86_QUANTIZE_MODES = {
    "int8-weights": "torchao PT2E + X86InductorQuantizer (dynamic)",
    "int8": "torchao PT2E + X86InductorQuantizer (static, calibrated)",
}


def register_quantized_ops() -> None:
    """Make ``torch.ops.quantized_decomposed`` (the PT2E quantize/dequantize ops) known before a quantized
    program is loaded: torch defines them in a module it does not import by itself."""
    import importlib

    importlib.import_module("torch.ao.quantization.fx._decomposed")  # registers the library on import


def _dim(d: Any) -> int | str:
    if isinstance(d, int):
        return d
    node = getattr(d, "node", None)
    if node is not None and node.is_constant():  # a SymInt that is in fact constant
        return int(node.constant)
    if node is not None and node.maybe_as_int() is not None:
        return int(node.maybe_as_int())
    return "batch"  # the only dimension enn_nb makes dynamic (never int(d): that would specialise it)


def program_io(job: ExportJob, ep: Any) -> tuple[list[TensorInfo], list[TensorInfo], bool]:
    """Inputs/outputs of an ExportedProgram, named as the export names them; and whether the batch is dynamic."""
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    user_inputs = [s for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    inputs = []
    for i, spec in enumerate(user_inputs):
        val = placeholders[spec.arg.name].meta.get("val")
        name = job.input_names[i] if i < len(job.input_names) else spec.arg.name
        shape = [_dim(d) for d in val.shape] if val is not None else []
        dtype = str(val.dtype).removeprefix("torch.") if val is not None else "unknown"
        inputs.append(TensorInfo(name, shape, dtype))
    output_node = next(n for n in ep.graph.nodes if n.op == "output")
    vals = output_node.args[0]
    user_outputs = [s for s in ep.graph_signature.output_specs if s.kind.name == "USER_OUTPUT"]
    outputs = []
    flat = list(vals) if isinstance(vals, (list, tuple)) else [vals]
    for j, node in enumerate(flat[-len(user_outputs):] if user_outputs else flat):
        val = node.meta.get("val") if hasattr(node, "meta") else None
        name = job.output_names[j] if j < len(job.output_names) else f"output_{j}"
        shape = [_dim(d) for d in val.shape] if val is not None else []
        dtype = str(val.dtype).removeprefix("torch.") if val is not None else "unknown"
        outputs.append(TensorInfo(name, shape, dtype))
    dynamic = bool(inputs and inputs[0].shape and isinstance(inputs[0].shape[0], str))
    return inputs, outputs, dynamic


def torch_runner(fn: Any):  # type: ignore[no-untyped-def]
    """A runner (numpy in, numpy out) around a torch callable."""
    import torch

    def run(inputs: list[Any]) -> list[Any]:
        with torch.no_grad():
            out = fn(*[torch.from_numpy(a) for a in inputs])
        if isinstance(out, dict):
            out = list(out.values())
        elif not isinstance(out, (list, tuple)):
            out = [out]
        return [o.detach().cpu().numpy() for o in out]

    return run
