"""Streamed loads of an enn_nb DCP folder at a URL: torch's own ``FsspecReader``, every shard hashed as it streams.

No local copy is read from: ``dcp.load`` reads each shard object through torch's fsspec reader (records in file
order), front to back by one forward stream per object (one GET body on s3fs/gcsfs); the record DCP
starts on is taken from the stream in one piece (up to :data:`WINDOW` bytes; a larger one's tensor bytes
go straight into their tensor), and the tensors come out of DCP's own ``torch.load`` of each record
(copied into the destination, or kept as they are, as locally: :func:`.dcp._safe_reader`).

Integrity, the same guarantees as a local load (:class:`.dcp.DcpReader`):

- the manifest is the commit marker: a folder without it is refused as incomplete (and one whose
  ``.metadata`` is missing as damaged); ``.metadata`` (this save's own content-addressed copy where the
  store holds one) is checked against the manifest's hash on the very bytes that are unpickled, through
  the same restricted unpickler; every shard it points at must be listed in the manifest;
- **every byte of every shard file** is hashed once, in order, by the forward stream that feeds the
  load: the bytes of the records DCP reads as they pass, and the bytes it does not need (records of
  tensors not asked for, another rank's slices, zip framing, the rest of the object when DCP closes it)
  read and hashed on the way. Files no read opened (the optimizer's shards of a model-only load) are
  streamed and hashed after the load. Reads behind the stream (a large record's zip directory, which
  torch reads before its data; a record read twice when resharding) are ranged requests: the stream
  hashes those bytes when it passes them, not the copy the ranged request returned (the same bytes while
  the object is not overwritten during the load; an overwrite changes the manifest first, and a record
  torn by it fails DCP's own parse or the per-tensor hashes where the manifest has them). A shard whose digest or size
  differs from the manifest is refused with the local error (:meth:`.dcp.DcpReader._refuse_files`: the
  file, the tensors it holds, the URL), before anything reaches the caller: the load reads into fresh
  tensors or a model enn_nb built;
- per-tensor hashes are checked after the load by :func:`.hashing.check_tensors`, as locally.

Under a process group the files are checked first, split across ranks, then read (as a local multi-rank
load does): every rank runs the same collectives whatever it reads, at the cost of reading each shard
twice. An ENN-PyTorch folder (no enn_nb manifest) still goes through the fetched copy.

Caching (issue 25, item 5), as for single files (:mod:`.streamed`): the streams are teed. The manifest
and ``.metadata`` bytes read, and every byte each shard's forward stream passes, are written into a
hidden staging folder beside the cache folder :func:`enn_nb.storage.fetch_many` uses for this version
(keyed by every file's ETag/version, the manifest's included). When the load's file check passed, every
shard was streamed whole (so hashed whole and matched), and the store still holds the same versions and
manifest, the staging folder is renamed into place (:class:`DcpTee`); the next ``open_reader`` finds the
copy complete and opens the local reader over it (verified again), downloading nothing. A failed,
unverified (``verify=False``) or partial load keeps nothing; without a writable cache folder the load
still streams and writes nothing. Under a process group nothing is teed (ranks on one machine share the
cache folder, and no rank may read it while another writes it during the same load): such a load
streams every time, and uses a copy a one-process load kept only when every rank finds it.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import uuid
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb._safeio import MAX_DCP_METADATA_BYTES, escape, plain_name
from enn_nb.errors import CorruptCheckpointError

from . import dcp_metadata
from .base import check_table
from .dcp import MODEL_KEY, DcpReader, _all_gather, _dist, _safe_reader, metadata_table
from .detect import DCP_MANIFEST, DCP_METADATA
from .hashing import FILE_CHUNK, new_hasher, split
from .manifest import FileEntry

if TYPE_CHECKING:
    from enn_nb.storage import Remote

#: a record up to this size is fetched in one request when DCP starts on it (torch.load's many small reads
#: of its header, pickle and directory then cost no request each); a larger one gets its first and last
#: :data:`EDGE` bytes so, and its tensor bytes go straight into the destination in :data:`FILE_CHUNK` requests
WINDOW = 16 << 20
EDGE = 64 << 10


class DcpTee:
    """The hidden staging folder a streamed load of one DCP version fills; placed as the cache copy when complete.

    ``keys``/``target``: the version keys of the folder's files and the cache folder they name
    (:func:`enn_nb.storage.version_keys`). Without a writable cache folder it holds nothing (``folder`` None).
    """

    def __init__(self, remote: Remote, manifest_text: bytes, sources: Mapping[str, str], keys: Mapping[str, str],
                 target: Path) -> None:
        self.remote, self.text, self.sources, self.keys, self.target = remote, manifest_text, dict(sources), dict(keys), target
        self.done: dict[str, int] = {}  # shard -> bytes written, for each shard streamed whole into the folder
        self.folder: Path | None = None
        try:  # the cache is an optimisation: a read-only or full cache folder only costs the next load a fetch
            target.parent.mkdir(parents=True, exist_ok=True)
            folder = target.with_name(f".{target.name}.part-{uuid.uuid4().hex[:8]}")
            folder.mkdir()
            self.folder = folder
            self._finalizer = weakref.finalize(self, shutil.rmtree, folder, True)
            self.put(DCP_MANIFEST, manifest_text)
        except OSError:
            self.drop()

    def put(self, name: str, data: bytes) -> None:
        if self.folder is not None:
            try:
                (self.folder / name).write_bytes(data)
            except OSError:
                self.drop()

    def sink(self, name: str) -> Any:
        """A file to write shard ``name``'s stream into, from its first byte (None: nothing is kept)."""
        if self.folder is None:
            return None
        self.done.pop(name, None)
        try:
            return open(self.folder / name, "wb")  # noqa: SIM115 - closed by _HashedObject.finish/close
        except OSError:
            self.drop()
            return None

    def drop(self) -> None:
        folder, self.folder = self.folder, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def commit(self, shards: list[FileEntry]) -> Path | None:
        """Place the copy if every shard (each with a hash the load checked) was written whole and the store
        still holds the versions read; else drop it. Returns where it was placed."""
        from enn_nb.storage import version_keys

        from .remote import _dcp_manifest_text

        folder = self.folder
        if folder is None:
            return None
        try:
            if any(not e.hash or self.done.get(e.path) != e.nbytes for e in shards):
                raise OSError("a shard was not streamed whole")  # noqa: TRY301 - dropped below
            if _dcp_manifest_text(self.remote) != self.text or version_keys(self.remote, self.sources) != (
                    self.keys, self.target):
                raise OSError("the folder changed on the store")  # noqa: TRY301 - never cache under the old key
            try:
                os.rename(folder, self.target)  # atomic; onto an empty folder too
            except OSError:  # the folder holds files already (fetched, or another process placed them): add the rest
                self.target.mkdir(parents=True, exist_ok=True)
                for f in sorted(folder.iterdir(), key=lambda p: p.name == DCP_MANIFEST):
                    if not (self.target / f.name).is_file():
                        os.replace(f, self.target / f.name)
                shutil.rmtree(folder, ignore_errors=True)
        except Exception:  # noqa: BLE001 - a copy that cannot be completed is just not kept
            self.drop()
            return None
        self.folder = None
        self._finalizer.detach()
        return self.target


