"""Checkpoints on object storage: format detection, header-only inspect and cached reads of a URL.

- ``inspect`` reads only what a local inspect reads, by ranged requests: the safetensors length and
  header, the ``.pt`` zip's directory and its ``data.pkl`` (tensors stay on the store: torch loads
  them onto the meta device), a DCP folder's manifest.
- ``load``/``convert`` of an enn_nb ``.safetensors``/``.pt`` stream the tensor bytes from the store into
  their tensors, hashed as they arrive, and keep a copy in the cache keyed by the object's ETag/version
  (:mod:`.streamed`); an enn_nb DCP folder streams through torch's ``FsspecReader``, every shard hashed
  as it is read and teed into the cache folder of its version (:mod:`.streamed_dcp`; one process only); an ENN-PyTorch DCP folder or file, or a file
  the streamed reader leaves to the local one, is downloaded once per ETag/version into the cache (:func:`enn_nb.storage.fetch`) and opened by
  the local reader (memory-mapped, hashes checked as locally). A second read of the same version, in
  this session or a later one, downloads nothing.
- Errors name the URL, never the cache path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from enn_nb._safeio import MAX_JSON_BYTES
from enn_nb.errors import CheckpointError, CorruptCheckpointError, EnnError, NotACheckpointError
from enn_nb.storage import Remote, fetch, fetch_many, fetch_target, read_range, store_error, version_keys

from .detect import DCP_MANIFEST, DCP_METADATA, UPSTREAM_DCP_META, format_of_head, format_of_names
from .manifest import Manifest, decode


def detect(remote: Remote) -> str:
    """The format stored at ``remote``: ``"pt"``, ``"safetensors"`` or ``"dcp"`` (a folder).

    Raises:
        NotACheckpointError: missing, empty or unknown content.
        IncompleteCheckpointError: a DCP folder without its manifest (an unfinished save).
    """
    try:
        is_dir = remote.is_dir()
    except Exception as exc:  # noqa: BLE001 - the store's own error types
        raise store_error(remote, exc, writing=False) from None
    if is_dir:
        return format_of_names(_names(remote), remote.url, upstream_meta=False)
    try:
        size = int(remote.fs.size(remote.path))
    except FileNotFoundError:
        raise NotACheckpointError(f"`{remote.url}` does not exist.") from None
    except Exception as exc:  # noqa: BLE001
        raise store_error(remote, exc, writing=False) from None
    return format_of_head(read_range(remote, 0, min(size, 16)) if size else b"", size, remote.url)


def _names(remote: Remote) -> set[str]:
    """The names in a folder on the store; a save's own ``.metadata-<hex>`` copy counts as DCP's ``.metadata``
    (a save that died may have deleted ``.metadata`` itself: the committed manifest reads the copy)."""
    try:
        names = {n.rstrip("/").rsplit("/", 1)[-1] for n in remote.fs.ls(remote.path, detail=False)}
    except Exception as exc:  # noqa: BLE001
        raise store_error(remote, exc, writing=False) from None
    if DCP_MANIFEST in names and any(n.startswith(f"{DCP_METADATA}-") for n in names):
        names.add(DCP_METADATA)
    return names


# -- inspect: header only -------------------------------------------------------------------------------
def inspect(remote: Remote, readers: Mapping[str, Any]) -> Manifest:
    """The manifest of the checkpoint at ``remote``, read without its tensor bytes (``readers``: format -> class)."""
    fmt = detect(remote)
    manifest = None
    if fmt == "safetensors":
        from .safetensors_format import MANIFEST_KEY, SafetensorsReader, read_header

        header, _ = read_header(remote)  # ranged reads of the length and the header only
        metadata = header.get("__metadata__")
        if isinstance(metadata, dict) and MANIFEST_KEY in metadata:  # else an upstream file: its sidecar is needed
            manifest = SafetensorsReader(remote).manifest  # type: ignore[arg-type]
    elif fmt == "pt":
        manifest = _pt_manifest(remote)
    elif DCP_MANIFEST in _names(remote):
        manifest = _dcp_manifest(remote)
    if manifest is None:  # an ENN-PyTorch checkpoint: its metadata lives beside the tensors
        return open_reader(remote, readers).manifest
    manifest.path = remote.url
    return manifest


def _pt_manifest(remote: Remote) -> Manifest | None:
    """The manifest inside a ``.pt`` on the store: the zip directory and ``data.pkl`` only."""
    import torch

    from .base import check_table
    from .pt import MANIFEST_KEY, _table, check_zip_bounds

    try:
        size = int(remote.fs.size(remote.path))
        with remote.fs.open(remote.path, "rb", block_size=1 << 15, cache_type="bytes") as fh:
            check_zip_bounds(fh, size, remote.url)
            fh.seek(0)
            payload = torch.load(fh, map_location="meta", weights_only=True)
    except EnnError:
        raise
    except Exception:  # noqa: BLE001 - damaged or unsafe: the full read reports it with the local words
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get(MANIFEST_KEY), str):
        return None
    manifest = decode(payload[MANIFEST_KEY], path=remote.url)
    check_table(manifest, _table(payload.get("state_dict") or {}), where=f"`{remote.url}`")
    return manifest


def _dcp_manifest(remote: Remote) -> Manifest:
    return decode(_dcp_manifest_text(remote), path=remote.url)


def _dcp_manifest_text(remote: Remote) -> bytes:
    """The manifest's bytes (size-capped); refuses a folder without its ``.metadata``."""
    entry = remote.child(DCP_MANIFEST)
    size = int(entry.fs.size(entry.path))
    if size > MAX_JSON_BYTES:
        raise CorruptCheckpointError(f"The DCP manifest `{entry.url}` is {size} bytes, over the {MAX_JSON_BYTES}-byte limit.")
    if DCP_METADATA not in _names(remote):
        from enn_nb.errors import IncompleteCheckpointError

        raise IncompleteCheckpointError(f"`{remote.url}` has an enn_nb manifest but no DCP `{DCP_METADATA}` object; the "
                                        "folder was damaged after saving. Restore it from a good copy.")
    return read_range(entry, 0, size)


