"""Streamed loads of a single-file checkpoint at a URL: tensor bytes go from the store into their tensors.

No full local copy is read from and no whole-file buffer is held. The object is read once, front to
back: one GET body where the filesystem streams one (fsspec's ``open_async``: s3fs, gcsfs...), else
sequential reads of :data:`CHUNK` bytes; each tensor's bytes land in :data:`CHUNK`-sized pieces straight
in its destination (the built model's own parameter when :func:`enn_nb.load` built the model, see
``api._in_place_targets``; a fresh tensor otherwise).

- ``.safetensors``: the length and header off the front of the stream (checked by the local reader's
  parser, plus the data-area tiling the safetensors library checks), then the tensors.
- ``.pt`` (enn_nb's own): the zip's first 64 KiB and last MiB are read ahead (two requests), then
  ``torch.load(weights_only=True, map_location="meta")`` reads the zip directory and ``data.pkl`` from
  them (the weights-only unpickler: no pickled code runs; compressed or oversized records are refused
  first, as locally) and gives each storage's offset in the file (torch's ``_checkpoint_offset``); then
  the stream. ENN-PyTorch payloads, legacy (non-zip) and foreign-byte-order files, and any file the meta
  load cannot read go through the fetched copy and the local reader instead, so a damaged or unsafe
  file is refused with the local words (:func:`enn_nb.checkpoint.remote_read.open_reader`).
- Integrity: each piece is hashed (the algorithm the manifest names) as soon as it is in place, and the
  digests are compared by :func:`.hashing.check_tensors` exactly as a local load does: same checks, same
  error. A mismatch raises before the caller's model is touched (a model enn_nb built and filled in
  place is discarded with the error).

Caching (issue 25, item 5), the choice made: the stream is teed. Every byte that passes is written at its
offset into a hidden part file in the folder :func:`enn_nb.storage.fetch` uses for this object's
ETag/version (page-cache writes, not memory: peak RSS stays the destination tensors plus one chunk). A
tensor asked for after the stream passed it (the optimizer state, read after the model's tensors) comes
back from that file. When the tensors asked for passed their hash checks and at most :data:`GAP_LIMIT`
bytes are left (``data.pkl``, the zip directory; or the optimizer state, read next from the copy), the
rest is read, and if the store still holds the version read the part file is renamed into place: the
next load of that version opens the local copy (memory-mapped, verified again) and downloads nothing.
An unverified (``verify=False``) or failed load keeps nothing (a copy kept before a later check failed
is removed); so does a partial one that leaves more than :data:`GAP_LIMIT` unread. Without a writable cache folder the load still streams,
and writes nothing locally.
"""

from __future__ import annotations

import contextlib
import io
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

#: bytes per read of the stream (and per ranged request where one is needed)
CHUNK = 16 << 20
#: the most bytes a load still reads past its last tensor to complete the cache copy (data.pkl, zip directory)
GAP_LIMIT = 64 << 20


# -- the object on the store: one front-to-back stream, hashed and teed into the cache ----------------------
async def _fill_async(f: Any, view: memoryview) -> int:
    """Fill ``view`` from an fsspec async streamed file (one GET body); runs on the filesystem's event loop."""
    got = 0
    while got < len(view):
        data = await f.read(len(view) - got)
        if not data:
            break
        view[got:got + len(data)] = data
        got += len(data)
    return got


