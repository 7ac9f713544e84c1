"""ENN-PyTorch (upstream) checkpoint layouts, read into an enn_nb Manifest.

The documented upstream layouts:

- ``.pt``: ``torch.save`` of a dict with ``version``, ``in_dim``, ``out_shape``, ``config``,
  ``pytorch_version``, ``extra``, ``tasks``, ``state_dict`` and optionally ``optimizer_state_dict``.
- ``.safetensors``: the weights, with the same fields (minus the tensors) as JSON in the header
  metadata key ``enn_meta_json`` (also ``enn.meta_json``/``enn_meta``), or in a sidecar
  ``<name>.safetensors.json``.
- DCP: a directory saved as ``{"model": state_dict}`` with those fields in ``meta.json`` beside it.

They carry no builder name and no hashes. The builder is ``extra["builder"]`` when present, else
:data:`UPSTREAM_BUILDER`; loading needs ``model=`` or a builder registered under that name, and the
error lists which upstream fields were missing. A bare ``torch.save(model.state_dict())`` file is read
the same way (every field missing).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb.errors import NotACheckpointError, SpecError
from enn_nb.spec import ModelSpec, jsonable

from .detect import UPSTREAM_DCP_META, read_json_file, safetensors_sidecar
from .manifest import Manifest, TensorEntry
from .tensors import canonical_key, dtype_name, expected_nbytes

if TYPE_CHECKING:
    import torch

LAYOUT = "enn-pytorch"
UPSTREAM_BUILDER = "enn_pytorch"
META_FIELDS = ("version", "in_dim", "out_shape", "config", "pytorch_version", "extra", "tasks")
PT_FIELDS = (*META_FIELDS, "state_dict")
SAFETENSORS_META_KEYS = ("enn_meta_json", "enn.meta_json", "enn_meta")


def is_upstream_pt(payload: Any) -> bool:
    import torch

    if not isinstance(payload, Mapping) or not payload:
        return False
    if isinstance(payload.get("state_dict"), Mapping):
        return True
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items())


def from_pt_payload(payload: Any, path: Path) -> tuple[Manifest, dict[str, torch.Tensor], Any]:
    """(manifest, canonical state dict, optimizer state or None) of an upstream .pt payload.

    Raises:
        NotACheckpointError: the payload is neither layout.
    """
    from .pt import not_a_checkpoint

    if not is_upstream_pt(payload):
        raise not_a_checkpoint(path, payload)
    if isinstance(payload.get("state_dict"), Mapping):
        state_raw, meta, layout = payload["state_dict"], payload, LAYOUT
        missing = [f for f in PT_FIELDS if f not in payload]
    else:  # a bare state dict
        state_raw, meta, layout = payload, {}, "state_dict"
        missing = list(PT_FIELDS)
    import torch

    bad = [k for k, v in state_raw.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise NotACheckpointError(f"`{path}`'s `state_dict` holds non-tensor entries {bad[:5]}; it is not a model checkpoint.")
    state = {canonical_key(str(k)): v for k, v in state_raw.items()}
    tensors = [TensorEntry(n, dtype_name(t.dtype), tuple(t.shape), t.numel() * t.element_size()) for n, t in state.items()]
    manifest = _manifest("pt", path, meta, tensors, missing, layout)
    return manifest, state, payload.get("optimizer_state_dict") if meta else None


def from_safetensors(path: Path, header_metadata: Mapping[str, Any],
                     table: Mapping[str, tuple[str, tuple[int, ...]]]) -> Manifest:
    """The manifest of a safetensors file without an enn_nb manifest (upstream or plain)."""
    meta: dict[str, Any] = {}
    raw = next((header_metadata[k] for k in SAFETENSORS_META_KEYS if isinstance(header_metadata.get(k), str)), None)
    layout = LAYOUT
    if raw is not None:
        from enn_nb._safeio import json_loads

        value = json_loads(raw, what=f"`{path}`'s `enn_meta_json` header entry")
        meta = value if isinstance(value, dict) else {}
    elif safetensors_sidecar(path).exists():
        meta = read_json_file(safetensors_sidecar(path))
    else:
        layout = "safetensors"  # a plain safetensors file: the weights only
    missing = [f for f in META_FIELDS if f not in meta]
    tensors = [TensorEntry(n, dtype, shape, expected_nbytes(dtype, shape)) for n, (dtype, shape) in table.items()]
    return _manifest("safetensors", path, meta, tensors, missing, layout)


def from_dcp(path: Path, table: Mapping[str, tuple[str, tuple[int, ...]]]) -> Manifest:
    from enn_nb._safeio import confined

    meta = read_json_file(confined(path, UPSTREAM_DCP_META, what="The ENN-PyTorch `meta.json`"))
    missing = [f for f in META_FIELDS if f not in meta]
    tensors = [TensorEntry(n, dtype, shape, expected_nbytes(dtype, shape)) for n, (dtype, shape) in table.items()]
    return _manifest("dcp", path, meta, tensors, missing, LAYOUT)


def _manifest(fmt: str, path: Path, meta: Mapping[str, Any], tensors: list[TensorEntry], missing: list[str],
              layout: str) -> Manifest:
    extra = meta.get("extra") if isinstance(meta.get("extra"), Mapping) else {}
    builder = extra.get("builder") or extra.get("enn_nb_builder") or UPSTREAM_BUILDER
    spec = ModelSpec(
        builder=str(builder),
        config=_lenient(meta.get("config")) if isinstance(meta.get("config"), Mapping) else None,
        in_dim=_int_or_none(meta.get("in_dim")),
        out_shape=_shape_or_none(meta.get("out_shape")),
        tasks=_tasks(meta.get("tasks")),
        metadata={"enn_pytorch": {
            "version": _lenient(meta.get("version")),
            "pytorch_version": _lenient(meta.get("pytorch_version")),
            "extra": _lenient(meta.get("extra")),
        }} if meta else {},
    )
    mtime = _dt.datetime.fromtimestamp(path.stat().st_mtime, _dt.timezone.utc)
    return Manifest(
        format=fmt,
        spec=spec,
        tensors=tensors,
        versions={"enn_nb": None, "torch": _str_or_none(meta.get("pytorch_version")), "python": None},
        created=mtime.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        source={"layout": layout, "missing_fields": list(missing)},
        path=str(path),
    )


def missing_fields_note(manifest: Manifest) -> str:
    """A sentence naming the upstream fields the checkpoint lacked (empty when none)."""
    source = manifest.source or {}
    missing = source.get("missing_fields") or []
    if not missing:
        return ""
    return f" The checkpoint ({source.get('layout')} layout) lacks the field(s) {', '.join(f'`{m}`' for m in missing)}."


def _lenient(value: Any) -> Any:
    """JSON for what is JSON; ``repr`` strings for anything else (upstream extras may hold objects)."""
    try:
        return jsonable(value)
    except SpecError:
        if isinstance(value, Mapping):
            return {str(k): _lenient(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_lenient(v) for v in value]
        return repr(value)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None and int(value) > 0 else None
    except (TypeError, ValueError):
        return None


def _shape_or_none(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, int):
        value = (value,)
    try:
        shape = tuple(int(d) for d in value)
    except (TypeError, ValueError):
        return None
    return shape if shape and all(d > 0 for d in shape) else None


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _tasks(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return [{"name": str(k), **(_lenient(v) if isinstance(v, Mapping) else {"value": _lenient(v)})}
                for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        return [_lenient(v) if isinstance(v, Mapping) else {"name": str(v)} for v in value]
    return [{"name": str(value)}]