def _dcp_sources(names: set[str], manifest: Manifest) -> dict[str, str]:
    """Local name -> object name of an enn_nb DCP folder's files: the manifest and what it lists (``.metadata``
    from this save's own copy where the store holds one)."""
    from enn_nb._safeio import plain_name

    listed = [DCP_MANIFEST, DCP_METADATA, *(f.path for f in manifest.files if f.path != DCP_METADATA)]
    for name in listed:
        plain_name(name, what="A file the DCP manifest lists")  # never a path out of the cache folder
    sources = {name: name for name in listed}
    entry = next((f for f in manifest.files if f.path == DCP_METADATA), None)
    if entry is not None and entry.hash and metadata_copy(entry.hash) in names:
        sources[DCP_METADATA] = metadata_copy(entry.hash)  # this save's own, whatever saved after it
    return sources


# -- DCP on a store: commit and cleanup -------------------------------------------------------------------
def metadata_copy(digest: str) -> str:
    """The name under which a DCP save keeps its own ``.metadata`` beside the folder's (``.metadata-<hex16>``).

    ``.metadata`` itself is rewritten by every save (torch's readers look for it there); the manifest's
    entry for it is fetched from this content-addressed copy, which no later save overwrites.
    """
    return f"{DCP_METADATA}-{digest.partition(':')[2][:16]}"


def commit_dcp(final: Remote, manifest: Manifest, text: str) -> None:
    """Keep this save's ``.metadata`` under its own name, write the manifest (the commit, one PUT), sweep.

    The sweep removes the shard files and metadata copies no manifest names any more: older saves'
    and those of saves that died before their commit.
    """
    from enn_nb.storage import open_atomic

    entry = next(f for f in manifest.files if f.path == DCP_METADATA)
    meta, copy = final.child(DCP_METADATA), final.child(metadata_copy(entry.hash))
    try:
        final.fs.copy(meta.path, copy.path)
    except Exception as exc:  # noqa: BLE001 - the store's own error types
        raise store_error(final, exc, writing=True) from None
    with open_atomic(final.child(DCP_MANIFEST)) as fh:  # the commit
        fh.write(text.encode("utf-8"))
    keep = {DCP_MANIFEST, DCP_METADATA, copy.name, *(f.path for f in manifest.files)}
    with contextlib.suppress(Exception):
        final.fs.invalidate_cache(final.path)  # list what the writers put there, not a listing from before
    for name in _names(final) - keep:
        if name.endswith(".distcp") or name.startswith(f"{DCP_METADATA}-") or name.startswith(f"{DCP_METADATA}."):
            with contextlib.suppress(Exception):  # housekeeping: the checkpoint is already committed
                final.fs.rm(final.child(name).path)


# -- load / convert: through the cache ------------------------------------------------------------------
def open_reader(remote: Remote, readers: Mapping[str, Any]) -> Any:
    """A reader of ``remote``: streamed for an enn_nb ``.safetensors``/``.pt``/DCP folder whose version is not
    cached yet (:mod:`.streamed`, :mod:`.streamed_dcp`: they keep the copy for the next load), else a local reader (``readers``: format ->
    class) over the cached copy, fetched once per version."""
    fmt = detect(remote)
    if fmt in ("safetensors", "pt"):
        from enn_nb.storage import version_key

        from . import streamed

        key = version_key(remote)
        if not fetch_target(remote, key).is_file():
            reader = (streamed.open_safetensors if fmt == "safetensors" else streamed.open_pt)(remote, key)
            if reader is not None:
                reader.manifest.path = remote.url
                return reader
        local = fetch(remote, key=key)
    elif DCP_MANIFEST in _names(remote):  # enn_nb's own: the cached copy of this version, else streamed
        local = _open_dcp(remote)
        if not isinstance(local, Path):
            local.manifest.path = remote.url
            return local
    else:
        local = _on_every_rank(remote, "fetch", lambda: _fetch_dcp(remote))
    try:
        reader = readers[fmt](local)
    except CheckpointError as exc:
        raise _renamed(exc, local, remote) from None
    reader.manifest.path = remote.url
    return _Named(reader, local, remote)