class _Source:
    """``remote`` read once, front to back, by one request where the filesystem can (``open_async``: s3fs, gcsfs...).

    Every byte that passes is written at its offset into a cache part file (the tee); a tensor behind
    the stream (read out of order, e.g. the optimizer state after the model's) comes back from there.
    Without a tee (no writable cache) such bytes are fetched again by a ranged read.
    """

    def __init__(self, remote: Remote, key: str, size: int) -> None:
        from enn_nb.storage import fetch_target

        self.remote, self.key, self.size = remote, key, size
        self.pos = 0  # the stream's position: every byte before it went through the tee
        self._read: Any = None  # (view) -> bytes filled, opened on first use
        self._handles: list[Any] = []
        self.all_verified = True
        self.committed: Path | None = None
        self.target = fetch_target(remote, key)
        self.tee: Any = None
        # Teeing and hashing run on one worker thread, in order, while the next chunk arrives (both
        # release the GIL); _drain waits for them.
        from concurrent.futures import ThreadPoolExecutor

        self._worker = ThreadPoolExecutor(1, thread_name_prefix="enn-nb-stream")
        self._pending: list[Any] = []
        self._tee_failed = False
        try:  # the cache is an optimisation: a read-only or full cache folder only costs the next load a fetch
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.part = self.target.with_name(f".{self.target.name}.part-{uuid.uuid4().hex[:8]}")
            self.tee = open(self.part, "w+b")  # noqa: SIM115 - closed by commit/discard or the finalizer
        except OSError:
            self._drop_tee()
        self._finalizer = weakref.finalize(self, _cleanup, self._handles, self.tee, getattr(self, "part", None),
                                           self._worker)

    def _later(self, fn: Any, *args: Any) -> None:
        if len(self._pending) > 256:
            self._pending = [f for f in self._pending if not f.done() or f.exception() is not None]
        self._pending.append(self._worker.submit(fn, *args))

    def _drain(self) -> None:
        """Wait for the queued tee writes and hash updates; a failed tee write drops the cache copy."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()
        if self._tee_failed:
            self._tee_failed = False
            self._drop_tee()

    def _tee_write(self, pos: int, view: memoryview) -> None:
        tee = self.tee
        if tee is None or self._tee_failed:
            return
        try:
            tee.seek(pos)
            tee.write(view)
        except (OSError, ValueError):
            self._tee_failed = True

    def _drop_tee(self) -> None:
        if self.tee is not None:
            with contextlib.suppress(OSError):
                self.tee.close()
        self.tee = None
        with contextlib.suppress(OSError, AttributeError):
            self.part.unlink()

    def _open(self) -> None:
        fs, path = self.remote.fs, self.remote.path
        if getattr(fs, "async_impl", False) and getattr(fs, "loop", None) is not None:
            from fsspec.asyn import sync

            try:
                f = sync(fs.loop, fs.open_async, path, "rb")
            except NotImplementedError:
                f = None
            if f is not None:
                self._handles.append(f)
                self._read = lambda view: sync(fs.loop, _fill_async, f, view)
                return
        fh = fs.open(path, "rb", block_size=CHUNK, cache_type="readahead")  # sequential blocks of CHUNK bytes
        self._handles.append(fh)
        self._read = fh.readinto

    def _next_into(self, view: memoryview) -> None:
        """The stream's next ``len(view)`` bytes into ``view`` (and the tee)."""
        from enn_nb.storage import store_error

        try:
            if self._read is None:
                self._open()
            got = self._read(view)
        except Exception as exc:  # noqa: BLE001 - the store's own error types
            raise store_error(self.remote, exc, writing=False) from None
        if got != len(view):
            raise CorruptCheckpointError(f"`{self.remote.url}` ended at byte {self.pos + got}; its header describes "
                                         f"{self.pos + len(view)} or more. The object is truncated.",
                                         file=self.remote.url)
        if self.tee is not None:
            self._later(self._tee_write, self.pos, view)
        self.pos += len(view)

    def _skip_to(self, offset: int) -> None:
        """Read (and tee) the bytes up to ``offset``: headers, or tensors nobody asked for yet."""
        if offset <= self.pos:
            return
        while self.pos < offset:  # a new buffer each time: the tee may still be writing the last one
            self._next_into(memoryview(bytearray(min(CHUNK, offset - self.pos))))

    def _fill(self, offset: int, view: memoryview) -> None:
        if offset >= self.pos:
            self._skip_to(offset)
            self._next_into(view)
            return
        if self.tee is not None and offset + len(view) <= self.pos:  # behind the stream: from the tee
            self._drain()  # its writes first (a failed one drops the tee)
        if self.tee is not None and offset + len(view) <= self.pos:
            self.tee.seek(offset)
            if self.tee.readinto(view) != len(view):
                raise CorruptCheckpointError(f"`{self.remote.url}`: the cache copy being written is short.",
                                             file=self.remote.url)
            return
        from enn_nb.storage import read_range  # behind the stream and no tee: read again

        data = read_range(self.remote, offset, offset + len(view))
        if len(data) != len(view):
            raise CorruptCheckpointError(f"`{self.remote.url}` ended before byte {offset + len(view)}; the "
                                         "object is truncated.", file=self.remote.url)
        view[:] = data

    def stream(self, spans: Mapping[str, tuple[int, Any]], expected: Mapping[str, str | None]) -> dict[str, str]:
        """Fill each ``name -> (offset in the object, destination tensor)``; returns the digests of ``expected``'s names.

        In the object's order, :data:`CHUNK` bytes at a time straight into the destination, each chunk
        hashed as soon as it is there.
        """
        hashers: dict[str, Any] = {}
        if any(not expected.get(name) for name in spans):
            self.all_verified = False
        for name in sorted(spans, key=lambda n: spans[n][0]):
            start, dest = spans[name]
            view = byte_view(dest.detach())
            want = expected.get(name)
            hasher = new_hasher(split(want)[0], threads=True) if want else None
            for pos in range(0, len(view), CHUNK):
                part = view[pos:pos + CHUNK]
                self._fill(start + pos, part)
                if hasher is not None:
                    self._later(hasher.update, part)
            if hasher is not None:
                hashers[name] = hasher
        self._drain()
        return {name: f"{split(expected[name])[0]}:{h.hexdigest()}" for name, h in hashers.items()}  # type: ignore[arg-type]

    def try_commit(self, *, final: bool) -> Path | None:
        """Keep the cache copy once every tensor passed verified: read the few bytes left (data.pkl, the zip
        directory) and rename it into place, if the store still holds the version read. ``final``: the
        last chance; a copy that cannot be completed is dropped."""
        from enn_nb.storage import version_key

        self._drain()
        if self.committed is not None or self.tee is None:
            return self.committed
        left = self.size - self.pos
        if not self.all_verified or left > GAP_LIMIT:
            if final or not self.all_verified:
                self._drop_tee()
            return None
        try:
            self._skip_to(self.size)
            self._drain()
            if self.tee is None:
                return None
            self.tee.close()
            if version_key(self.remote) != self.key:  # replaced while being read: never cache under the old key
                raise OSError("the object changed on the store")
            os.replace(self.part, self.target)
            self.committed = self.target
            _close(self._handles)
            # tensors asked for later (the optimizer state after the model's) are read from the copy
            self.tee = open(self.target, "rb")  # noqa: SIM115 - closed with the reader
        except Exception:  # noqa: BLE001 - a cache copy that cannot be completed is just not kept
            self._drop_tee()
            return None
        return self.committed

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._drain()
        self._drop_tee()
        _close(self._handles)
        self._worker.shutdown(wait=False)

    @contextlib.contextmanager
    def failing_drops_the_copy(self) -> Any:
        """A failed read or check leaves no part file behind (even while a traceback keeps the reader alive)."""
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                self._drain()
            self._drop_tee()
            if self.committed is not None:  # kept after the model's tensors, then the optimizer state failed
                with contextlib.suppress(OSError):
                    self.committed.unlink()
                self.committed = None
            raise



