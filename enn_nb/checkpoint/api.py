"""save, load, inspect and convert: the public checkpoint API over the three format modules."""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb import _reentry
from enn_nb._safeio import check_path
from enn_nb.errors import (
    CheckpointError,
    NotACheckpointError,
    RestoreCheckError,
    SpecError,
    StateDictMismatchError,
    UnknownNameError,
)
from enn_nb.model.spec import ModelSpec, build
from enn_nb.storage import resolve

from . import dcp, pt, safetensors_format, selfcheck
from .base import Reader, SaveRequest
from .detect import detect_format, save_format
from .display import loaded_text
from .manifest import Manifest, user_metadata
from .restore import alias_sources, hooks_decide_shapes, shapes_now, split_extra_state
from .tensors import canonical_key, dtype_name, is_dtensor, model_key_map, model_state, nbytes
from .upstream import missing_fields_note

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
        restore_check: ``"passed"``/``"failed"``/``"not_run"``: the restored model run on the inputs
            recorded at save time, compared with the outputs recorded then (``restore`` has the detail).
    """

    model: torch.nn.Module
    manifest: Manifest
    spec: ModelSpec
    optimizer_state: dict[str, Any] | None = None
    missing_keys: list[str] = dataclasses.field(default_factory=list)
    unexpected_keys: list[str] = dataclasses.field(default_factory=list)
    shape_mismatches: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = dataclasses.field(default_factory=dict)
    verified: bool = False
    restore: selfcheck.RestoreCheck = dataclasses.field(default_factory=lambda: selfcheck.RestoreCheck("not_run"))

    @property
    def restore_check(self) -> str:
        return self.restore.status

    def __iter__(self) -> Any:  # `model, manifest = enn_nb.load(...)`
        return iter((self.model, self.manifest))

    def __repr__(self) -> str:
        return loaded_text(self)

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(loaded_text(self))}</pre>" + self.manifest._repr_html_()


def open_reader(path: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None) -> Reader:
    """Open a checkpoint of any format, local or at a URL, and read its manifest (no tensor data)."""
    where = resolve(path, storage_options)
    if not isinstance(where, Path):
        from . import remote_read

        return remote_read.open_reader(where, _READERS)
    where = check_path(where, what="The checkpoint path", error=NotACheckpointError)
    return _READERS[detect_format(where)](where)


# -- save ------------------------------------------------------------------------------------------------
def save(
    model: Any,
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    spec: ModelSpec | Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    optimizer: Any = None,
    quiet: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> Manifest:
    """Save a model with everything needed to rebuild it, atomically.

    Args:
        model: an ``nn.Module`` (its ``state_dict()``; ``torch.compile`` wrappers are stripped from keys),
            or a ``{name: tensor}`` mapping together with ``spec``.
        path: ``.pt``/``.pth`` or ``.safetensors`` file, or a directory (no suffix) for DCP; a URL
            (``s3://bucket/run/model.safetensors``, ``gs://``, ``az://``, ``memory://``) is written through
            fsspec, streamed in one upload that becomes visible only when complete.
        format: ``"pt"``, ``"safetensors"`` or ``"dcp"``; overrides the suffix.
        spec: the ModelSpec (or its dict); default :meth:`ModelSpec.from_model(model) <ModelSpec.from_model>`.
        metadata: user metadata, any JSON values (merged into ``spec.metadata``); the notebook magics
            record ``{"provenance": {...}}`` here.
        optimizer: an optimizer (or its ``state_dict()``) to store beside the weights.
        quiet: print nothing. Otherwise a script on a terminal gets one line on stderr (what was written,
            the labelled parameter count, size, content hash); a notebook displays the returned manifest.
        storage_options: options for the URL's filesystem (``{"anon": True}``, an endpoint...), on top of
            the environment's; never stored anywhere.

    Returns:
        The manifest written (``manifest.content_hash`` identifies the weights + spec).

    Raises:
        UnknownNameError: unknown ``format`` or suffix.
        SpecError: ``spec``/``metadata`` holds non-JSON values.
        CheckpointError: the state holds something a checkpoint cannot store.
        OSError: the destination cannot be written (the old checkpoint, if any, is untouched).
        SideEffectError: called by importing a module (a ``--model`` factory, an export worker): nothing written.
    """
    _reentry.check("enn_nb.save")
    path = resolve(path, storage_options)
    if isinstance(path, Path):
        path = check_path(path, what="The checkpoint path", error=CheckpointError)
    fmt = save_format(path, format)  # type: ignore[arg-type]  # a Remote has .suffix and .is_dir() too
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
    raw = model if isinstance(model, Mapping) else model.state_dict()
    tensors, extra_state = split_extra_state(raw)
    state = model_state(tensors)
    # A large model's self-check runs beside the writer (see selfcheck.start); writers wait for it last.
    check = None if isinstance(model, Mapping) else selfcheck.start(model, resolved, sum(map(nbytes, state.values())))
    request = SaveRequest(state=state, spec=resolved, optimizer_state=opt_state, optimizer_class=opt_class,
                          extra_state=extra_state or None, self_check=check)
    with selfcheck.running(check):
        manifest = _WRITERS[fmt](path, request)
    if not quiet:
        _announce_saved(manifest, model)
    return manifest


def _announce_saved(manifest: Manifest, model: Any) -> None:
    from enn_nb._format import count_text, human_size, model_counts
    from enn_nb._terminal import announce, watched

    if not watched():  # counting the parameters is for the person reading the line
        return
    params = None if isinstance(model, Mapping) else model_counts(model)[0]
    announce(f"enn_nb.save: wrote {manifest.path} ({manifest.format}, {count_text(params, manifest.parameter_count)}, "
             f"{human_size(manifest.tensor_bytes)}, content_hash {manifest.content_hash[:12]})", quiet=False)


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
def inspect(path: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None) -> Manifest:
    """Read a checkpoint's manifest without reading tensor data (any format, also upstream ones).

    At a URL only the header is read, by ranged requests (see :mod:`enn_nb.checkpoint.remote_read`).

    Raises:
        NotACheckpointError, CorruptCheckpointError, IncompleteCheckpointError, UnsafeCheckpointError,
        SchemaVersionError: see :func:`load`.
    """
    where = resolve(path, storage_options)
    if not isinstance(where, Path):
        from . import remote_read

        return remote_read.inspect(where, _READERS)
    return open_reader(where).manifest


# -- load ------------------------------------------------------------------------------------------------
@dcp.retry_when_replaced
def load(
    path: str | os.PathLike[str],
    *,
    model: Any = None,
    strict: bool = True,
    verify: bool = True,
    map_location: Any = "cpu",
    storage_options: Mapping[str, Any] | None = None,
) -> Loaded:
    """Restore a model from a checkpoint, exactly.

    Args:
        path: a .pt/.pth/.safetensors file or a DCP directory (enn_nb or ENN-PyTorch layout).
        model: load into this instance instead of building one from the manifest's builder
            (compiled models and, for DCP under torchrun, FSDP2/DTensor-sharded models work).
        strict: raise when keys are missing, unexpected or of another shape (all listed). With
            ``strict=False`` the matching ones are loaded and the rest reported on the result.
        verify: check the tensor hashes (BLAKE3, or sha256 in older checkpoints) before anything is
            copied into the model, and re-run the recorded self-check vectors afterwards
            (``Loaded.restore_check``); ``verify=False`` skips both.
        map_location: device for a built model and the optimizer state (``"cpu"`` default).
        storage_options: options for a URL's filesystem. A ``.safetensors``/``.pt`` URL is streamed
            into the tensors (hashed as it arrives) and kept in the cache per ETag/version, so a second
            load reads the local copy; a DCP folder is fetched into the cache and loaded from there.

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
    reader = open_reader(path, storage_options=storage_options)
    manifest = reader.manifest
    if model is None and strict:
        _probe_on_meta(manifest, path)  # a forged config must not allocate gigabytes before the table check
    target = model if model is not None else _build(manifest)
    key_map, own, aliases, extra, missing, unexpected, mismatched, hooked = _compare(target, manifest)
    stored = {t.name: tuple(t.shape) for t in manifest.tensors}
    if strict and (missing or unexpected or (mismatched and not hooked)):
        raise _mismatch_error(path, missing, unexpected, mismatched)
    names = [k for k in key_map if k in stored and (hooked or k not in mismatched)]
    # DTensors are filled in place (DCP reshards into them); everything else arrives at the
    # checkpoint's shapes and goes through the model's load_state_dict.
    into = {k: own[key_map[k]] for k in names if is_dtensor(own[key_map[k]])}
    if model is None and getattr(reader, "fills_in_place", False):
        into.update(_in_place_targets(manifest, own, key_map, names, mismatched))
    tensors = reader.tensors(names, verify=verify, into=into or None)
    optimizer_state = reader.optimizer_state(verify=verify)  # verified too before the model changes
    state: dict[str, Any] = {key_map[k]: t for k, t in tensors.items()}
    state.update({key_map[k]: v for k, v in extra.items() if k in key_map})
    state.update({key_map[k]: tensors[src] for k, src in aliases.items() if src in tensors})
    mismatched = _load_into(target, state, path, key_map, stored, mismatched, hooked=hooked, strict=strict)
    if model is None:
        target.eval()
        if str(map_location) != "cpu":
            target.to(map_location)
    if optimizer_state is not None and str(map_location) != "cpu":
        optimizer_state = _to_device(optimizer_state, map_location)
    complete = not (missing or unexpected or mismatched)
    if not complete:
        restore = selfcheck.RestoreCheck("not_run", reason="partial load (strict=False)")
    elif not verify:  # verify=False asks for the fastest load: no hashes, no forward pass
        restore = selfcheck.RestoreCheck("not_run", reason="verify=False")
    else:
        restore = selfcheck.check(target, manifest.self_check, device=_device_of(target))
    if restore.status == "failed" and strict:
        raise RestoreCheckError(
            f"The model restored from `{path}` does not compute what the saved one did: on the inputs recorded "
            f"at save time its outputs differ by up to {restore.max_abs_err:.3g} ({restore.reason}). A state the "
            "checkpoint does not hold was not restored (a non-tensor attribute, a buffer its loading code "
            f"resizes): {RESTORE_FIX}",
            max_abs_err=restore.max_abs_err,
            atol=(manifest.self_check or {}).get("atol"),
            rtol=(manifest.self_check or {}).get("rtol"),
        )
    _carry_signature(target, manifest.spec)
    return Loaded(
        model=target,
        manifest=manifest,
        spec=manifest.spec,
        optimizer_state=optimizer_state,
        missing_keys=missing,
        unexpected_keys=unexpected,
        shape_mismatches=mismatched,
        verified=bool(verify and reader.verifiable),
        restore=restore,
    )


def _carry_signature(model: Any, spec: ModelSpec) -> None:
    """Give the loaded model the checkpoint's I/O signature (``input_signature``/``output_signature``, the
    ModelSpec contract), so ``export(loaded.model, ...)`` and a later ``save`` know it; a model declaring
    its own keeps it."""
    if spec.inputs is None or getattr(model, "input_signature", None) is not None:
        return
    model.input_signature = [t.text() for t in spec.inputs]
    if spec.outputs is not None and getattr(model, "output_signature", None) is None:
        model.output_signature = [t.text() for t in spec.outputs]
        if spec.output_structure and getattr(model, "output_structure", None) is None:
            model.output_structure = spec.output_structure


def _in_place_targets(manifest: Manifest, own: Mapping[str, Any], key_map: Mapping[str, str], names: list[str],
                      mismatched: Mapping[str, Any]) -> dict[str, Any]:
    """The built model's own tensors a DCP read may fill directly, saving a fresh buffer and a copy each.

    Only for a model enn_nb built itself: a failed read or a hash mismatch discards it. A model the
    caller passes gets fresh buffers, checked in full before anything is copied into it. Tensors of
    another dtype or shape keep going through ``load_state_dict``, which copies each filled tensor
    onto itself (a no-op in torch) and runs the model's hooks as always.
    """
    import torch

    dtypes = {t.name: t.dtype for t in manifest.tensors}
    out = {}
    for name in names:
        mine = own[key_map[name]]
        if name not in mismatched and type(mine) is torch.Tensor and dtype_name(mine.dtype) == dtypes.get(name):
            out[name] = mine
    return out


def _load_into(target: Any, state: dict[str, Any], path: Any, key_map: Mapping[str, str],
               stored: Mapping[str, tuple[int, ...]], mismatched: dict[str, Any], *, hooked: bool,
               strict: bool) -> dict[str, Any]:
    """``target.load_state_dict(state)``; returns the shape mismatches its hooks did not resolve."""
    try:
        result = target.load_state_dict(state, strict=False)
    except Exception as exc:  # noqa: BLE001 - the model's own loading code (set_extra_state, hooks) failed on it
        if not isinstance(exc, RuntimeError):  # a manifest whose extra state the model's code cannot take
            raise CheckpointError(f"`{type(target).__name__}.load_state_dict` failed on the state of `{path}` "
                                  f"({type(exc).__name__}: {str(exc)[:300]}); the checkpoint does not fit this "
                                  "model's loading code (its extra state?). Load it into the model class it was "
                                  "saved from.") from exc
        if not hooked:
            raise CheckpointError(f"`{type(target).__name__}.load_state_dict` failed on the state of `{path}`: "
                                  f"{exc}") from exc
        if strict:
            raise _mismatch_error(path, [], [], mismatched, refused=str(exc)) from None
        skip = {key_map[k] for k in mismatched}
        target.load_state_dict({k: v for k, v in state.items() if k not in skip}, strict=False)
        return mismatched
    leftover = [k for k in result.missing_keys if k in state] + list(result.unexpected_keys)
    if leftover:  # cannot happen with matching keys; keep it loud if a module renames on load
        raise _mismatch_error(path, [], leftover, {})
    if not hooked:
        return mismatched
    now = shapes_now(target, {k: key_map[k] for k in mismatched})
    left = {k: (stored[k], now.get(k, shape)) for k, (_, shape) in mismatched.items() if now.get(k) != stored[k]}
    if left and strict:
        raise _mismatch_error(path, [], [], left, refused="its load_state_dict kept the model's shapes")
    return left


def _device_of(model: Any) -> Any:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return "cpu"


def _build(manifest: Manifest) -> Any:
    note = missing_fields_note(manifest)
    try:
        return _bounded_build(manifest)
    except UnknownNameError as exc:
        if not (manifest.source or {}).get("layout"):  # an enn_nb checkpoint: the registry's error as is
            raise
        hint = (" Install ENN-PyTorch (`enn_torch`) beside enn_nb: enn_nb registers the `enn_pytorch` builder "
                "through its `enn_nb.builders` entry point." if manifest.spec.builder == "enn_pytorch" else "")
        raise UnknownNameError(
            f"{exc} This is an upstream checkpoint: pass `model=` (an instance of its architecture) or "
            f"register a builder named `{manifest.spec.builder}`.{hint}{note}",
            name=exc.name,
            known=exc.known,
        ) from None
    except SpecError as exc:
        raise SpecError(f"{exc}{note}") from None


def _bounded_build(manifest: Manifest) -> Any:
    """``build(manifest.spec)``, stopped early when it registers far more than the manifest's tensors (see
    :mod:`.budget`): a forged config must not cost minutes before the table check refuses it."""
    import math

    from .budget import build_budget

    elements = sum(math.prod(t.shape) for t in manifest.tensors)
    with build_budget(len(manifest.tensors), elements, what=f"The checkpoint `{manifest.path}`"):
        return build(manifest.spec, shapes={t.name: tuple(t.shape) for t in manifest.tensors})


def _compare(target: Any, manifest: Manifest) -> tuple:
    """How ``target``'s state lines up with the checkpoint's tensor table.

    Returns ``(key_map, own state, aliases, extra state, missing, unexpected, mismatched, hooked)``.
    """
    key_map = model_key_map(target)
    own = target.state_dict()
    stored = {t.name: tuple(t.shape) for t in manifest.tensors}
    extra = dict(manifest.extra_state or {})
    aliases = alias_sources(own, key_map, stored)
    missing = [k for k in key_map if k not in stored and k not in extra and k not in aliases]
    unexpected = [k for k in (*stored, *extra) if k not in key_map]
    mismatched = {
        k: (stored[k], tuple(own[key_map[k]].shape))
        for k in key_map if k in stored and hasattr(own[key_map[k]], "shape") and stored[k] != tuple(own[key_map[k]].shape)
    }
    # A shape that differs from a fresh model's is the model's business when its own loading code may
    # resize it (ENN-PyTorch's fitted Scaler); otherwise it is an error found before anything is loaded.
    hooked = bool(mismatched) and hooks_decide_shapes(target, [key_map[k] for k in mismatched])
    return key_map, own, aliases, extra, missing, unexpected, mismatched, hooked


def _probe_on_meta(manifest: Manifest, path: Any) -> None:
    """Build the model on the meta device (no memory) and refuse before the real build if its state differs.

    Raises:
        StateDictMismatchError: the manifest's spec builds a model whose state does not match its tensor table.
    """
    import torch

    from .budget import BuildBudgetError

    try:
        with torch.device("meta"):
            probe = _build(manifest)
        _, _, _, _, missing, unexpected, mismatched, hooked = _compare(probe, manifest)
    except BuildBudgetError:
        raise
    except Exception:  # noqa: BLE001 - a builder that cannot run on meta: the real build reports problems
        return
    if missing or unexpected or (mismatched and not hooked):
        raise _mismatch_error(path, missing, unexpected, mismatched)


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


#: The fixes a mismatch / failed restore check names in Python; the CLI (which has no ``strict``) swaps in its own.
RESTORE_FIX = ("load into the model class it was saved from, or pass `strict=False` to get the model anyway with "
               "`Loaded.restore_check == 'failed'`.")
MISMATCH_FIX = ("Pass the model this checkpoint was saved from, or `strict=False` to load the matching tensors and "
                "get the rest on `Loaded.missing_keys`/`unexpected_keys`.")


def _mismatch_error(path: Any, missing: list[str], unexpected: list[str],
                    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]],
                    refused: str | None = None) -> StateDictMismatchError:
    parts = []
    if missing:
        parts.append(f"missing from the checkpoint ({len(missing)}): {_first(f'`{k}`' for k in missing)}")
    if unexpected:
        parts.append(f"not in the model ({len(unexpected)}): {_first(f'`{k}`' for k in unexpected)}")
    if mismatched:
        parts.append(f"different shapes ({len(mismatched)}): " + _first(
            f"`{k}` checkpoint {list(a)} vs model {list(b)}" for k, (a, b) in mismatched.items()))
    done = ("Nothing was loaded." if refused is None else
            f"The model's own `load_state_dict` did not accept them ({refused.strip().splitlines()[0][:200]}); "
            "a model passed as `model=` may be partly loaded.")
    return StateDictMismatchError(
        f"The checkpoint `{path}` does not match the model: " + "; ".join(parts)
        + f". {done} {MISMATCH_FIX}",
        missing_keys=missing,
        unexpected_keys=unexpected,
        shape_mismatches=mismatched,
    )