class _HashedObject(io.RawIOBase):
    """One shard object, read-only and seekable, hashed front to back by one forward stream.

    The stream is one GET body where the filesystem streams one (fsspec's ``open_async``: s3fs, gcsfs...),
    else sequential reads; every byte it passes is hashed, in order (``algorithm=None``: not hashed, the
    object was already). Reads at or past the stream's position come from it (the bytes between are read
    and hashed on the way: records nobody asked for, zip framing); a read behind it (DCP reading records
    out of order, or a record's zip directory before its data) is one ranged request. :meth:`window`
    fetches the record DCP starts on from the stream in one go, so torch.load's many small reads of
    one record (its directory at the end first) cost no request each. Large reads go straight into the
    caller's buffer in :data:`FILE_CHUNK` pieces: no whole-record bounce buffer.
    """

    def __init__(self, remote: Remote, name: str, raw: Any, size: int, algorithm: str | None,
                 tee: DcpTee | None = None) -> None:
        super().__init__()
        self.tee = tee  # the stream's bytes are written there too (see the module)
        self.sink = tee.sink(name) if tee is not None and algorithm else None
        self.remote, self.name, self.raw, self.size, self.pos = remote, name, raw, size, 0
        self.hasher = new_hasher(algorithm) if algorithm else None
        self.algorithm = algorithm
        self.spos = 0  # the stream's position: every byte before it was hashed
        self._read: Any = None
        self._handles: list[Any] = []
        self.windows: list[tuple[int, bytes]] = []  # (offset, bytes) of the record DCP is reading

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

    def close(self) -> None:
        from .streamed import _close

        _close(self._handles)
        self._close_sink()
        super().close()

    def _close_sink(self) -> bool:
        sink, self.sink = self.sink, None
        if sink is None:
            return False
        try:
            sink.close()
        except OSError:
            return False
        return True

    # -- the forward stream (hashed) and ranged reads behind it --------------------------------------------
    def _open_stream(self) -> None:
        fs, path = self.remote.fs, self.remote.child(self.name).path
        if getattr(fs, "async_impl", False) and getattr(fs, "loop", None) is not None:
            from fsspec.asyn import sync

            from .streamed import _fill_async

            with contextlib.suppress(NotImplementedError):
                f = sync(fs.loop, fs.open_async, path, "rb")
                self._handles.append(f)
                self._read = lambda view: sync(fs.loop, _fill_async, f, view)
                return
        fh = fs.open(path, "rb", block_size=FILE_CHUNK, cache_type="readahead")
        self._handles.append(fh)
        self._read = fh.readinto

    def _stream_into(self, view: memoryview) -> int:
        if self._read is None:
            self._open_stream()
        got = self._read(view) if len(view) else 0
        if self.hasher is not None and got:
            self.hasher.update(view[:got])
        if self.sink is not None and got:
            try:
                self.sink.write(view[:got])
            except OSError:
                self._close_sink()  # not kept: finish() records nothing for it
        self.spos += got
        return got

    def _skip_to(self, target: int) -> None:
        """Stream (and hash) the bytes up to ``target`` that no read asked for."""
        scratch = bytearray(min(FILE_CHUNK, max(1, target - self.spos)))
        while self.spos < target:
            if not self._stream_into(memoryview(scratch)[:min(len(scratch), target - self.spos)]):
                break

    def _ranged(self, pos: int, view: memoryview) -> int:
        got = 0
        while got < len(view):
            self.raw.seek(pos + got)
            data = self.raw.read(min(FILE_CHUNK, len(view) - got))
            if not data:
                break
            view[got:got + len(data)] = data
            got += len(data)
        return got

    def _fetch(self, pos: int, view: memoryview) -> int:
        if pos < self.spos:
            return self._ranged(pos, view)
        self._skip_to(pos)
        got = 0
        while got < len(view):
            n = self._stream_into(view[got:])
            if not n:
                break
            got += n
        return got

    def window(self, offset: int, length: int) -> None:
        """DCP starts on the record ``[offset, offset + length)``: take it from the stream now (a large one:
        its first :data:`EDGE` bytes from the stream, its last by one ranged request)."""
        self.windows = []
        spans = [(offset, length)] if length <= WINDOW else [(offset, EDGE), (offset + length - EDGE, EDGE)]
        for i, (start, n) in enumerate(spans):
            buffer = bytearray(max(0, min(n, self.size - start)))
            view = memoryview(buffer)
            got = self._ranged(start, view) if i else self._fetch(start, view)
            self.windows.append((start, bytes(view[:got])))

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        view = view[:max(0, min(len(view), self.size - self.pos))]
        done = 0
        while done < len(view):
            p = self.pos + done
            hit = next(((s, d) for s, d in self.windows if s <= p < s + len(d)), None)
            if hit is not None:  # already fetched (and hashed)
                s, d = hit
                n = min(len(view) - done, s + len(d) - p)
                view[done:done + n] = memoryview(d)[p - s:p - s + n]
            else:
                n = self._fetch(p, view[done:])
                if not n:
                    break
            done += n
        self.pos += done
        return done

    def read(self, size: int | None = -1) -> bytes:
        n = self.size - self.pos if size is None or size < 0 else min(size, self.size - self.pos)
        buffer = bytearray(max(0, n))
        return bytes(memoryview(buffer)[:self.readinto(buffer)])

    def finish(self) -> tuple[str, int]:
        """(digest, bytes hashed) of the whole object: the part the stream has not passed yet is read now."""
        self._skip_to(self.size)
        assert self.hasher is not None
        if self._close_sink() and self.tee is not None:
            self.tee.done[self.name] = self.spos
        return f"{self.algorithm}:{self.hasher.hexdigest()}", self.spos