def _close(handles: list[Any]) -> None:
    import inspect

    while handles:
        fh = handles.pop()
        with contextlib.suppress(Exception):
            body = getattr(fh, "r", None)  # an async streamed file: release its GET's connection
            if body is not None:
                body.close()
            elif not inspect.iscoroutinefunction(getattr(fh, "close", None)):
                fh.close()


def _cleanup(handles: list[Any], tee: Any, part: Path | None, worker: Any) -> None:
    """A reader dropped before its cache copy was completed: close the files, remove the part file."""
    worker.shutdown(wait=False, cancel_futures=True)  # may run on the worker itself: never join it
    _close(handles)
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
    """A streamed reader for an enn_nb ``.safetensors`` at ``remote``, or None (an ENN-PyTorch file: fetched).

    The length and header come off the front of the stream itself (no separate ranged requests) and are
    checked by the local reader's own parser.
    """
    from enn_nb.storage import store_error

    from .safetensors_format import MANIFEST_KEY, _parse_header

    try:
        size = int(remote.fs.size(remote.path))
    except Exception as exc:  # noqa: BLE001 - the store's own error types
        raise store_error(remote, exc, writing=False) from None
    source = _Source(remote, key, size)

    def read(start: int, n: int) -> bytes:
        view = memoryview(bytearray(max(0, min(n, size - start))))
        source._fill(start, view)
        return view.tobytes()

    with source.failing_drops_the_copy():
        header, start = _parse_header(remote, size, read)
        metadata = header.get("__metadata__")
        if not (isinstance(metadata, dict) and isinstance(metadata.get(MANIFEST_KEY), str)):
            source.close()
            return None
        _check_tiling(remote, header, start, size)
        return StreamedSafetensorsReader(remote, header, start, source)


