"""Reads of a checkpoint at a URL (``inspect``, ``load``/``convert``): streamed where enn_nb wrote it, else the cached copy.

See :mod:`.remote` for detection, inspect and the DCP commit (what a save needs), :mod:`.streamed` and
:mod:`.streamed_dcp` for the streamed readers.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from enn_nb.errors import CheckpointError, NotACheckpointError
from enn_nb.storage import Remote, fetch, fetch_many, fetch_target, version_keys

from .detect import DCP_MANIFEST, UPSTREAM_DCP_META, format_of_names
from .manifest import Manifest, decode
from .ranks import all_gather, process_group
from .remote import _dcp_manifest, _dcp_manifest_text, _dcp_sources, _names, _pt_manifest, detect


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
    from .streamed_dcp import DcpTee, StreamedDcpReader

    def plan() -> tuple[bytes, dict[str, str], dict[str, str], Path, bool]:
        text = _dcp_manifest_text(remote)
        sources = _dcp_sources(_names(remote), decode(text, path=remote.url))
        keys, folder = version_keys(remote, sources)
        return text, sources, keys, folder, set(keys) == set(sources) and all(
            (folder / name).is_file() for name in keys)

    text, sources, keys, folder, cached = _on_every_rank(remote, "open", plan)
    dist, _rank, world = process_group()
    if dist is not None:
        cached = all(all_gather(dist, cached, world))
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
