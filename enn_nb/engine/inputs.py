"""The model side of `export()`: the model or checkpoint, its spec, example inputs, names and essentials.

(The other arguments are checked in :mod:`enn_nb.engine.settings`.)
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb._version import __version__
from enn_nb.errors import InputMismatchError, SpecError
from enn_nb.engine import sidecar as sc
from enn_nb.model import signature as sig
from enn_nb.model.examples import default_example_inputs, eval_only, resample_inputs
from enn_nb.model.signature import TensorSig
from enn_nb.model.spec import ModelSpec

if TYPE_CHECKING:
    import torch


def load_source(obj: Any) -> tuple[Any, dict[str, Any], Any]:
    """``(model, source, spec from the checkpoint or None)``."""
    import torch

    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if not path.exists():
            raise FileNotFoundError(f"Checkpoint `{path}` does not exist; pass a model or the path of a checkpoint.")
        from enn_nb.checkpoint import load

        loaded = load(path)
        manifest = getattr(loaded, "manifest", None)
        source = {
            "kind": "checkpoint",
            "path": str(path.resolve()),
            "content_hash": getattr(manifest, "content_hash", None),
            "model_class": f"{type(loaded.model).__module__}.{type(loaded.model).__qualname__}",
        }
        return loaded.model, source, getattr(manifest, "spec", None)
    if hasattr(obj, "model") and hasattr(obj, "manifest") and isinstance(obj.model, torch.nn.Module):
        # an `enn_nb.load(...)` result: a checkpoint loaded into a model the caller built (`--model`)
        return obj.model, {
            "kind": "checkpoint",
            "content_hash": getattr(obj.manifest, "content_hash", None),
            "model_class": f"{type(obj.model).__module__}.{type(obj.model).__qualname__}",
        }, obj.manifest.spec
    if isinstance(obj, torch.nn.Module):
        return obj, {"kind": "model", "model_class": f"{type(obj).__module__}.{type(obj).__qualname__}"}, None
    raise TypeError(
        f"`model_or_checkpoint` is a {type(obj).__name__}; pass a torch.nn.Module, the path of a checkpoint or "
        "an `enn_nb.load(...)` result."
    )


def resolve_spec(model: Any, spec: Any) -> Any:
    """The given spec (a dict is read as one), else the one the model describes, else None."""

    if spec is not None:
        if isinstance(spec, Mapping):
            spec = ModelSpec.from_dict(spec)
        return spec
    inner = getattr(model, "_orig_mod", model)
    if any(hasattr(inner, a) for a in ("enn_builder", "in_dim", "config")):
        return ModelSpec.from_model(inner)
    return None


def example_tensors(model: Any, spec: Any, example_inputs: Any, dynamic_batch: bool) -> tuple[torch.Tensor, ...]:
    """The capture inputs: ``example_inputs`` checked against the spec's signature, or drawn from it at batch 2.

    Raises:
        InputMismatchError: inputs that do not fit the signature (names the input, expected and received).
        SpecError: no example inputs and nothing to draw them from (says how to declare the signature).
    """
    import numpy as np
    import torch

    if example_inputs is None:
        if spec is not None and spec.inputs is not None:
            return sig.draw(spec.inputs)
        in_dim = spec.in_dim if spec is not None else getattr(model, "in_dim", None)
        dtype = spec.feature_dtype if spec is not None else getattr(model, "feature_dtype", None)
        if in_dim is None:
            raise SpecError(
                f"`{type(model).__name__}` declares no input signature and no `in_dim`, so example inputs cannot be "
                "drawn. Declare its inputs once, e.g. `spec=ModelSpec(inputs=['values:float32[B, 24, 6]', "
                "'mask:bool[B, 24]'])` (saved with the checkpoint), or give example inputs: `example_inputs=` in "
                "Python, `example_inputs: [B, 24, 6]` in a `%%enn_export` body, `--input values:float32[B,24,6]` "
                "on the CLI."
            )
        return default_example_inputs(spec, in_dim, dtype if isinstance(dtype, str) else None)
    items = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    tensors = []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            item = torch.from_numpy(item)
        if not isinstance(item, torch.Tensor):
            raise SpecError(f"`example_inputs[{i}]` is a {type(item).__name__}; pass torch tensors (or numpy arrays).")
        tensors.append(item.detach())
    if spec is not None and spec.inputs is not None:
        spec.check_inputs(tensors)
    elif spec is not None and spec.in_dim is not None and len(tensors) == 1 and tensors[0].dim() == 2:
        spec.check_input(tensors[0], name="example_inputs")
    elif spec is not None and spec.in_dim is not None and len(tensors) == 1 and tensors[0].dim() > 2:
        # upstream's `in_dim` counts raw features: a sequence [B, T, in_dim] keeps them on the last axis
        if tensors[0].shape[-1] != spec.in_dim:
            raise InputMismatchError(
                f"`example_inputs` has shape {list(tensors[0].shape)}; the spec's `in_dim` is {spec.in_dim}, so the "
                f"last axis should hold {spec.in_dim} features. Expected [B, ..., {spec.in_dim}].",
                expected=["batch", "...", spec.in_dim], received=list(tensors[0].shape),
            )
    if dynamic_batch and tensors and tensors[0].dim() >= 1 and tensors[0].shape[0] == 1:
        # torch.export specialises a dimension of size 1; capture at batch 2 (the same row twice)
        tensors = [torch.cat([t, t]) if t.dim() >= 1 and t.shape[0] == 1 else t for t in tensors]
    return tuple(tensors)


def case_maker(spec: Any, inputs: tuple[torch.Tensor, ...]) -> Callable[[int, int], tuple[torch.Tensor, ...]]:
    """``make(batch, seed)`` giving the parity inputs at one batch size."""

    if spec is not None and spec.inputs is not None:
        sizes = sig.check_inputs(spec.inputs, inputs)  # the capture's sizes of time and other dims
        return lambda batch, seed: sig.draw(spec.inputs, batch=batch, seed=seed, sizes=sizes)
    if spec is not None and spec.in_dim is not None and len(inputs) == 1 and inputs[0].dim() == 2:
        dtype = str(inputs[0].dtype).removeprefix("torch.")
        return lambda batch, seed: default_example_inputs(spec, spec.in_dim, dtype, batch=batch, seed=seed)
    return lambda batch, seed: resample_inputs(inputs, batch, seed)


@dataclasses.dataclass
class ModelIO:
    """The signature one export follows: named inputs (with symbolic dims) and flattened, named outputs."""

    inputs: list[TensorSig]
    outputs: list[TensorSig]
    structure: str

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [s.to_dict() for s in self.inputs], "outputs": [s.to_dict() for s in self.outputs],
                "structure": self.structure}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelIO:
        return cls([TensorSig.from_dict(s) for s in data["inputs"]], [TensorSig.from_dict(s) for s in data["outputs"]],
                   str(data["structure"]))


def resolve_io(model: Any, spec: Any, inputs: tuple[torch.Tensor, ...]) -> ModelIO:
    """The export's signature: the spec's, else inferred from the inputs and one eager call.

    The call (eval mode, no grad) also proves the inputs fit the model: a model that rejects them
    raises InputMismatchError naming the signature it was given, not the model's raw traceback.
    """
    import torch

    call = model.forward_export if callable(getattr(model, "forward_export", None)) else model
    if spec is not None and spec.inputs is not None:
        in_sigs = list(spec.inputs)
    elif len(inputs) == 1:  # the ENN shorthand keeps its name, whatever the forward calls it
        in_sigs = [sig.TensorSig("features", t.dtype, s.shape, s.categories)
                   for t, s in zip(inputs, sig.infer_inputs(call, inputs))]
    else:
        in_sigs = sig.infer_inputs(sig.forward_of(model), inputs)
    try:
        with eval_only(model), torch.no_grad():
            out = call(*inputs)
    except Exception as exc:
        declared = spec.input_signature() if spec is not None else None
        expected = sig.describe(declared or in_sigs)
        received = sig.received_text(inputs, [s.name for s in in_sigs])
        raise InputMismatchError(
            f"`{type(model).__name__}` rejected its example inputs: {_first_line(exc)}. Expected signature "
            f"{expected}, received {received}. If the model takes other inputs (sequences [B, T, F], several "
            "tensors, integer codes), declare them with `ModelSpec(inputs=[...])` or pass matching `example_inputs`.",
            expected=expected, received=received,
        ) from exc
    out_sigs, structure = sig.infer_outputs(out)
    declared_names = getattr(model, "export_output_names", None)
    if isinstance(declared_names, (list, tuple)) and len(declared_names) == len(out_sigs):
        out_sigs = [dataclasses.replace(s, name=str(n)) for s, n in zip(out_sigs, declared_names)]
    elif spec is not None and spec.outputs is not None and len(spec.outputs) == len(out_sigs):
        out_sigs = [dataclasses.replace(s, name=d.name) for s, d in zip(out_sigs, spec.outputs)]
    return ModelIO(in_sigs, out_sigs, structure)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0][:300] if lines else type(exc).__name__).rstrip(".")


def essential_metadata(spec: Any, source: dict[str, Any], io: ModelIO, deviations: list[dict[str, Any]],
                       metadata: dict[str, Any]) -> dict[str, str]:
    """The flat ``str -> str`` facts embedded where a format has a metadata slot."""
    described = [{"name": s.name, "shape": s.to_dict()["shape"], "dtype": s.dtype} for s in io.inputs]
    essentials = {
        "enn_nb.schema": sc.SCHEMA,
        "enn_nb.version": __version__,
        "enn_nb.model.spec": json.dumps(spec.to_dict() if spec is not None else None, sort_keys=True),
        "enn_nb.source_hash": str(source.get("content_hash") or ""),
        "enn_nb.inputs": json.dumps(described),
        "enn_nb.outputs": json.dumps(io.output_names),
        "enn_nb.deviations": json.dumps([d["name"] for d in deviations]),
        "enn_nb.metadata": json.dumps(sc.jsonable(metadata), sort_keys=True),
    }
    if io.structure != "tensor":
        essentials["enn_nb.output_structure"] = io.structure
    return essentials
