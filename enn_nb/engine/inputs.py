"""The model side of `export()`: the model or checkpoint, its spec, example inputs, names and essentials.

(The other arguments are checked in :mod:`enn_nb.engine.settings`.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb._version import __version__
from enn_nb.errors import SpecError
from enn_nb.engine import sidecar as sc

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
    if isinstance(obj, torch.nn.Module):
        return obj, {"kind": "model", "model_class": f"{type(obj).__module__}.{type(obj).__qualname__}"}, None
    raise TypeError(
        f"`model_or_checkpoint` is a {type(obj).__name__}; pass a torch.nn.Module or the path of a checkpoint."
    )


def resolve_spec(model: Any, spec: Any) -> Any:
    """The given spec (a dict is read as one), else the one the model describes, else None."""
    from enn_nb.spec import ModelSpec

    if spec is not None:
        if isinstance(spec, Mapping):
            spec = ModelSpec.from_dict(spec)
        return spec
    inner = getattr(model, "_orig_mod", model)
    if any(hasattr(inner, a) for a in ("enn_builder", "in_dim", "config")):
        return ModelSpec.from_model(inner)
    return None


def example_tensors(model: Any, spec: Any, example_inputs: Any, dynamic_batch: bool) -> tuple[torch.Tensor, ...]:
    """The capture inputs: ``example_inputs`` checked against the spec, or drawn from it at batch 2."""
    import numpy as np
    import torch

    from enn_nb.engine.parity import default_example_inputs

    if example_inputs is None:
        in_dim = spec.in_dim if spec is not None else getattr(model, "in_dim", None)
        dtype = spec.feature_dtype if spec is not None else getattr(model, "feature_dtype", None)
        if in_dim is None:
            raise SpecError(
                f"`example_inputs` is needed: `{type(model).__name__}` declares no `in_dim` and no spec was given. "
                "Pass `example_inputs=(torch.randn(2, N),)` or `spec=ModelSpec(in_dim=N)`."
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
    if spec is not None and spec.in_dim is not None and len(tensors) == 1:
        spec.check_input(tensors[0], name="example_inputs")
    if dynamic_batch and tensors and tensors[0].dim() >= 1 and tensors[0].shape[0] == 1:
        # torch.export specialises a dimension of size 1; capture at batch 2 (the same row twice)
        tensors = [torch.cat([t, t]) if t.dim() >= 1 and t.shape[0] == 1 else t for t in tensors]
    return tuple(tensors)


def case_maker(spec: Any, inputs: tuple[torch.Tensor, ...]) -> Callable[[int, int], tuple[torch.Tensor, ...]]:
    """``make(batch, seed)`` giving the parity inputs at one batch size."""
    from enn_nb.engine.parity import default_example_inputs, resample_inputs

    if spec is not None and spec.in_dim is not None and len(inputs) == 1 and inputs[0].dim() == 2:
        dtype = str(inputs[0].dtype).removeprefix("torch.")
        return lambda batch, seed: default_example_inputs(spec, spec.in_dim, dtype, batch=batch, seed=seed)
    return lambda batch, seed: resample_inputs(inputs, batch, seed)


def input_names_of(inputs: tuple[Any, ...]) -> list[str]:
    """``["features"]`` for one input, else ``input_0``, ``input_1``..."""
    return ["features"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))]


def output_names_of(model: Any) -> list[str]:
    """The model's ``export_output_names``, else ``["prediction"]``."""
    names = getattr(model, "export_output_names", None)
    if isinstance(names, (list, tuple)) and names:
        return [str(n) for n in names]
    return ["prediction"]


def essential_metadata(spec: Any, source: dict[str, Any], input_names: list[str], output_names: list[str],
                       inputs: tuple[Any, ...], deviations: list[dict[str, Any]], metadata: dict[str, Any]) -> dict[str, str]:
    """The flat ``str -> str`` facts embedded where a format has a metadata slot."""
    return {
        "enn_nb.schema": sc.SCHEMA,
        "enn_nb.version": __version__,
        "enn_nb.spec": json.dumps(spec.to_dict() if spec is not None else None, sort_keys=True),
        "enn_nb.source_hash": str(source.get("content_hash") or ""),
        "enn_nb.inputs": json.dumps(
            [{"name": n, "shape": ["batch", *list(t.shape[1:])], "dtype": str(t.dtype).removeprefix("torch.")}
             for n, t in zip(input_names, inputs)]
        ),
        "enn_nb.outputs": json.dumps(output_names),
        "enn_nb.deviations": json.dumps([d["name"] for d in deviations]),
        "enn_nb.metadata": json.dumps(sc.jsonable(metadata), sort_keys=True),
    }
