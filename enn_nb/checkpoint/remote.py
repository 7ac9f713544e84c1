"""Checkpoints on object storage: format detection, header reads and the DCP commit of a URL.

Inspect and reads (``load``/``convert``) are in :mod:`.remote_read`, which builds on this module and on the
streamed readers (which build on the local ones); a save only needs this module.

- ``inspect`` reads only what a local inspect reads, by ranged requests: the safetensors length and
  header, the ``.pt`` zip's directory and its ``data.pkl`` (tensors stay on the store: torch loads
  them onto the meta device), a DCP folder's manifest.
- ``load``/``convert`` of an enn_nb ``.safetensors``/``.pt`` stream the tensor bytes from the store into
  their tensors, hashed as they arrive, and keep a copy in the cache keyed by the object's ETag/version
  (:mod:`.streamed`); an enn_nb DCP folder streams through torch's ``FsspecReader``, every shard hashed
  as it is read and teed into the cache folder of its version (:mod:`.streamed_dcp`; one process only); an ENN-PyTorch DCP folder or
  file, or a file the streamed reader leaves to the local one, is downloaded once per ETag/version into
  the cache (:func:`enn_nb.storage.fetch`) and opened by the local reader (memory-mapped, hashes checked as locally). A second read of the same version, in
  this session or a later one, downloads nothing.
- Errors name the URL, never the cache path.
"""

from __future__ import annotations

import contextlib

from enn_nb._safeio import MAX_JSON_BYTES
from enn_nb.errors import CorruptCheckpointError, EnnError, NotACheckpointError
from enn_nb.storage import Remote, read_range, store_error

from .detect import DCP_MANIFEST, DCP_METADATA, format_of_head, format_of_names
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