#: Keys a mismatch message names (all of them are on the error's ``missing_keys``... fields).
SHOWN_KEYS = 20


def _first(items: Any) -> str:
    """The first :data:`SHOWN_KEYS` of ``items``, then how many more: a forged table must not make a 17 MB message."""
    items = list(items)
    shown = ", ".join(items[:SHOWN_KEYS])
    return shown + (f" and {len(items) - SHOWN_KEYS} more" if len(items) > SHOWN_KEYS else "")


# -- convert ---------------------------------------------------------------------------------------------
@dcp.retry_when_replaced
def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, format: str | None = None,
            storage_options: Mapping[str, Any] | None = None) -> Manifest:
    """Copy a checkpoint into another format (any of .pt, .safetensors, DCP), manifest carried over.

    The source is verified first; the spec, metadata, optimizer state, creation time and tensor
    hashes carry over (so ``content_hash`` stays the same); ``source.converted_from`` records the
    original format. Upstream ENN-PyTorch checkpoints convert too. The recorded self-check vectors
    carry over; a source without them (an upstream file) gets them when its builder is registered:
    the model is then rebuilt once, loaded completely and run on two inputs.

    Either side may be a URL (``storage_options`` apply to both).

    Raises:
        The errors of :func:`load` for the source, and those of :func:`save` for the destination.
    """
    _reentry.check("enn_nb.convert")
    reader = open_reader(src, storage_options=storage_options)
    manifest = reader.manifest
    dst_path = resolve(dst, storage_options)
    fmt = save_format(dst_path, format)  # type: ignore[arg-type]
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
        extra_state=manifest.extra_state,
        self_check=manifest.self_check or _record_rebuilt(manifest, tensors),
    )
    return _WRITERS[fmt](dst_path, request)