def _check_tiling(remote: Remote, header: Mapping[str, Any], start: int, size: int) -> None:
    """The tensors cover the data area exactly, without overlap, as the safetensors library requires."""
    ranges = sorted(tuple(info["data_offsets"]) for name, info in header.items() if name != "__metadata__")
    at = 0
    for begin, end in ranges:
        if begin != at:
            raise CorruptCheckpointError(f"`{remote.url}` cannot be read by safetensors: InvalidOffset (tensor data "
                                         f"at byte {begin}, expected {at}).", file=remote.url)
        at = end
    if start + at != size:
        raise CorruptCheckpointError(f"`{remote.url}` cannot be read by safetensors: MetadataIncompleteBuffer (the "
                                     f"header describes {start + at} bytes, the object has {size}).", file=remote.url)


class _DropsTheCopyOnFailure:
    """The reader calls: a failing one removes the cache copy its stream was writing (or had kept)."""

    _source: _Source

    def tensors(self, names: list[str], *, verify: bool, into: Mapping[str, Any] | None = None) -> dict[str, Any]:
        with self._source.failing_drops_the_copy():
            return self._tensors(names, verify=verify, into=into)

    def optimizer_state(self, *, verify: bool) -> dict[str, Any] | None:
        with self._source.failing_drops_the_copy():
            return self._optimizer_state(verify=verify)


