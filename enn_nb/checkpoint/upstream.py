"""ENN-PyTorch (upstream) checkpoint layouts, read into an enn_nb Manifest.

The layouts ENN-PyTorch (``enn_torch``) writes:

- ``.pt`` (``save_model``): ``torch.save`` of a dict with ``version``, ``in_dim``, ``out_shape``,
  ``config``, ``pytorch_version`` (a ``TorchVersion``), ``extra``, ``tasks``, ``state_dict`` and
  optionally ``optimizer_state_dict``.
- ``.safetensors``: the weights, with the fields (minus the tensors) as JSON in the header key
  ``enn_meta_json`` (``export_safetensors_single``; also ``enn.meta_json``/``enn_meta``), or in a
  sidecar ``<name>.safetensors.json`` or the legacy ``<stem>.json`` (``save_model``).
- DCP: a directory saved as ``{"model": state_dict}`` with the fields in ``meta.json`` or
  ``model.meta.json``, in the directory or up to three folders up. Training checkpoints have a
  rank-local ``__0.metadata`` instead of ``.metadata`` and a bare ``model.pt`` state dict beside it
  (read with the same meta files, or ``<stem>.meta.json``).

They carry no builder name and no hashes. The builder is ``extra["builder"]`` when present, else
:data:`UPSTREAM_BUILDER` (``enn_nb.adapters.enn_torch`` registers it when ``enn_torch`` is installed).
Every upstream key that is not a spec field is kept in ``metadata["enn_pytorch"]``; the tasks'
``{"type": "__fuser__"}`` entry (the fuser's description, not a task) is kept there as ``fuser``.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb._safeio import confined, json_loads
from enn_nb.errors import NotACheckpointError, SpecError
from enn_nb.model.spec import ModelSpec, jsonable

from .detect import read_json_file, safetensors_sidecar, upstream_meta_file
from .manifest import Manifest, TensorEntry
from .tensors import canonical_key, dtype_name, expected_nbytes

if TYPE_CHECKING:
    import torch

LAYOUT = "enn-pytorch"
UPSTREAM_BUILDER = "enn_pytorch"
META_FIELDS = ("version", "in_dim", "out_shape", "config", "pytorch_version", "extra", "tasks")
SPEC_KEYS = ("in_dim", "out_shape", "config", "tasks")
FUSER_TYPE = "__fuser__"
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

    The caller checks :func:`is_upstream_pt` first (and raises its own "not a checkpoint" error).
    """
    if isinstance(payload.get("state_dict"), Mapping):
        state_raw, layout = payload["state_dict"], LAYOUT
        meta = {k: v for k, v in payload.items() if k not in ("state_dict", "optimizer_state_dict")}
        missing = [f for f in PT_FIELDS if f not in payload]
        variant = "save_model .pt"
    else:  # a bare state dict; a training checkpoint's `model.pt` has its meta files beside it
        state_raw, layout = payload, "state_dict"
        meta_file = _pt_meta_file(path)
        meta = read_json_file(meta_file) if meta_file is not None else {}
        if meta_file is not None:
            layout, variant = LAYOUT, f"bare state dict + {_relative(meta_file, path.parent)}"
        # No payload keys at all (not even `state_dict`): the fields come from the meta file, if any.
        missing = [f for f in META_FIELDS if f not in meta] if meta_file is not None else list(PT_FIELDS)
    import torch

    bad = [k for k, v in state_raw.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise NotACheckpointError(f"`{path}`'s `state_dict` holds non-tensor entries {bad[:5]}; it is not a model checkpoint.")
    state = {canonical_key(str(k)): v for k, v in state_raw.items()}
    tensors = [TensorEntry(n, dtype_name(t.dtype), tuple(t.shape), t.numel() * t.element_size()) for n, t in state.items()]
    source = {"variant": variant} if layout == LAYOUT else {}
    manifest = _manifest("pt", path, meta, tensors, missing, layout, **source)
    optimizer = payload.get("optimizer_state_dict") if isinstance(payload.get("state_dict"), Mapping) else None
    return manifest, state, optimizer


def from_safetensors(path: Path, header_metadata: Mapping[str, Any],
                     table: Mapping[str, tuple[str, tuple[int, ...]]]) -> Manifest:
    """The manifest of a safetensors file without an enn_nb manifest (upstream or plain)."""
    meta: dict[str, Any] = {}
    key = next((k for k in SAFETENSORS_META_KEYS if isinstance(header_metadata.get(k), str)), None)
    raw = header_metadata[key] if key is not None else None
    layout = LAYOUT
    legacy = path.with_suffix(".json")
    variant = f"safetensors + header `{key}`"
    if raw is not None:
        value = json_loads(raw, what=f"`{path}`'s `enn_meta_json` header entry")
        meta = value if isinstance(value, dict) else {}
    elif safetensors_sidecar(path).exists():
        meta, variant = read_json_file(safetensors_sidecar(path)), f"safetensors + `{safetensors_sidecar(path).name}`"
    elif legacy.exists() and legacy != safetensors_sidecar(path):
        meta, variant = read_json_file(legacy), f"safetensors + legacy `{legacy.name}`"
    else:
        layout = "safetensors"  # a plain safetensors file: the weights only
    if header_metadata.get("format") and "format" not in meta:
        meta = {**meta, "header_format": header_metadata["format"]}
    missing = [f for f in META_FIELDS if f not in meta]
    tensors = [TensorEntry(n, dtype, shape, expected_nbytes(dtype, shape)) for n, (dtype, shape) in table.items()]
    source = {"variant": variant} if layout == LAYOUT else {}
    return _manifest("safetensors", path, meta, tensors, missing, layout, **source)


def from_dcp(path: Path, table: Mapping[str, tuple[str, tuple[int, ...]]], metadata_name: str) -> Manifest:
    meta_file = upstream_meta_file(path)
    if meta_file is None:
        raise NotACheckpointError(f"`{path}` has no ENN-PyTorch `meta.json`/`model.meta.json` (looked up to three folders up).")
    if meta_file.parent == path:  # inside the checkpoint: a symlink must not lead out of it
        meta_file = confined(path, meta_file.name, what="The ENN-PyTorch meta file")
    meta = read_json_file(meta_file)
    missing = [f for f in META_FIELDS if f not in meta]
    tensors = [TensorEntry(n, dtype, shape, expected_nbytes(dtype, shape)) for n, (dtype, shape) in table.items()]
    kind = "training checkpoint (rank-local)" if metadata_name != ".metadata" else "dcp"
    variant = f"{kind} `{metadata_name}` + {_relative(meta_file, path)}"
    return _manifest("dcp", path, meta, tensors, missing, LAYOUT, variant=variant)


def _pt_meta_file(path: Path) -> Path | None:
    """A bare state dict's metadata: ``<stem>.meta.json``, ``<name>.meta.json``, then the folder's meta files."""
    for candidate in (path.with_suffix(".meta.json"), path.with_name(path.name + ".meta.json")):
        if candidate.is_file():
            return candidate
    return upstream_meta_file(path.parent)


def _relative(file: Path, base: Path) -> str:
    try:
        return f"`{os.path.relpath(file.resolve(), base.resolve())}`"
    except ValueError:  # another drive (Windows)
        return f"`{file}`"


def _manifest(fmt: str, path: Path, meta: Mapping[str, Any], tensors: list[TensorEntry], missing: list[str],
              layout: str, **source: Any) -> Manifest:
    extra = meta.get("extra") if isinstance(meta.get("extra"), Mapping) else {}
    builder = extra.get("builder") or extra.get("enn_nb_builder") or UPSTREAM_BUILDER
    tasks, fuser = _split_fuser(meta.get("tasks"))
    kept = {str(k): lenient(v) for k, v in meta.items() if k not in SPEC_KEYS}  # never dropped
    if fuser is not None:
        kept["fuser"] = fuser
    spec = ModelSpec(
        builder=str(builder),
        config=lenient(meta.get("config")) if isinstance(meta.get("config"), Mapping) else None,
        in_dim=_int_or_none(meta.get("in_dim")),
        out_shape=_shape_or_none(meta.get("out_shape")),
        tasks=_tasks(tasks),
        metadata={"enn_pytorch": kept} if meta else {},
    )
    mtime = _dt.datetime.fromtimestamp(path.stat().st_mtime, _dt.timezone.utc)
    return Manifest(
        format=fmt,
        spec=spec,
        tensors=tensors,
        versions={"enn_nb": None, "torch": _str_or_none(meta.get("pytorch_version")), "python": None},
        created=mtime.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        source={"layout": layout, **source, "missing_fields": list(missing),
                "present_fields": [f for f in META_FIELDS if f in meta]},
        path=str(path),
    )


def missing_fields_note(manifest: Manifest) -> str:
    """A sentence naming the upstream fields the checkpoint lacked (empty when none)."""
    source = manifest.source or {}
    missing = source.get("missing_fields") or []
    if not missing:
        return ""
    return f" The checkpoint ({source.get('layout')} layout) lacks the field(s) {', '.join(f'`{m}`' for m in missing)}."


def lenient(value: Any) -> Any:
    """JSON for what is JSON; ``repr`` strings for anything else (upstream extras may hold objects)."""
    if isinstance(value, str):
        return str(value)  # a str subclass (torch's TorchVersion) becomes a plain string
    try:
        return jsonable(value)
    except SpecError:
        if isinstance(value, Mapping):
            return {str(k): lenient(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [lenient(v) for v in value]
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


def _split_fuser(value: Any) -> tuple[Any, Any]:
    """(tasks without the ``__fuser__`` entry, that entry as JSON or None)."""
    if not isinstance(value, (list, tuple)):
        return value, None
    fuser = [v for v in value if isinstance(v, Mapping) and v.get("type") == FUSER_TYPE]
    rest = [v for v in value if not (isinstance(v, Mapping) and v.get("type") == FUSER_TYPE)]
    return rest, (lenient(fuser[-1]) if fuser else None)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _tasks(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return [{"name": str(k), **(lenient(v) if isinstance(v, Mapping) else {"value": lenient(v)})}
                for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        return [lenient(v) if isinstance(v, Mapping) else {"name": str(v)} for v in value]
    return [{"name": str(value)}]