def _record_rebuilt(manifest: Manifest, tensors: Mapping[str, Any]) -> dict[str, Any] | None:
    """Self-check vectors of the model rebuilt from ``manifest`` and loaded with all of ``tensors``, or None.

    None when no builder is registered or the load is not complete: vectors of a partly loaded
    model would later confirm a wrong restore.
    """
    try:
        model = _bounded_build(manifest)
    except Exception:  # noqa: BLE001 - no builder (or it cannot run here, or a forged config): no vectors
        return None
    key_map = model_key_map(model)
    own = model.state_dict()
    aliases = alias_sources(own, key_map, tensors)
    extra = manifest.extra_state or {}
    if any(k not in tensors and k not in aliases and k not in extra for k in key_map) or any(
            k not in key_map for k in tensors):
        return None
    state: dict[str, Any] = {key_map[k]: t for k, t in tensors.items()}
    state.update({key_map[k]: v for k, v in extra.items() if k in key_map})
    state.update({key_map[k]: tensors[src] for k, src in aliases.items()})
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError:
        return None
    if result.missing_keys or result.unexpected_keys:
        return None
    shapes = shapes_now(model, {k: key_map[k] for k in tensors})
    if any(shapes.get(k) != tuple(t.shape) for k, t in tensors.items()):
        return None
    model.eval()
    return selfcheck.record(model, manifest.spec)