class StreamedSafetensorsReader(_DropsTheCopyOnFailure):
    """:class:`.safetensors_format.SafetensorsReader`'s interface over a URL, its tensors streamed."""

    #: ``tensors(into=...)`` reads straight into the given tensors (see ``api._in_place_targets``)
    fills_in_place = True
    upstream = False
    verifiable = True

    def __init__(self, remote: Remote, header: dict[str, Any], start: int, source: _Source) -> None:
        from .safetensors_format import MANIFEST_KEY, header_table

        self.path, self.header, self.data_start = remote, header, start
        self.manifest = decode(header["__metadata__"][MANIFEST_KEY], path=remote.url)
        opt = self.manifest.optimizer or {}
        table = header_table(header)
        check_table(self.manifest, {k: v for k, v in table.items() if not k.startswith(opt.get("prefix", "\0"))},
                    where=f"`{remote.url}`")
        self._table, self._source = table, source

    def _read(self, names: list[str], expected: Mapping[str, str | None],
              into: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
        from .tensors import torch_dtype

        out = {name: _destination(name, self._table[name][1], torch_dtype(self._table[name][0]), into)
               for name in names}
        spans = {name: (self.data_start + self.header[name]["data_offsets"][0], out[name]) for name in names}
        return out, self._source.stream(spans, expected)

    def _tensors(self, names: list[str], *, verify: bool, into: Mapping[str, Any] | None = None) -> dict[str, Any]:
        expected = {t.name: t.hash for t in self.manifest.tensors if t.name in names} if verify else {}
        out, hashed = self._read(names, expected, into)
        if verify:
            check_tensors(out, expected, what=f"`{self.path}`", hashed=hashed)
        self._source.try_commit(final=False)
        return out

    def _optimizer_state(self, *, verify: bool) -> dict[str, Any] | None:
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
#: the bytes read ahead from each end of a .pt before torch.load opens it: the first record's local header,
#: and data.pkl with the small records and the zip directory (a larger data.pkl costs one more request)
HEAD, TAIL = 64 << 10, 1 << 20


class _Prefetched(io.RawIOBase):
    """A read-only file over ``remote`` that answers from its first and last bytes, read up front.

    torch.load's zip reader and zipfile then cost two requests instead of one per structure they visit.
    """

    def __init__(self, remote: Remote, size: int) -> None:
        from enn_nb.storage import read_range

        super().__init__()
        self.remote, self.size, self.loc = remote, size, 0
        tail_at = max(0, size - TAIL)
        self.parts = {tail_at: read_range(remote, tail_at, size)}
        if tail_at > 0:
            self.parts[0] = read_range(remote, 0, min(HEAD, tail_at))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.loc

    def seek(self, offset: int, whence: int = 0) -> int:
        self.loc = offset if whence == 0 else self.loc + offset if whence == 1 else self.size + offset
        return self.loc

    def readinto(self, b: Any) -> int:
        from enn_nb.storage import read_range

        view = memoryview(b).cast("B")
        end = min(self.size, self.loc + len(view))
        if end <= self.loc:
            return 0
        for at, data in self.parts.items():
            if at <= self.loc and end <= at + len(data):
                chunk = data[self.loc - at:end - at]
                break
        else:
            chunk = read_range(self.remote, self.loc, end)
        view[:len(chunk)] = chunk
        self.loc += len(chunk)
        return len(chunk)

def open_pt(remote: Remote, key: str) -> Any:
    """A streamed reader for an enn_nb ``.pt`` at ``remote``, or None (read through the fetched copy instead)."""
    import torch
    from torch.serialization import safe_globals
    from torch.torch_version import TorchVersion

    from enn_nb.storage import store_error

    from .pt import MANIFEST_KEY, check_zip_bounds

    try:
        size = int(remote.fs.size(remote.path))
    except Exception as exc:  # noqa: BLE001 - the store's own error types
        raise store_error(remote, exc, writing=False) from None
    with _Prefetched(remote, size) as fh:
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


class StreamedPtReader(_DropsTheCopyOnFailure):
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

    def _tensors(self, names: list[str], *, verify: bool, into: Mapping[str, Any] | None = None) -> dict[str, Any]:
        expected = {t.name: t.hash for t in self.manifest.tensors if t.name in names} if verify else {}
        out, hashed = self._stream({name: self.state[name] for name in names}, expected, into)
        if verify:
            check_tensors(out, expected, what=f"`{self.path}`", hashed=hashed)
        self._source.try_commit(final=self.raw_optimizer is None)
        if verify and (self.raw_optimizer is None or self._source.committed is not None):
            self._check_container()  # else after the optimizer state, on the completed cache copy
        return out

    def _optimizer_state(self, *, verify: bool) -> dict[str, Any] | None:
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
        if verify:
            self._check_container()
        return join_tree(structure, tensors)
