"""save, load, inspect and convert: the public checkpoint API over the three format modules."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb.errors import SpecError, StateDictMismatchError, UnknownNameError
from enn_nb.spec import ModelSpec, build

from . import dcp, pt, safetensors_format
from .base import Reader, SaveRequest
from .detect import detect_format, save_format
from .manifest import Manifest, user_metadata
from .tensors import canonical_key, model_key_map, model_state

if TYPE_CHECKING:
    import os

    import torch

_WRITERS = {"pt": pt.write, "safetensors": safetensors_format.write, "dcp": dcp.write}
_READERS: dict[str, Any] = {
    "pt": pt.PtReader,
    "safetensors": safetensors_format.SafetensorsReader,
    "dcp": dcp.DcpReader,
}


@dataclasses.dataclass
class Loaded:
    """The result of :func:`load`.

    Attributes:
        model: the restored model (built from the manifest's builder, or the ``model=`` you passed).
        manifest: the checkpoint's manifest.
        spec: ``manifest.spec`` (with the user metadata in ``spec.metadata``).
        optimizer_state: the saved ``optimizer.state_dict()`` (for ``optimizer.load_state_dict``), or None.
        missing_keys: model keys the checkpoint lacks (only non-empty with ``strict=False``).
        unexpected_keys: checkpoint keys the model lacks (only non-empty with ``strict=False``).
        shape_mismatches: key -> (checkpoint shape, model shape), not loaded (``strict=False``).
        verified: True when hashes were checked.
    """

    model: torch.nn.Module
    manifest: Manifest
    spec: ModelSpec
    optimizer_state: dict[str, Any] | None = None
    missing_keys: list[str] = dataclasses.field(default_factory=list)
    unexpected_keys: list[str] = dataclasses.field(default_factory=list)
    shape_mismatches: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = dataclasses.field(default_factory=dict)
    verified: bool = False

    def __iter__(self) -> Any:  # `model, manifest = enn_nb.load(...)`
        return iter((self.model, self.manifest))

    def __repr__(self) -> str:
        from .display import loaded_text

        return loaded_text(self)

    def _repr_html_(self) -> str:
        import html

        from .display import loaded_text

        return f"<pre>{html.escape(loaded_text(self))}</pre>" + self.manifest._repr_html_()


def open_reader(path: str | os.PathLike[str]) -> Reader:
    """Open a checkpoint of any format and read its manifest (no tensor data)."""
    path = Path(path)
    return _READERS[detect_format(path)](path)


# -- save ------------------------------------------------------------------------------------------------
def save(
    model: Any,
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    spec: ModelSpec | Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    optimizer: Any = None,
) -> Manifest:
    """Save a model with everything needed to rebuild it, atomically.

    Args:
        model: an ``nn.Module`` (its ``state_dict()``; ``torch.compile`` wrappers are stripped from keys),
            or a ``{name: tensor}`` mapping together with ``spec``.
        path: ``.pt``/``.pth`` or ``.safetensors`` file, or a directory (no suffix) for DCP.
        format: ``"pt"``, ``"safetensors"`` or ``"dcp"``; overrides the suffix.
        spec: the ModelSpec (or its dict); default :meth:`ModelSpec.from_model(model) <ModelSpec.from_model>`.
        metadata: user metadata, any JSON values (merged into ``spec.metadata``); the notebook magics
            record ``{"provenance": {...}}`` here.
        optimizer: an optimizer (or its ``state_dict()``) to store beside the weights.

    Returns:
        The manifest written (``manifest.content_hash`` identifies the weights + spec).

    Raises:
        UnknownNameError: unknown ``format`` or suffix.
        SpecError: ``spec``/``metadata`` holds non-JSON values.
        CheckpointError: the state holds something a checkpoint cannot store.
        OSError: the destination cannot be written (the old checkpoint, if any, is untouched).
    """
    path = Path(path)
    fmt = save_format(path, format)
    if not isinstance(model, Mapping) and not callable(getattr(model, "state_dict", None)):
        raise SpecError(f"`model` is a {type(model).__name__}; pass an nn.Module, or a {{name: tensor}} mapping "
                        "together with `spec=`.")
    resolved = _resolve_spec(model, spec)
    resolved = resolved.replace(metadata=user_metadata(resolved, metadata))
    resolved.to_dict()  # raises SpecError naming any non-JSON value before anything is written
    if isinstance(optimizer, Mapping) or optimizer is None:
        opt_state, opt_class = optimizer, None
    else:
        opt_state, opt_class = optimizer.state_dict(), type(optimizer).__name__
    request = SaveRequest(state=model_state(model), spec=resolved, optimizer_state=opt_state,
                          optimizer_class=opt_class)
    return _WRITERS[fmt](path, request)


def _resolve_spec(model: Any, spec: ModelSpec | Mapping[str, Any] | None) -> ModelSpec:
    if isinstance(spec, ModelSpec):
        return spec
    if isinstance(spec, Mapping):
        return ModelSpec.from_dict(spec)
    if spec is not None:
        raise SpecError(f"`spec` is a {type(spec).__name__}; pass a ModelSpec, its dict, or None.")
    if isinstance(model, Mapping):
        return ModelSpec()
    return ModelSpec.from_model(model)


# -- inspect ---------------------------------------------------------------------------------------------
def inspect(path: str | os.PathLike[str]) -> Manifest:
    """Read a checkpoint's manifest without reading tensor data (any format, also upstream ones).

    Raises:
        NotACheckpointError, CorruptCheckpointError, IncompleteCheckpointError, UnsafeCheckpointError,
        SchemaVersionError: see :func:`load`.
    """
    return open_reader(path).manifest


# -- load ------------------------------------------------------------------------------------------------
@dcp.retry_when_replaced
def load(
    path: str | os.PathLike[str],
    *,
    model: Any = None,
    strict: bool = True,
    verify: bool = True,
    map_location: Any = "cpu",
) -> Loaded:
    """Restore a model from a checkpoint, exactly.

    Args:
        path: a .pt/.pth/.safetensors file or a DCP directory (enn_nb or ENN-PyTorch layout).
        model: load into this instance instead of building one from the manifest's builder
            (compiled models and, for DCP under torchrun, FSDP2/DTensor-sharded models work).
        strict: raise when keys are missing, unexpected or of another shape (all listed). With
            ``strict=False`` the matching ones are loaded and the rest reported on the result.
        verify: check the sha256 hashes before anything is copied into the model.
        map_location: device for a built model and the optimizer state (``"cpu"`` default).

    Returns:
        :class:`Loaded` (``.model``, ``.manifest``, ``.spec``, ``.optimizer_state``, ``.missing_keys``...).
        A model built from the manifest is returned in eval mode.

    Raises:
        NotACheckpointError: the path holds no checkpoint.
        CorruptCheckpointError: truncated, damaged, or a hash mismatch (names the tensor or shard).
        IncompleteCheckpointError: a DCP directory whose save did not finish.
        UnsafeCheckpointError: a pickle that would run code (nothing is executed).
        SchemaVersionError: a manifest newer than this enn_nb.
        UnknownNameError: the manifest's builder is not registered (pass ``model=``).
        StateDictMismatchError: ``strict=True`` and the keys do not match.
    """
    reader = open_reader(path)
    manifest = reader.manifest
    if model is None and strict:
        _probe_on_meta(manifest, path)  # a forged config must not allocate gigabytes before the table check
    target = model if model is not None else _build(manifest)
    key_map = model_key_map(target)
    own = target.state_dict()
    stored = {t.name: tuple(t.shape) for t in manifest.tensors}
    missing = [k for k in key_map if k not in stored]
    unexpected = [k for k in stored if k not in key_map]
    mismatched = {
        k: (stored[k], tuple(own[key_map[k]].shape))
        for k in key_map if k in stored and stored[k] != tuple(own[key_map[k]].shape)
    }
    if strict and (missing or unexpected or mismatched):
        raise _mismatch_error(path, missing, unexpected, mismatched)
    names = [k for k in key_map if k in stored and k not in mismatched]
    into = {k: own[key_map[k]] for k in names}
    tensors = reader.tensors(names, verify=verify, into=into)
    optimizer_state = reader.optimizer_state(verify=verify)  # verified too before the model changes
    pending = {key_map[k]: t for k, t in tensors.items() if not _loaded_in_place(target, key_map[k], t, into[k])}
    if pending:
        result = target.load_state_dict(pending, strict=False)
        leftover = [k for k in result.missing_keys if k in pending] + list(result.unexpected_keys)
        if leftover:  # cannot happen with matching keys; keep it loud if a module renames on load
            raise _mismatch_error(path, [], leftover, {})
    if model is None:
        target.eval()
        if str(map_location) != "cpu":
            target.to(map_location)
    if optimizer_state is not None and str(map_location) != "cpu":
        optimizer_state = _to_device(optimizer_state, map_location)
    return Loaded(
        model=target,
        manifest=manifest,
        spec=manifest.spec,
        optimizer_state=optimizer_state,
        missing_keys=missing,
        unexpected_keys=unexpected,
        shape_mismatches=mismatched,
        verified=bool(verify and reader.verifiable),
    )


def _build(manifest: Manifest) -> Any:
    from .upstream import missing_fields_note

    note = missing_fields_note(manifest)
    try:
        return build(manifest.spec)
    except UnknownNameError as exc:
        if not (manifest.source or {}).get("layout"):  # an enn_nb checkpoint: the registry's error as is
            raise
        raise UnknownNameError(
            f"{exc} This is an upstream checkpoint: pass `model=` (an instance of its architecture) or "
            f"register a builder named `{manifest.spec.builder}`.{note}",
            name=exc.name,
            known=exc.known,
        ) from None
    except SpecError as exc:
        raise SpecError(f"{exc}{note}") from None


def _probe_on_meta(manifest: Manifest, path: Any) -> None:
    """Build the model on the meta device (no memory) and refuse before the real build if its shapes differ.

    Raises:
        StateDictMismatchError: the manifest's spec builds a model whose state does not match its tensor table.
    """
    import torch

    try:
        with torch.device("meta"):
            probe = _build(manifest)
        shapes = {canonical_key(k): tuple(v.shape) for k, v in probe.state_dict().items()}
    except Exception:  # noqa: BLE001 - a builder that cannot run on meta: the real build reports problems
        return
    stored = {t.name: tuple(t.shape) for t in manifest.tensors}
    missing = [k for k in shapes if k not in stored]
    unexpected = [k for k in stored if k not in shapes]
    mismatched = {k: (stored[k], shapes[k]) for k in shapes if k in stored and stored[k] != shapes[k]}
    if missing or unexpected or mismatched:
        raise _mismatch_error(path, missing, unexpected, mismatched)


def _loaded_in_place(model: Any, key: str, loaded: Any, dest: Any) -> bool:
    """True when ``loaded`` was written straight into the model's own storage (DCP in-place load)."""
    if loaded is not dest:
        return False
    try:
        own = model.get_parameter(key)
    except AttributeError:
        try:
            own = model.get_buffer(key)
        except AttributeError:
            return False
    return _storage_ptr(own) == _storage_ptr(dest)


def _storage_ptr(t: Any) -> int:
    local = getattr(t, "_local_tensor", t)  # DTensor: its shard
    return local.untyped_storage().data_ptr()


def _to_device(tree: Any, device: Any) -> Any:
    import torch

    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: _to_device(v, device) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_to_device(v, device) for v in tree]
    if isinstance(tree, tuple):
        return tuple(_to_device(v, device) for v in tree)
    return tree


