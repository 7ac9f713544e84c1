"""State-dict plumbing shared by every format: key normalisation, byte views, optimizer trees (hashes: hashing.py)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from enn_nb.errors import CheckpointError, CorruptCheckpointError

if TYPE_CHECKING:
    import torch

COMPILE_WRAPPER = "_orig_mod"  # the attribute torch.compile's OptimizedModule keeps the real module in
OPTIMIZER_PREFIX = "__optimizer__/"


# -- keys -----------------------------------------------------------------------------------------
def canonical_key(key: str) -> str:
    """``key`` without ``torch.compile`` wrapper segments: ``blocks.0._orig_mod.fc.weight`` -> ``blocks.0.fc.weight``."""
    if COMPILE_WRAPPER not in key:
        return key
    return ".".join(part for part in key.split(".") if part != COMPILE_WRAPPER)


def model_state(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A state dict's tensors, detached, keyed by canonical names (compile wrappers stripped).

    Raises:
        CheckpointError: an entry is not a tensor, or two keys collapse to the same canonical name.
    """
    import torch

    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"`state_dict()[{key!r}]` is a {type(value).__name__}, not a tensor; checkpoints hold tensors "
                "only. Store such values in `metadata=` (JSON) instead."
            )
        if value.is_meta:
            raise CheckpointError(
                f"`state_dict()[{key!r}]` is on the meta device and holds no data; materialise the model "
                "(e.g. `model.to_empty(device='cpu')` and load or initialise its weights) before saving."
            )
        name = canonical_key(key)
        if name in out:
            raise CheckpointError(
                f"State-dict keys `{key}` and another one both become `{name}` once torch.compile's "
                f"`{COMPILE_WRAPPER}` is removed; rename one of the modules."
            )
        out[name] = value.detach()
    return out


def model_key_map(model: Any) -> dict[str, str]:
    """canonical name -> the model's own state-dict key (differs when parts are torch.compile'd)."""
    return {canonical_key(k): k for k in model.state_dict().keys()}


# -- bytes and hashes --------------------------------------------------------------------------------
def dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def torch_dtype(name: str) -> torch.dtype:
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise CorruptCheckpointError(f"Unknown tensor dtype `{name}` in the checkpoint's tensor table.")
    return dtype


def cpu_contiguous(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor as dense, contiguous CPU memory in its logical values (a copy only when needed)."""
    import torch

    t = tensor.detach()
    if t.layout != torch.strided:
        raise CheckpointError(f"A {t.layout} tensor cannot be stored; convert it with `.to_dense()` first.")
    if t.device.type != "cpu":
        t = t.cpu()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    if not t.is_contiguous():
        t = t.contiguous()
    return t


def byte_view(tensor: torch.Tensor) -> memoryview:
    """A zero-copy byte view of a dense contiguous CPU tensor (call :func:`cpu_contiguous` first)."""
    import torch

    if tensor.numel() == 0:
        return memoryview(b"")
    flat = tensor.reshape(-1)
    if flat.dtype != torch.uint8:
        flat = flat.view(torch.uint8)
    return memoryview(flat.numpy()).cast("B")


def is_dtensor(tensor: Any) -> bool:
    """A ``torch.distributed`` DTensor (FSDP2 / ``distribute_tensor``), told apart without importing it."""
    return type(tensor).__name__ == "DTensor"


def nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def expected_nbytes(dtype: str, shape: Iterable[int]) -> int:
    import torch

    return math.prod(shape) * torch.empty((), dtype=torch_dtype(dtype)).element_size()


# -- optimizer state as JSON structure + named tensors ------------------------------------------------
def split_tree(obj: Any, prefix: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split ``optimizer.state_dict()`` into a JSON structure and named tensors.

    Tensors become ``{"$tensor": name}`` with ``name = prefix + path`` (``__optimizer__/state/0/exp_avg``),
    tuples ``{"$tuple": [...]}``, dicts with non-string keys ``{"$items": [[k, v], ...]}``, and
    non-finite floats ``{"$float": "nan"}``. :func:`join_tree` reverses it exactly.

    Raises:
        CheckpointError: a value is neither JSON, a tensor, nor a container of them (names its path).
    """
    import torch

    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: list[str]) -> Any:
        if isinstance(value, torch.Tensor):
            name = prefix + "/".join(path)
            tensors[name] = value.detach()
            return {"$tensor": name}
        if value is None or isinstance(value, (bool, str, int)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"$float": repr(value)}
        if isinstance(value, tuple):
            return {"$tuple": [walk(v, [*path, str(i)]) for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, [*path, str(i)]) for i, v in enumerate(value)]
        if isinstance(value, Mapping):
            if all(isinstance(k, str) and not k.startswith("$") for k in value):
                return {k: walk(v, [*path, k]) for k, v in value.items()}
            return {"$items": [[walk(k, [*path, "key"]), walk(v, [*path, str(k)])] for k, v in value.items()]}
        raise CheckpointError(
            f"Optimizer state at `{'/'.join(path) or '(root)'}` is a {type(value).__name__}; only tensors, "
            "numbers, strings, booleans, None, lists, tuples and dicts can be stored."
        )

    return walk(obj, []), tensors


def join_tree(structure: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`split_tree`.

    Raises:
        CorruptCheckpointError: the structure names a tensor that is not in ``tensors``, or is malformed.
    """
    try:
        return _join_tree(structure, tensors)
    except CorruptCheckpointError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
        raise CorruptCheckpointError(
            f"The optimizer structure in the manifest is malformed ({type(exc).__name__}: {str(exc)[:200]}); the "
            "checkpoint is damaged or forged. Load it with `optimizer` state ignored, or restore a good copy."
        ) from None


def _join_tree(structure: Any, tensors: Mapping[str, torch.Tensor]) -> Any:

    def walk(value: Any) -> Any:
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            if set(value) == {"$tensor"}:
                name = value["$tensor"]
                if not isinstance(name, str) or name not in tensors:
                    raise CorruptCheckpointError(f"The optimizer state names tensor `{name}`, which the checkpoint lacks.")
                return tensors[name]
            if set(value) == {"$tuple"}:
                return tuple(walk(v) for v in value["$tuple"])
            if set(value) == {"$items"}:
                return {walk(k): walk(v) for k, v in value["$items"]}
            if set(value) == {"$float"}:
                return float(value["$float"])
            return {k: walk(v) for k, v in value.items()}
        return value

    return walk(structure)
