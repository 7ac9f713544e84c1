"""Streamed loads of an enn_nb DCP folder at a URL: torch's own ``FsspecReader``, every shard hashed as it streams.

No local copy: ``dcp.load`` reads each record of each shard object through torch's fsspec reader (ranged
reads, through a small read-ahead block); the tensors come out of DCP's own ``torch.load`` of each record
(kept as they are, or copied into the destination as locally, see :func:`.dcp._safe_reader`).

Integrity, the same guarantees as a local load (:class:`.dcp.DcpReader`):

- the manifest is the commit marker: a folder without it is refused as incomplete (and one whose
  ``.metadata`` is missing as damaged); ``.metadata`` (this save's own content-addressed copy where the
  store holds one) is checked against the manifest's hash on the very bytes that are unpickled, through
  the same restricted unpickler; every shard it points at must be listed in the manifest;
- **every byte of every shard file** is hashed once, in order, while DCP reads: bytes DCP reads are hashed
  from the buffers they land in; torch reads a record's zip directory (at its end) before its data, so
  such small reads ahead of the hashed prefix are kept (at most :data:`AHEAD_LIMIT` bytes) and hashed when
  the prefix reaches them; bytes DCP does not read (records of tensors not asked for, another rank's
  slices, the zip framing between records) are read and hashed when the reads move past them, and the rest
  of the object when DCP closes it. Files no read opened (the optimizer's shards of a model-only load)
  are streamed and hashed after the load. A file whose digest or size differs from the manifest is
  refused with the local error (:meth:`.dcp.DcpReader._refuse_files`: the file, the tensors it holds, the
  URL), before anything reaches the caller: the load reads into fresh tensors or a model enn_nb built;
- per-tensor hashes are checked after the load by :func:`.hashing.check_tensors`, as locally.

Under a process group the files are checked first, split across ranks, then read (as a local multi-rank
load does): every rank runs the same collectives whatever it reads, at the cost of reading each shard
twice. A DCP folder is not cached (issue 25 item 5 is met by the single-file formats only): each load
streams it again. An ENN-PyTorch folder (no enn_nb manifest) still goes through the fetched copy.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from enn_nb._safeio import MAX_DCP_METADATA_BYTES, escape, plain_name
from enn_nb.errors import CorruptCheckpointError

from . import dcp_metadata
from .base import check_table
from .dcp import MODEL_KEY, DcpReader, _all_gather, _dist, _safe_reader, metadata_table
from .detect import DCP_METADATA
from .hashing import FILE_CHUNK, new_hasher, split
from .manifest import FileEntry

if TYPE_CHECKING:
    from enn_nb.storage import Remote

#: read-ahead block of each shard object (torch.load's small reads of a record's header and directory)
BLOCK = 256 << 10
#: the most bytes read ahead of the hashed prefix that are kept to be hashed later, per object
AHEAD_LIMIT = 1 << 20


class _HashedObject(io.RawIOBase):
    """One shard object, read-only and seekable, hashing every byte of it once and in order as it is read.

    Large reads go into the caller's buffer in :data:`FILE_CHUNK` pieces (no whole-record bounce buffer).
    ``algorithm=None``: a plain reader (the object was already hashed).
    """

    def __init__(self, raw: Any, size: int, algorithm: str | None) -> None:
        super().__init__()
        self.raw, self.size, self.pos = raw, size, 0
        self.hasher = new_hasher(algorithm) if algorithm else None
        self.algorithm = algorithm
        self.hashed = 0  # every byte before it went through the hasher
        self.ahead: dict[int, bytes] = {}
        self.ahead_bytes = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def _fetch(self, pos: int, view: memoryview) -> int:
        got = 0
        while got < len(view):
            self.raw.seek(pos + got)
            data = self.raw.read(min(FILE_CHUNK, len(view) - got))
            if not data:
                break
            view[got:got + len(data)] = data
            got += len(data)
        return got

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        view = view[:max(0, min(len(view), self.size - self.pos))]
        got = self._fetch(self.pos, view)
        if self.hasher is not None and got:
            self._saw(self.pos, view[:got])
        self.pos += got
        return got

    def read(self, size: int | None = -1) -> bytes:
        n = self.size - self.pos if size is None or size < 0 else min(size, self.size - self.pos)
        buffer = bytearray(max(0, n))
        return bytes(memoryview(buffer)[:self.readinto(buffer)])

    # -- hashing ------------------------------------------------------------------------------------------
    def _saw(self, start: int, data: memoryview) -> None:
        end = start + len(data)
        if start > self.hashed:
            if self.ahead_bytes + len(data) <= AHEAD_LIMIT:  # e.g. a record's zip directory, read before its data
                self.ahead[start] = bytes(data)
                self.ahead_bytes += len(data)
                return
            self._catch_up(start)
        if start <= self.hashed < end:
            assert self.hasher is not None
            self.hasher.update(data[self.hashed - start:])
            self.hashed = end
            self._from_ahead()

    def _from_ahead(self) -> None:
        """Hash the kept pieces the prefix now reaches; drop those it passed."""
        assert self.hasher is not None
        progress = True
        while progress:
            progress = False
            for start in sorted(self.ahead):
                data = self.ahead[start]
                if start <= self.hashed < start + len(data):
                    self.hasher.update(memoryview(data)[self.hashed - start:])
                    self.hashed = start + len(data)
                    progress = True
        for start in [s for s, d in self.ahead.items() if s + len(d) <= self.hashed]:
            self.ahead_bytes -= len(self.ahead.pop(start))

    def _catch_up(self, target: int) -> None:
        """Read and hash the bytes up to ``target`` that nobody read (records not asked for, framing)."""
        assert self.hasher is not None
        buffer = bytearray(min(FILE_CHUNK, max(1, target - self.hashed)))
        while self.hashed < target:
            self._from_ahead()
            if self.hashed >= target:
                break
            view = memoryview(buffer)[:min(len(buffer), target - self.hashed)]
            got = self._fetch(self.hashed, view)
            if not got:
                break
            self.hasher.update(view[:got])
            self.hashed += got

    def finish(self) -> tuple[str, int]:
        """(digest, bytes hashed) of the whole object: the part no read reached is read now."""
        self._catch_up(self.size)
        assert self.hasher is not None
        return f"{self.algorithm}:{self.hasher.hexdigest()}", self.hashed


def _hashing_streams(remote: Remote, entries: dict[str, FileEntry], results: dict[str, tuple[str, int]]) -> Any:
    """torch's fsspec ``FileSystem`` over ``remote``'s filesystem; each shard opened to be read is hashed
    (once: into ``results``, name -> (digest, bytes)) as DCP reads it."""
    from torch.distributed.checkpoint._fsspec_filesystem import FileSystem

    class HashingStreams(FileSystem):
        @contextlib.contextmanager
        def create_stream(self, path: Any, mode: str) -> Iterator[Any]:
            name = str(path).rstrip("/").rsplit("/", 1)[-1]
            entry = entries.get(name)
            algorithm = split(entry.hash)[0] if entry is not None and entry.hash and name not in results else None
            with remote.fs.open(remote.child(name).path, "rb", block_size=BLOCK, cache_type="readahead") as raw:
                stream = _HashedObject(raw, int(raw.size), algorithm)
                yield stream
                if algorithm is not None:
                    results[name] = stream.finish()

    streams = HashingStreams()
    streams.fs = remote.fs  # the filesystem resolved with the caller's options
    return streams


class StreamedDcpReader(DcpReader):
    """An enn_nb DCP folder at a URL, read through torch's ``FsspecReader`` with no local copy (see the module)."""

    def __init__(self, remote: Remote) -> None:
        from .remote import _dcp_manifest, _names, metadata_copy

        self.remote = remote
        self.path = remote.url  # type: ignore[assignment] - only named in messages: errors name the URL
        self._identity = None  # a store has no rename: nothing swaps the folder under a read (manifest last)
        names = _names(remote)
        manifest = _dcp_manifest(remote)  # the commit marker (size-capped); refuses a folder without .metadata
        for entry in manifest.files:
            plain_name(entry.path, what="A file the DCP manifest lists")
        entry = next((f for f in manifest.files if f.path == DCP_METADATA), None)
        source = DCP_METADATA
        if entry is not None and entry.hash and metadata_copy(entry.hash) in names:
            source = metadata_copy(entry.hash)  # this save's own, whatever saved after it
        self.metadata = dcp_metadata.parse(self._read_metadata(source), DCP_METADATA, where=remote.url, expected=entry)
        self._check_layout(manifest)
        try:
            table = metadata_table(self.metadata)
        except Exception as exc:  # noqa: BLE001 - an unpickled object of the wrong shape
            raise CorruptCheckpointError(f"`{remote.url}/{DCP_METADATA}` does not hold DCP metadata ({exc}).",
                                         file=DCP_METADATA) from exc
        self.manifest = manifest
        self.upstream = False
        self.paths = {key[1]: key for key in table if len(key) == 2 and key[0] == MODEL_KEY}
        check_table(manifest, {key[1]: v for key, v in table.items() if key in self.paths.values()},
                    where=f"`{remote.url}`")
        self._verified = False
        self._hashed: dict[str, tuple[str, int]] = {}

    def _read_metadata(self, name: str) -> bytes:
        from enn_nb.storage import read_range, store_error

        obj = self.remote.child(name)
        try:
            size = int(obj.fs.size(obj.path))
        except Exception as exc:  # noqa: BLE001 - the store's own error types
            raise store_error(obj, exc, writing=False) from None
        if size > MAX_DCP_METADATA_BYTES:
            raise CorruptCheckpointError(f"The DCP metadata `{obj.url}` is {size} bytes, over the "
                                         f"{MAX_DCP_METADATA_BYTES}-byte limit.", file=DCP_METADATA)
        return read_range(obj, 0, size)

    def _check_layout(self, manifest: Any) -> None:
        """Every shard the metadata points at is listed (so hashed) and long enough for its records."""
        sizes = {entry.path: entry.nbytes for entry in manifest.files}
        ends: dict[str, int] = {}
        for info in self.metadata.storage_data.values():
            ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
        for name, end in sorted(ends.items()):
            if name not in sizes:
                raise CorruptCheckpointError(
                    f"The DCP metadata of `{self.remote.url}` points at `{escape(name)}`, a file its manifest does not "
                    "list (so it would be read unverified); the checkpoint is damaged or hostile.", file=name)
            plain_name(name, what="The DCP shard file")
            if sizes[name] < end:
                raise CorruptCheckpointError(
                    f"The DCP shard `{escape(name)}` in `{self.remote.url}` has {sizes[name]} bytes in its manifest, "
                    f"its metadata needs {end}: the checkpoint is damaged. Restore it from a good copy.", file=name)

    def _shards(self) -> list[FileEntry]:
        return [entry for entry in self.manifest.files if entry.path != DCP_METADATA]  # checked when opened

    def _storage_reader(self, adopted: dict[str, Any], on_adopt: Any) -> Any:
        streams = _hashing_streams(self.remote, {e.path: e for e in self._shards()}, self._hashed)
        return _safe_reader(self.path, self.metadata, adopted, on_adopt, remote=self.remote, streams=streams)

    def _object_digest(self, entry: FileEntry) -> tuple[str, int]:
        obj = self.remote.child(entry.path)
        try:
            with obj.fs.open(obj.path, "rb", block_size=FILE_CHUNK, cache_type="readahead") as raw:
                return _HashedObject(raw, int(raw.size), split(entry.hash)[0]).finish()
        except FileNotFoundError:
            return "", -1

    def _bad(self, entries: list[FileEntry]) -> list[str]:
        """The names in ``entries`` whose bytes differ from the manifest (hashed during the load, else now)."""
        bad = []
        for entry in entries:
            if not entry.hash:
                continue
            got = self._hashed.get(entry.path) or self._object_digest(entry)
            if got != (entry.hash, entry.nbytes):
                bad.append(entry.path)
        return bad

    def verify_files(self) -> None:
        """Stream and hash every shard (split across ranks under a process group; one collective on each)."""
        if self._verified:
            return
        dist, rank, world = _dist()
        bad = self._bad(self._shards()[rank::world])
        self._refuse_files(sorted({name for part in _all_gather(dist, bad, world) for name in part}))
        self._verified = True

    @contextlib.contextmanager
    def _files_checked_beside(self, verify: bool) -> Iterator[None]:
        """One process: the shards are hashed by the block's own reads, the rest after it (see the module).

        A failed read whose cause is a damaged shard is reported as that shard's mismatch."""
        if not verify or self._verified or _dist()[0] is not None:
            with super()._files_checked_beside(verify):
                yield
            return
        try:
            yield
        except BaseException:
            bad: list[str] = []
            with contextlib.suppress(Exception):  # the store itself failing: the read's own error stands
                bad = self._bad(self._shards())
            self._refuse_files(bad)
            raise
        self._refuse_files(self._bad(self._shards()))
        self._verified = True


def open_dcp(remote: Remote) -> StreamedDcpReader:
    return StreamedDcpReader(remote)