def _open_dcp(remote: Remote) -> Any:
    """An enn_nb DCP folder: its cached copy (a Path) when one holds this version (every file's ETag/version),
    else a :class:`.streamed_dcp.StreamedDcpReader` that keeps the copy for the next load (one process only).

    Under a process group the copy is used only when every rank has it (they must read alike), and a
    streamed load keeps nothing: ranks share the cache folder, and none may read it while another writes it.
    """
    from .dcp import _all_gather, _dist
    from .streamed_dcp import DcpTee, StreamedDcpReader

    def plan() -> tuple[bytes, dict[str, str], dict[str, str], Path, bool]:
        text = _dcp_manifest_text(remote)
        sources = _dcp_sources(_names(remote), decode(text, path=remote.url))
        keys, folder = version_keys(remote, sources)
        return text, sources, keys, folder, set(keys) == set(sources) and all(
            (folder / name).is_file() for name in keys)

    text, sources, keys, folder, cached = _on_every_rank(remote, "open", plan)
    dist, _rank, world = _dist()
    if dist is not None:
        cached = all(_all_gather(dist, cached, world))
    if cached:  # present: fetch_many downloads nothing
        return _on_every_rank(remote, "fetch", lambda: fetch_many(remote, sources, keys=keys))
    tee = DcpTee(remote, text, sources, keys, folder) if dist is None else None
    return _on_every_rank(remote, "open", lambda: StreamedDcpReader(remote, manifest_text=text, tee=tee))


def _on_every_rank(remote: Remote, verb: str, fn: Any) -> Any:
    """``fn()`` (fetch or open a DCP folder), then (under a process group) wait until every rank has it, or fail on all.

    Ranks on one machine fetch into the same cache folder. A rank still downloading changes that folder
    (a temporary file, a rename onto a copy another rank already placed) while a faster rank reads it:
    the faster one takes that for a concurrent save, reads again, and runs more collectives than the
    others (gloo then aborts on mismatched sizes, or the ranks hang). So nobody reads before all have
    fetched, and a rank whose fetch failed makes every rank raise instead of leaving them waiting.
    """
    from .ranks import all_gather, process_group

    dist, rank, world = process_group()
    if dist is None:
        return fn()
    local: Any = None
    failure: BaseException | None = None
    try:
        local = fn()
    except BaseException as exc:  # noqa: BLE001 - raised below, after telling the other ranks
        failure = exc
    failed = [(r, text) for r, text in enumerate(all_gather(
        dist, f"{type(failure).__name__}: {failure}" if failure else None, world)) if text]
    if failure is not None:
        raise failure
    if failed:
        r, text = failed[0]
        raise CheckpointError(f"Rank {r} could not {verb} the DCP checkpoint `{remote.url}`: {text}")
    assert local is not None
    return local


def _fetch_dcp(remote: Remote) -> Path:
    """Fetch a DCP folder: the manifest (the commit marker) and the files it lists, into one cache folder."""
    names = _names(remote)
    if DCP_MANIFEST in names:
        return fetch_many(remote, _dcp_sources(names, _dcp_manifest(remote)))  # keyed by every file's ETag
    if UPSTREAM_DCP_META not in names:
        format_of_names(names, remote.url, upstream_meta=False)  # raises: incomplete / not a checkpoint
        raise NotACheckpointError(f"`{remote.url}` holds no checkpoint.")
    from enn_nb._safeio import plain_name

    for name in names:  # ENN-PyTorch layout: no manifest, every object of the folder
        plain_name(name, what="A file the DCP manifest lists")  # never a path out of the cache folder
    return fetch_many(remote, sorted(names))  # keyed by every file's ETag


def _renamed(exc: CheckpointError, local: Path, remote: Remote) -> CheckpointError:
    """The same error with the cache path replaced by the URL (the user named the URL)."""
    if exc.args and isinstance(exc.args[0], str):
        exc.args = (exc.args[0].replace(str(local), remote.url), *exc.args[1:])
    return exc


class _Named:
    """A reader whose errors name the URL instead of the cache path."""

    def __init__(self, reader: Any, local: Path, remote: Remote) -> None:
        self._reader, self._local, self._remote = reader, local, remote
        self.manifest = reader.manifest

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._reader, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return value(*args, **kwargs)
            except CheckpointError as exc:
                raise _renamed(exc, self._local, self._remote) from None

        return call
