"""Streamed loads of a single-file checkpoint at a URL: tensor bytes go from the store into their tensors.

No full local copy is made first and no whole-file buffer is held:

- ``.safetensors``: the header by two ranged reads (:func:`.safetensors_format.read_header`), then each
  tensor's byte range. A tensor of :data:`DIRECT` bytes or more is read with ``readinto`` straight into
  its destination (the built model's own parameter when :func:`enn_nb.load` built the model, see
  ``api._in_place_targets``; a fresh tensor otherwise), :data:`CHUNK` bytes per ranged request; smaller
  neighbours share one ranged request into a bounce buffer of at most :data:`CHUNK` bytes.
- ``.pt`` (enn_nb's own): ``torch.load(weights_only=True, map_location="meta")`` over the store's file
  reads the zip directory and ``data.pkl`` only (the weights-only unpickler: no pickled code runs) and
  gives each storage's offset in the file (torch's ``_checkpoint_offset``); the tensors are then read as
  above. ENN-PyTorch payloads, legacy (non-zip) and foreign-byte-order files, and any file the meta load
  cannot read go through the fetched copy instead, so a damaged or unsafe file is refused by the local
  reader with the local words (:func:`enn_nb.checkpoint.remote.open_reader`).
- Integrity: each chunk is hashed (the algorithm the manifest names) as it arrives, while it is still in
  the CPU cache, and the digests are compared by :func:`.hashing.check_tensors` exactly as a local load
  does: same checks, same error. A mismatch raises before the caller's model is touched (a model
  enn_nb built and filled in place is discarded with the error).

Caching (issue 25, item 5): every byte streamed is also written at its offset into a hidden part file in
the cache folder :func:`enn_nb.storage.fetch` uses for this object's ETag/version. Once the reads cover
the object (the header, zip directory and record headers not read as tensor bytes are fetched by
concurrent ranged reads, :data:`GAP_LIMIT` bytes at most), every tensor was hash-checked and the version
on the store is still the one read, the part file is renamed into place: the next load of the same
version opens that local copy (memory-mapped), and downloads nothing. A partial load (``strict=False``,
only some tensors) or an unverified one (``verify=False``) caches nothing; its part file is removed.
Writing the copy costs page-cache writes, not memory: peak RSS is the destination tensors plus one chunk.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb.errors import CorruptCheckpointError, EnnError

from .base import check_table
from .hashing import check_tensors, new_hasher, split
from .manifest import decode
from .tensors import OPTIMIZER_PREFIX, byte_view, join_tree, split_tree

if TYPE_CHECKING:
    import torch

    from enn_nb.storage import Remote

#: bytes per ranged request (and the most a bounce buffer holds)
CHUNK = 16 << 20
#: tensors this large or larger are read straight into their destination
DIRECT = 1 << 20
#: the most bytes a completed cache copy may still need fetched (headers, zip directory, data.pkl)
GAP_LIMIT = 64 << 20
#: the largest hole between small tensors that one bounce read still spans (a zip record header)
SPAN_GAP = 64 << 10


# -- the object on the store: ranged reads, hashed and teed into the cache ---------------------------------
class _Source:
    """Ranged reads of ``remote`` into given buffers; each also written at its offset into a cache part file."""

    def __init__(self, remote: Remote, key: str, size: int) -> None:
        from enn_nb.storage import fetch_target, store_error

        self.remote, self.key, self.size = remote, key, size
        try:
            self.fh = remote.fs.open(remote.path, "rb", block_size=CHUNK, cache_type="none")
        except Exception as exc:  # noqa: BLE001 - the store's own error types
            raise store_error(remote, exc, writing=False) from None
        self.covered: list[tuple[int, int]] = []
        self.all_verified = True
        self.committed: Path | None = None
        self.target = fetch_target(remote, key)
        self.tee: Any = None
        try:  # the cache is an optimisation: a read-only or full cache folder only costs the next load a fetch
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.part = self.target.with_name(f".{self.target.name}.part-{uuid.uuid4().hex[:8]}")
            self.tee = open(self.part, "w+b")  # noqa: SIM115 - closed by commit/discard or the finalizer
            self.tee.truncate(size)
        except OSError:
            self._drop_tee()
        self._finalizer = weakref.finalize(self, _cleanup, self.fh, self.tee, getattr(self, "part", None))

    def _drop_tee(self) -> None:
        if self.tee is not None:
            with contextlib.suppress(OSError):
                self.tee.close()
        self.tee = None
        with contextlib.suppress(OSError, AttributeError):
            self.part.unlink()

    def _read_into(self, offset: int, view: memoryview) -> None:
        from enn_nb.storage import store_error

        try:
            self.fh.seek(offset)
            got = self.fh.readinto(view)
        except Exception as exc:  # noqa: BLE001
            raise store_error(self.remote, exc, writing=False) from None
        if got != len(view):
            raise CorruptCheckpointError(f"`{self.remote.url}` ended at byte {offset + got}; its header describes "
                                         f"{offset + len(view)} or more. The object is truncated.", file=self.remote.url)
        if self.tee is not None:
            try:
                self.tee.seek(offset)
                self.tee.write(view)
                self.covered.append((offset, offset + len(view)))
            except OSError:
                self._drop_tee()

    def stream(self, spans: Mapping[str, tuple[int, Any]], expected: Mapping[str, str | None]) -> dict[str, str]:
        """Fill each ``name -> (offset in the object, destination tensor)``; returns the digests of ``expected``'s names.

        Read in the object's order; a destination of :data:`DIRECT` bytes or more directly, smaller
        neighbours (holes up to :data:`SPAN_GAP`) together through one bounce buffer.
        """
        hashed: dict[str, str] = {}
        if any(not expected.get(name) for name in spans):
            self.all_verified = False
        order = sorted(spans, key=lambda n: spans[n][0])
        i = 0
        while i < len(order):
            name = order[i]
            start, dest = spans[name]
            view = byte_view(dest.detach())
            if len(view) >= DIRECT or len(view) == 0:
                hasher = self._hasher(expected.get(name))
                for pos in range(0, len(view), CHUNK):
                    part = view[pos:pos + CHUNK]
                    self._read_into(start + pos, part)
                    if hasher is not None:
                        hasher.update(part)
                if hasher is not None:
                    hashed[name] = f"{split(expected[name])[0]}:{hasher.hexdigest()}"  # type: ignore[index]
                i += 1
                continue
            group, end = [name], start + len(view)
            while i + len(group) < len(order):  # small neighbours: one ranged request
                nxt = order[i + len(group)]
                n_start, n_dest = spans[nxt]
                n_len = len(byte_view(n_dest.detach()))
                if n_len >= DIRECT or n_len == 0 or n_start < end or n_start - end > SPAN_GAP \
                        or n_start + n_len - start > CHUNK:
                    break
                group.append(nxt)
                end = n_start + n_len
            bounce = memoryview(bytearray(end - start))
            self._read_into(start, bounce)
            for member in group:
                m_start, m_dest = spans[member]
                m_view = byte_view(m_dest.detach())
                piece = bounce[m_start - start:m_start - start + len(m_view)]
                m_view[:] = piece
                hasher = self._hasher(expected.get(member))
                if hasher is not None:
                    hasher.update(piece)
                    hashed[member] = f"{split(expected[member])[0]}:{hasher.hexdigest()}"  # type: ignore[index]
            del bounce
            i += len(group)
        return hashed

    @staticmethod
    def _hasher(want: str | None) -> Any:
        return new_hasher(split(want)[0], threads=True) if want else None

    def gaps(self) -> list[tuple[int, int]]:
        out, at = [], 0
        for start, end in sorted(self.covered):
            if start > at:
                out.append((at, start))
            at = max(at, end)
        if at < self.size:
            out.append((at, self.size))
        return out

    def try_commit(self, *, final: bool) -> Path | None:
        """Complete and keep the cache copy when the reads covered the object; ``final``: else drop it."""
        from enn_nb.storage import version_key

        if self.tee is None or self.committed is not None:
            return self.committed
        holes = self.gaps()
        if not self.all_verified or sum(e - s for s, e in holes) > GAP_LIMIT:
            if final or not self.all_verified:
                self._drop_tee()  # the file handle stays open: the optimizer state may still be read
            return None
        try:
            if holes:
                fs, path = self.remote.fs, self.remote.path
                parts = fs.cat_ranges([path] * len(holes), [s for s, _ in holes], [e for _, e in holes])
                for (start, end), data in zip(holes, parts):
                    if isinstance(data, BaseException) or len(data) != end - start:
                        raise OSError("a ranged read for the cache copy failed")
                    self.tee.seek(start)
                    self.tee.write(data)
            self.tee.close()
            if version_key(self.remote) != self.key:  # replaced while being read: never cache under the old key
                raise OSError("the object changed on the store")
            os.replace(self.part, self.target)
            self.committed = self.target
        except Exception:  # noqa: BLE001 - a cache copy that cannot be completed is just not kept
            self._drop_tee()
            return None
        self.tee = None
        return self.committed

    def close(self) -> None:
        self._drop_tee()
        with contextlib.suppress(Exception):
            self.fh.close()


def _cleanup(fh: Any, tee: Any, part: Path | None) -> None:
    """A reader dropped before its cache copy was completed: close both files, remove the part file."""
    with contextlib.suppress(Exception):
        fh.close()
    if tee is not None and not tee.closed:
        with contextlib.suppress(Exception):
            tee.close()
        if part is not None:
            with contextlib.suppress(OSError):
                part.unlink()


def _empty(shape: tuple[int, ...], dtype: Any) -> torch.Tensor:
    import torch

    return torch.empty(shape, dtype=dtype)


def _destination(name: str, shape: tuple[int, ...], dtype: Any, into: Mapping[str, Any] | None) -> torch.Tensor:
    """``into[name]`` when it can take the bytes as they are (dense CPU, same dtype and shape), else a new tensor."""
    import torch

    mine = (into or {}).get(name)
    if (type(mine) is torch.Tensor and mine.device.type == "cpu" and mine.dtype == dtype
            and tuple(mine.shape) == tuple(shape) and mine.is_contiguous() and not mine.is_conj() and not mine.is_neg()):
        return mine
    return _empty(tuple(shape), dtype)


# -- .safetensors -------------------------------------------------------------------------------------------
def open_safetensors(remote: Remote, key: str) -> Any:
    """A streamed reader for an enn_nb ``.safetensors`` at ``remote``, or None (an ENN-PyTorch file: fetched)."""
    from .safetensors_format import MANIFEST_KEY, read_header

    header, start = read_header(remote)
    metadata = header.get("__metadata__")
    if not (isinstance(metadata, dict) and isinstance(metadata.get(MANIFEST_KEY), str)):
        return None
    _check_tiling(remote, header, start)
    return StreamedSafetensorsReader(remote, key, header, start)


def _check_tiling(remote: Remote, header: Mapping[str, Any], start: int) -> None:
    """The tensors cover the data area exactly, without overlap, as the safetensors library requires."""
    ranges = sorted(tuple(info["data_offsets"]) for name, info in header.items() if name != "__metadata__")
    at = 0
    for begin, end in ranges:
        if begin != at:
            raise CorruptCheckpointError(f"`{remote.url}` cannot be read by safetensors: InvalidOffset (tensor data "
                                         f"at byte {begin}, expected {at}).", file=remote.url)
        at = end
    size = int(remote.fs.size(remote.path))
    if start + at != size:
        raise CorruptCheckpointError(f"`{remote.url}` cannot be read by safetensors: MetadataIncompleteBuffer (the "
                                     f"header describes {start + at} bytes, the object has {size}).", file=remote.url)


class StreamedSafetensorsReader:
    """:class:`.safetensors_format.SafetensorsReader`'s interface over a URL, its tensors streamed."""

    #: ``tensors(into=...)`` reads straight into the given tensors (see ``api._in_place_targets``)
    fills_in_place = True
    upstream = False
    verifiable = True

    def __init__(self, remote: Remote, key: str, header: dict[str, Any], start: int) -> None:
        from .safetensors_format import MANIFEST_KEY, header_table

        self.path, self.header, self.data_start = remote, header, start
        self.manifest = decode(header["__metadata__"][MANIFEST_KEY], path=remote.url)
        opt = self.manifest.optimizer or {}
        table = header_table(header)
        check_table(self.manifest, {k: v for k, v in table.items() if not k.startswith(opt.get("prefix", "\0"))},
                    where=f"`{remote.url}`")
        self._table = table
        end = max((info["data_offsets"][1] for n, info in header.items() if n != "__metadata__"), default=0)
        self._source = _Source(remote, key, start + end)  # _check_tiling: the object's size

    def _read(self, names: list[str], expected: Mapping[str, str | None],
              into: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
        from .tensors import torch_dtype

        out = {name: _destination(name, self._table[name][1], torch_dtype(self._table[name][0]), into)
               for name in names}
        spans = {name: (self.data_start + self.header[name]["data_offsets"][0], out[name]) for name in names}
        return out, self._source.stream(spans, expected)

    def tensors(self, names: list[str], *, verify: bool, into: Mapping[str, Any] | None = None) -> dict[str, Any]:
        expected = {t.name: t.hash for t in self.manifest.tensors if t.name in names} if verify else {}
        out, hashed = self._read(names, expected, into)
        if verify:
            check_tensors(out, expected, what=f"`{self.path}`", hashed=hashed)
        self._source.try_commit(final=False)
        return out

    def optimizer_state(self, *, verify: bool) -> dict[str, Any] | None:
        opt = self.manifest.optimizer
        if not opt:
            self._source.try_commit(final=True)
            return None
        names = [t["name"] for t in opt["tensors"]]
        missing = [n for n in names if n not in self.header]
        if missing:
            raise CorruptCheckpointError(f"`{self.path}` lacks optimizer tensor(s) {missing[:5]} its manifest lists.",
                                         file=str(self.path), tensor=missing[0])
        expected = {t["name"]: t.get("hash") for t in opt["tensors"]} if verify else {}
        tensors, hashed = self._read(names, expected)
        if verify:
            check_tensors(tensors, expected, what=f"the optimizer state of `{self.path}`", hashed=hashed)
        self._source.try_commit(final=True)
        return join_tree(opt["structure"], tensors)


# -- .pt ----------------------------------------------------------------------------------------------------
def open_pt(remote: Remote, key: str) -> Any:
    """A streamed reader for an enn_nb ``.pt`` at ``remote``, or None (read through the fetched copy instead)."""
    import torch
    from torch.serialization import safe_globals
    from torch.torch_version import TorchVersion

    from enn_nb.storage import store_error

    from .pt import MANIFEST_KEY, check_zip_bounds

    try:
        size = int(remote.fs.size(remote.path))
        fh = remote.fs.open(remote.path, "rb", block_size=1 << 16, cache_type="bytes")
    except Exception as exc:  # noqa: BLE001 - the store's own error types
        raise store_error(remote, exc, writing=False) from None
    with fh:
        check_zip_bounds(fh, size, remote.url)  # compressed or oversized records: refused before any inflate
        fh.seek(0)
        if fh.read(4) != b"PK\x03\x04":
            return None  # a legacy torch.save file
        try:
            fh.seek(0)
            reader = torch._C.PyTorchFileReader(fh)  # what torch.load opens (enn_nb writes no CRC-32s to check)
            order = bytes(reader.get_record("byteorder")).decode() if reader.has_record("byteorder") else "little"
            del reader
            if order != sys.byteorder:
                return None  # torch swaps the bytes of such a file as it reads it
            fh.seek(0)
            with safe_globals([TorchVersion]):
                payload = torch.load(fh, map_location="meta", weights_only=True)
        except EnnError:
            raise
        except Exception:  # noqa: BLE001 - unsafe or damaged: the local reader refuses it with its own words
            return None
    if not (isinstance(payload, Mapping) and isinstance(payload.get(MANIFEST_KEY), str)
            and isinstance(payload.get("state_dict"), Mapping)):
        return None  # an ENN-PyTorch payload (or not a checkpoint): the local reader says which
    try:
        tensors = {**dict(payload["state_dict"]), **split_tree(payload.get("optimizer"), OPTIMIZER_PREFIX)[1]} \
            if payload.get("optimizer") is not None else dict(payload["state_dict"])
    except EnnError:
        return None  # a malformed optimizer tree: the local reader names it
    for t in tensors.values():
        if not isinstance(t, torch.Tensor) or not t.is_contiguous() or getattr(
                t.untyped_storage(), "_checkpoint_offset", None) is None:
            return None
        end = t.untyped_storage()._checkpoint_offset + (t.storage_offset() + t.numel()) * t.element_size()
        if t.storage_offset() * t.element_size() + t.numel() * t.element_size() > t.untyped_storage().nbytes() \
                or end > size:
            return None  # outside its record or the object: the local reader names the damage
    return StreamedPtReader(remote, key, payload, size)


def _offset(t: Any) -> int:
    return int(t.untyped_storage()._checkpoint_offset) + t.storage_offset() * t.element_size()


class StreamedPtReader:
    """:class:`.pt.PtReader`'s interface over a URL (enn_nb files), its tensors streamed."""

    fills_in_place = True
    upstream = False
    verifiable = True

    def __init__(self, remote: Remote, key: str, payload: Mapping[str, Any], size: int) -> None:
        from .pt import MANIFEST_KEY, _table

        self.path = remote
        self.manifest = decode(payload[MANIFEST_KEY], path=remote.url)
        self.state = dict(payload["state_dict"])  # tensors on the meta device: shapes, dtypes, offsets
        self.raw_optimizer = payload.get("optimizer")
        check_table(self.manifest, _table(self.state), where=f"`{remote.url}`")
        self._source = _Source(remote, key, size)
        self._container_checked = False

    def _stream(self, meta: Mapping[str, Any], expected: Mapping[str, str | None],
                into: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
        out = {name: _destination(name, tuple(t.shape), t.dtype, into) for name, t in meta.items()}
        hashed = self._source.stream({name: (_offset(t), out[name]) for name, t in meta.items()}, expected)
        return out, hashed

    def _check_container(self) -> None:
        """The local reader's zip check (every record's local header opens), on the cache copy when kept."""
        import zipfile

        if self._container_checked:
            return
        where: Any = self._source.committed
        try:
            fh = open(where, "rb") if where is not None else self.path.fs.open(  # noqa: SIM115
                self.path.path, "rb", block_size=1 << 16, cache_type="bytes")
            with fh, zipfile.ZipFile(fh) as zf:
                for info in zf.infolist():
                    with zf.open(info):  # opening validates the local header
                        pass
        except Exception as exc:  # noqa: BLE001 - zipfile raises many types on damaged input
            raise CorruptCheckpointError(f"`{self.path}` is damaged: {exc}. Restore it from a good copy.",
                                         file=str(self.path)) from exc
        self._container_checked = True

    def tensors(self, names: list[str], *, verify: bool, into: Mapping[str, Any] | None = None) -> dict[str, Any]:
        expected = {t.name: t.hash for t in self.manifest.tensors if t.name in names} if verify else {}
        out, hashed = self._stream({name: self.state[name] for name in names}, expected, into)
        if verify:
            check_tensors(out, expected, what=f"`{self.path}`", hashed=hashed)
        self._source.try_commit(final=self.raw_optimizer is None)
        if verify:
            self._check_container()
        return out

    def optimizer_state(self, *, verify: bool) -> dict[str, Any] | None:
        if self.raw_optimizer is None:
            self._source.try_commit(final=True)
            return None
        structure, meta = split_tree(self.raw_optimizer, OPTIMIZER_PREFIX)
        opt = self.manifest.optimizer
        check = verify and opt is not None
        if check and structure != opt["structure"]:
            raise CorruptCheckpointError(f"The optimizer state in `{self.path}` differs from its manifest; the file is "
                                         "damaged.", file=str(self.path))
        expected = {t["name"]: t.get("hash") for t in opt["tensors"]} if check else {}  # type: ignore[index]
        tensors, hashed = self._stream(meta, expected)
        if check:
            check_tensors(tensors, expected, what=f"the optimizer state of `{self.path}`", hashed=hashed)
        self._source.try_commit(final=True)
        if check:
            self._check_container()
        return join_tree(structure, tensors)