def _hashing_streams(remote: Remote, entries: dict[str, FileEntry], results: dict[str, tuple[str, int]],
                     tee: DcpTee | None = None) -> Any:
    """torch's fsspec ``FileSystem`` over ``remote``'s filesystem; each shard opened to be read is hashed
    (once: into ``results``, name -> (digest, bytes)) as DCP reads it."""
    from torch.distributed.checkpoint._fsspec_filesystem import FileSystem

    class HashingStreams(FileSystem):
        @contextlib.contextmanager
        def create_stream(self, path: Any, mode: str) -> Iterator[Any]:
            name = str(path).rstrip("/").rsplit("/", 1)[-1]
            entry = entries.get(name)
            algorithm = split(entry.hash)[0] if entry is not None and entry.hash and name not in results else None
            # no fsspec cache: each read is one ranged request (the windows batch the small ones)
            with remote.fs.open(remote.child(name).path, "rb", cache_type="none") as raw:
                stream = _HashedObject(remote, name, raw, int(raw.size), algorithm, tee)
                try:
                    yield stream
                    if algorithm is not None:
                        results[name] = stream.finish()
                finally:
                    stream.close()

    streams = HashingStreams()
    streams.fs = remote.fs  # the filesystem resolved with the caller's options
    return streams


class StreamedDcpReader(DcpReader):
    """An enn_nb DCP folder at a URL, streamed through torch's ``FsspecReader``; ``tee`` keeps the copy (see the module)."""

    def __init__(self, remote: Remote, *, manifest_text: bytes | None = None, tee: DcpTee | None = None) -> None:
        from .manifest import decode
        from .remote import _dcp_manifest, _names, metadata_copy

        self.remote = remote
        self.path = remote.url  # type: ignore[assignment] - only named in messages: errors name the URL
        self._identity = None  # a store has no rename: nothing swaps the folder under a read (manifest last)
        names = _names(remote)
        # the commit marker (size-capped; refuses a folder without .metadata), as read by open_reader
        manifest = _dcp_manifest(remote) if manifest_text is None else decode(manifest_text, path=remote.url)
        self.tee = tee
        for entry in manifest.files:
            plain_name(entry.path, what="A file the DCP manifest lists")
        entry = next((f for f in manifest.files if f.path == DCP_METADATA), None)
        source = DCP_METADATA
        if entry is not None and entry.hash and metadata_copy(entry.hash) in names:
            source = metadata_copy(entry.hash)  # this save's own, whatever saved after it
        raw_metadata = self._read_metadata(source)
        self.metadata = dcp_metadata.parse(raw_metadata, DCP_METADATA, where=remote.url, expected=entry)
        if tee is not None:
            tee.put(DCP_METADATA, raw_metadata)  # checked against the manifest's hash just now
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
        streams = _hashing_streams(self.remote, {e.path: e for e in self._shards()}, self._hashed, self.tee)
        return _safe_reader(self.path, self.metadata, adopted, on_adopt, remote=self.remote, streams=streams)

    def _object_digest(self, entry: FileEntry) -> tuple[str, int]:
        obj = self.remote.child(entry.path)
        try:
            with obj.fs.open(obj.path, "rb", cache_type="none") as raw:
                stream = _HashedObject(self.remote, entry.path, raw, int(raw.size), split(entry.hash)[0], self.tee)
                try:
                    return stream.finish()
                finally:
                    stream.close()
        except FileNotFoundError:
            return "", -1

    def _bad(self, entries: list[FileEntry]) -> list[str]:
        """The names in ``entries`` whose bytes differ from the manifest (hashed during the load, else now)."""
        bad = []
        for entry in entries:
            if not entry.hash:
                continue
            got = self._hashed.get(entry.path)
            if got is None:
                got = self._object_digest(entry)
                if got[1] >= 0:
                    self._hashed[entry.path] = got  # not hashed again by a later read
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


    def tensors(self, names: list[str], *, verify: bool, into: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """As locally; then the streamed copy is placed in the cache if this load verified every shard, else dropped."""
        try:
            out = super().tensors(names, verify=verify, into=into)
        except BaseException:
            self._end_tee(keep=False)
            raise
        self._end_tee(keep=verify and self._verified)
        return out

    def optimizer_state(self, *, verify: bool) -> dict[str, Any] | None:
        try:
            return super().optimizer_state(verify=verify)
        finally:
            self._end_tee(keep=False)  # tensors() kept or dropped it already; a load of the optimizer alone keeps none

    def _end_tee(self, *, keep: bool) -> None:
        tee, self.tee = self.tee, None
        if tee is not None:
            if keep:
                tee.commit(self._shards())
            else:
                tee.drop()


def open_dcp(remote: Remote) -> StreamedDcpReader:
    return StreamedDcpReader(remote)
