"""Checks and preparation of `export()`'s arguments: out_dir, stem, options, the model, its spec and inputs."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb._version import __version__
from enn_nb.errors import OutputDirError, SpecError
from enn_nb.engine import sidecar as sc

if TYPE_CHECKING:
    import torch


def prepare_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Create ``out_dir`` if needed and prove it writable, before any work.

    Raises:
        OutputDirError: it cannot be created or written (names the path, the reason and the fix).
    """
    path = Path(out_dir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".enn-write-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        blocker = next((p for p in [path, *path.parents] if p.exists()), None)
        hint = (
            f" `{blocker}` is a file, not a folder."
            if blocker is not None and blocker.is_file()
            else ""
        )
        raise OutputDirError(
            f"`out_dir` {str(path)!r} cannot be written: {exc.strerror or exc}.{hint} "
            "Choose a folder you can write to (it is created if missing)."
        ) from None
    return path.resolve()


def check_stem(stem: str) -> str:
    """``stem`` if it is a plain file name stem (no folder, no leading dot); else ValueError."""
    if not isinstance(stem, str) or not stem or any(c in stem for c in "/\\\0") or stem.startswith("."):
        raise SpecError(f"`stem` is {stem!r}; give a plain file name stem such as 'model' (no folders, no leading dot).")
    return stem


def check_batch_range(batch_range: Sequence[int]) -> tuple[int, int, int]:
    """``(min, opt, max)`` as ints with ``1 <= min <= opt <= max``; else ValueError."""
    try:
        lo, opt, hi = (int(b) for b in batch_range)
    except (TypeError, ValueError):
        raise SpecError(f"`batch_range` is {batch_range!r}; give (min, opt, max) batch sizes, e.g. (1, 8, 64).") from None
    if not 1 <= lo <= opt <= hi:
        raise SpecError(f"`batch_range` is {tuple(batch_range)!r}; it needs 1 <= min <= opt <= max, e.g. (1, 8, 64).")
    return lo, opt, hi


def check_options(options: Mapping[str, Any] | None, names: list[str]) -> dict[str, dict[str, Any]]:
    """Per-backend option dicts, each for a backend being exported (or ``"onnx"``); else ValueError."""
    options = dict(options or {})
    allowed = set(names) | {"onnx"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise SpecError(
            f"`options` has entries for {unknown}, which are not being exported; options are per backend, "
            f"e.g. options={{'ort': {{'optimization_level': 'basic'}}}}; backends here: {', '.join(names)}."
        )
    for key, value in options.items():
        if not isinstance(value, Mapping):
            raise SpecError(f"`options[{key!r}]` is {value!r}; it must be a dict of that backend's options.")
    return {k: dict(v) for k, v in options.items()}


def default_onnx_options() -> dict[str, Any]:
    """How the shared ONNX is made unless ``options["onnx"]`` says otherwise."""
    return {"opset": None, "optimize": True}


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