def _mismatch_error(path: Any, missing: list[str], unexpected: list[str],
                    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> StateDictMismatchError:
    parts = []
    if missing:
        parts.append(f"missing from the checkpoint ({len(missing)}): {', '.join(f'`{k}`' for k in missing)}")
    if unexpected:
        parts.append(f"not in the model ({len(unexpected)}): {', '.join(f'`{k}`' for k in unexpected)}")
    if mismatched:
        parts.append(f"different shapes ({len(mismatched)}): " + ", ".join(
            f"`{k}` checkpoint {list(a)} vs model {list(b)}" for k, (a, b) in mismatched.items()))
    return StateDictMismatchError(
        f"The checkpoint `{path}` does not match the model: " + "; ".join(parts)
        + ". Nothing was loaded. Pass the model this checkpoint was saved from, or `strict=False` to load "
        "the matching tensors and get the rest on `Loaded.missing_keys`/`unexpected_keys`.",
        missing_keys=missing,
        unexpected_keys=unexpected,
        shape_mismatches=mismatched,
    )


# -- convert ---------------------------------------------------------------------------------------------
@dcp.retry_when_replaced
def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, format: str | None = None) -> Manifest:
    """Copy a checkpoint into another format (any of .pt, .safetensors, DCP), manifest carried over.

    The source is verified first; the spec, metadata, optimizer state, creation time and tensor
    hashes carry over (so ``content_hash`` stays the same); ``source.converted_from`` records the
    original format. Upstream ENN-PyTorch checkpoints convert too. No model is built.

    Raises:
        The errors of :func:`load` for the source, and those of :func:`save` for the destination.
    """
    reader = open_reader(src)
    manifest = reader.manifest
    dst_path = Path(dst)
    fmt = save_format(dst_path, format)
    tensors = reader.tensors([t.name for t in manifest.tensors], verify=True)
    optimizer_state = reader.optimizer_state(verify=True)
    source = dict(manifest.source or {})
    source["converted_from"] = manifest.format
    request = SaveRequest(
        state={canonical_key(k): v for k, v in tensors.items()},
        spec=manifest.spec,
        optimizer_state=optimizer_state,
        optimizer_class=(manifest.optimizer or {}).get("class"),
        source=source,
        created=manifest.created,
    )
    return _WRITERS[fmt](dst_path, request)
