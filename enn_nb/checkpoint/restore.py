"""Restoring into a model through its own ``load_state_dict``: extra state, aliases, hook-resized buffers.

Everything a checkpoint holds is handed to the model's ``load_state_dict`` (DCP included), so load
hooks, ``set_extra_state`` and overridden ``load_state_dict``/``_load_from_state_dict`` run as they do
with ``torch.load`` + ``load_state_dict``. The helpers here decide what to hand over and whether a
shape that differs from a fresh model's is the model's business (its hooks resize it) or an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from enn_nb.errors import CheckpointError, SpecError
from enn_nb.model.spec import jsonable

from .tensors import canonical_key, is_dtensor

if TYPE_CHECKING:
    import torch

# torch.nn.Module stores ``get_extra_state()`` under ``<prefix>_extra_state`` (private constant in torch).
EXTRA_STATE_SUFFIX = "_extra_state"


def split_extra_state(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensor entries, JSON extra state by canonical key) of a state dict.

    Extra state that is a tensor stays a tensor entry; any other value must be JSON (it is stored in
    the manifest and handed back to ``set_extra_state`` on load, tuples as lists).

    Raises:
        CheckpointError: an extra state is neither a tensor nor JSON (names the key and the fix).
    """
    import torch

    tensors: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) or not key.endswith(EXTRA_STATE_SUFFIX):
            tensors[key] = value
            continue
        try:
            extra[canonical_key(key)] = jsonable(value, where=f"state_dict()[{key!r}]")
        except SpecError as exc:
            raise CheckpointError(
                f"{exc} `{key}` is what `get_extra_state()` returned; a checkpoint stores extra state that is a "
                "tensor or JSON. Return a dict of numbers/strings/lists (or a tensor) from `get_extra_state`."
            ) from None
    return tensors, extra


def alias_sources(own: Mapping[str, Any], key_map: Mapping[str, str], stored: Mapping[str, Any]) -> dict[str, str]:
    """Model keys the checkpoint lacks that share memory with a key it holds: ``missing -> stored``.

    A model that registers one tensor under two names (ENN-PyTorch's ``_eager_fuser_perceiver``
    shares 35 with ``fuser.perceiver``) is complete when either name was saved.
    """
    groups: dict[tuple[Any, ...], list[str]] = {}
    for name, key in key_map.items():
        t = own.get(key)
        ident = _identity(t)
        if ident is not None:
            groups.setdefault(ident, []).append(name)
    out: dict[str, str] = {}
    for names in groups.values():
        present = [n for n in names if n in stored]
        if present:
            out.update({n: present[0] for n in names if n not in stored})
    return out


def _identity(t: Any) -> tuple[Any, ...] | None:
    import torch

    if not isinstance(t, torch.Tensor) or t.is_meta or is_dtensor(t) or t.numel() == 0:
        return None
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def hooks_decide_shapes(model: torch.nn.Module, keys: list[str]) -> bool:
    """True when the model's own loading code may resize the tensors under ``keys``.

    That is the case when the root overrides ``load_state_dict`` or has load pre-hooks, or a module
    on the path to one of the keys has load pre-hooks or a ``_load_from_state_dict`` of its own
    (not torch's). Otherwise a shape that differs from the model's is an error, found before loading.
    """
    import torch

    def custom(module: Any) -> bool:
        loader = type(module)._load_from_state_dict
        return bool(module._load_state_dict_pre_hooks) or not loader.__module__.startswith("torch.")

    if type(model).load_state_dict is not torch.nn.Module.load_state_dict or model._load_state_dict_pre_hooks:
        return True
    for key in keys:
        parts = key.split(".")[:-1]
        module: Any = model
        if custom(module):
            return True
        for part in parts:
            module = getattr(module, part, None)
            if not isinstance(module, torch.nn.Module):
                break
            if custom(module):
                return True
    return False


def shapes_now(model: torch.nn.Module, keys: Mapping[str, str]) -> dict[str, tuple[int, ...]]:
    """canonical key -> the shape the model holds now (after its hooks ran)."""
    state = model.state_dict()
    return {name: tuple(state[key].shape) for name, key in keys.items() if key in state and hasattr(state[key], "shape")}
