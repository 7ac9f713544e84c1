"""DCP directories: ``torch.distributed.checkpoint`` files plus the enn_nb manifest as commit marker.

Layout::

    <dir>/.metadata                 DCP's own metadata (a pickle; read here with a restricted unpickler)
    <dir>/__<rank>_<n>.distcp       each rank's shard files
    <dir>/enn_nb.manifest.json      written last, after every rank finished: the commit marker

The state is saved as ``{"model": {name: tensor}, "optimizer": {"__optimizer__/...": tensor}}``
(the same ``model`` nesting as ENN-PyTorch). Every rank writes into one temporary sibling directory
(its name agreed through a broadcast); each file is hashed while it is written; rank 0 gathers the
hashes, writes the manifest, fsyncs and renames the directory into place after a barrier. Works
without a process group (one process) and under ``torchrun`` with any backend; parameters may be
DTensors (FSDP2 ``fully_shard`` or ``distribute_tensor``), and loading reshards to whatever the
destination holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb._safeio import MAX_JSON_BYTES, confined, plain_name, read_capped
from enn_nb.errors import (
    CheckpointError,
    EnnError,
    CorruptCheckpointError,
    IncompleteCheckpointError,
    UnsafeCheckpointError,
)

from . import dcp_metadata, upstream
from .atomic import (
    check_replaceable,
    fsync_dir,
    new_token,
    remove_path,
    replace_dir,
    sweep_stale_temps,
    temp_path,
    write_error,
)
from .base import SaveRequest, build_manifest, check_table
from .detect import DCP_MANIFEST, DCP_METADATA, dcp_metadata_name, upstream_meta_file
from .hashing import HashingStream, HashPool, check_tensors, file_matches, split
from .ranks import all_gather as _all_gather, broadcast as _broadcast, process_group as _dist
from .manifest import FileEntry, Manifest, decode, encode
from .selfcheck import Recording
from .tensors import dtype_name, expected_nbytes, is_dtensor, join_tree, torch_dtype

if TYPE_CHECKING:
    import torch

    from enn_nb.storage import Remote

MODEL_KEY = "model"
OPTIMIZER_KEY = "optimizer"
WRITER_THREADS = max(1, min(4, os.cpu_count() or 1))


# -- process group helpers ------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        # DCP warns on every single-process call and about overwriting; both are expected here.
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        warnings.filterwarnings("ignore", message=".*assuming the intent is to.*")
        warnings.filterwarnings("ignore", message=".*Detected an existing checkpoint.*")
        yield


# -- no CRC-32 while DCP writes ------------------------------------------------------------------------------
@contextlib.contextmanager
def _without_zip_crc() -> Iterator[None]:
    """Let ``torch.save`` write zip records without a CRC-32 on this thread, for the block.

    DCP writes each item with ``torch.save``, which computes a CRC-32 of every byte: a quarter of
    ``dcp.save``'s time here. The BLAKE3 hash of every file already covers every byte, torch.load does
    not check CRCs (zip tools do: ``unzip -t`` reports them), and enn_nb's .pt writer skips them too.
    torch keeps the switch per thread: each DCP writer thread turns it off around its own file.
    """
    from torch.serialization import get_crc32_options, set_crc32_options

    before = get_crc32_options()
    set_crc32_options(False)
    try:
        yield
    finally:
        set_crc32_options(before)


# -- hashing while DCP writes -------------------------------------------------------------------------------
def _hashing_writer(path: Path) -> Any:
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.filesystem import FileSystem

    class HashingFileSystem(FileSystem):
        def __init__(self) -> None:
            super().__init__()
            self.hashes: dict[str, tuple[str, int]] = {}  # file name -> (digest, bytes)
            # DCP's extra writer threads drop their exceptions (a full disk there would commit a
            # checkpoint with missing shards): every failure is recorded here and raised after the save.
            self.errors: list[BaseException] = []

        @contextlib.contextmanager
        def create_stream(self, path: Any, mode: str) -> Iterator[Any]:
            try:
                with super().create_stream(path, mode) as stream:
                    if "w" not in mode:
                        yield stream
                        return
                    hashing = HashingStream(stream)
                    with _without_zip_crc():  # on the writer thread that serializes into this file
                        yield hashing
            except Exception as exc:  # noqa: BLE001 - raised by write() once dcp.save returns
                # Swallowed here so DCP's worker threads do not print a traceback each; the save
                # then fails as a whole, with this error, before anything is committed.
                self.errors.append(exc)
                return
            self.hashes[Path(path).name] = (hashing.digest(), hashing.count)

        def rename(self, path: Any, new_path: Any) -> None:
            super().rename(path, new_path)
            entry = self.hashes.pop(Path(path).name, None)
            if entry is not None:
                self.hashes[Path(new_path).name] = entry

    # Several writer threads (one file each): every file is hashed by the thread that writes it, so
    # hashing spreads over cores like the writing does.
    writer = FileSystemWriter(path, sync_files=True, thread_count=WRITER_THREADS)
    writer.fs = HashingFileSystem()
    return writer


# -- writing -------------------------------------------------------------------------------------------
def write(final: Path | Remote, request: SaveRequest) -> Manifest:
    """Save ``request`` as a DCP directory at ``final`` (collective when a process group is up).

    At a URL (no rename on the store) the files are written beside the old ones through torch's fsspec
    writer, under names of their own (``__<rank>_<token>_<n>.distcp``; DCP's ``.metadata`` is also kept
    as ``.metadata-<digest>``), and the new manifest, written last, switches readers over. Until then,
    or when the save dies, the old manifest still names a complete checkpoint; the files no manifest
    names any more are removed after the commit (see :func:`enn_nb.checkpoint.remote.metadata_copy`).
    """
    import torch.distributed.checkpoint as dcp

    remote = not isinstance(final, Path)
    dist, rank, world = _dist()
    token = _broadcast(dist, new_token() if rank == 0 else None)
    started = time.time()
    tmp = final if remote else temp_path(final, token)
    structure, opt_tensors = request.optimizer_parts()
    state: dict[str, Any] = {MODEL_KEY: dict(request.state)}
    if opt_tensors:
        state[OPTIMIZER_KEY] = dict(opt_tensors)

    refusal = None
    if rank == 0:
        try:
            if remote:
                from .atomic import check_replaceable_remote

                check_replaceable_remote(final, directory=True)
            else:
                check_replaceable(final, directory=True)
        except CheckpointError as exc:
            refusal = str(exc)
    refusal = _broadcast(dist, refusal)
    if refusal is not None:
        raise CheckpointError(refusal)

    # Tensor-level hashes where this rank holds whole tensors (DTensor shards only have file hashes).
    local = {name: t for name, t in {**request.state, **opt_tensors}.items() if not is_dtensor(t)}
    pool = HashPool().submit_all(local) if rank == 0 else None
    error: BaseException | None = None
    text = None
    try:
        if rank == 0 and not remote:
            final.parent.mkdir(parents=True, exist_ok=True)
        writer = _hashing_fsspec_writer(final, token) if remote else _hashing_writer(tmp)
        if isinstance(request.self_check, Recording):
            request.self_check.start()  # dcp.save writes and fsyncs on its own threads: run beside it all
        try:
            with _quiet():
                dcp.save(state, storage_writer=writer, no_dist=dist is None)
        except BaseException as exc:
            _raise_recorded(writer.fs.errors)
            _raise_os_error_of(exc)  # DCP wraps a failed mkdir (read-only filesystem) in its own exception
            raise
        _raise_recorded(writer.fs.errors)
        files = {}
        for part in _all_gather(dist, writer.fs.hashes, world):
            files.update(part)
        hashes = pool.results() if pool is not None else {}
        if rank == 0:
            manifest = build_manifest(
                "dcp", request, hashes, optimizer_structure=structure, optimizer_tensors=opt_tensors,
                files=[FileEntry(name, n, digest) for name, (digest, n) in sorted(files.items())],
            )
            text = encode(manifest)
            if remote:
                from .remote import commit_dcp

                commit_dcp(final, manifest, text)
            else:
                _write_manifest(tmp, text)
                replace_dir(tmp, final)  # the commit: `final` switches from the old checkpoint to this one
                sweep_stale_temps(final, started)
    except BaseException as exc:  # noqa: BLE001 - re-raised below, after telling the other ranks
        error = exc
        if pool is not None:
            pool.close()
        if rank == 0 and not remote:
            with contextlib.suppress(OSError):  # on a read-only filesystem even this fails: the first error counts
                remove_path(tmp)
    status = _broadcast(dist, ("error", f"{type(error).__name__}: {error}") if error else ("ok", text))
    if error is not None:
        if remote and isinstance(error, Exception) and not isinstance(error, EnnError):
            from enn_nb.storage import store_error

            raise store_error(final, error, writing=True) from None
        if isinstance(error, OSError) and not isinstance(error, CheckpointError):
            raise write_error(final, error) from error
        raise error
    if status[0] != "ok":
        raise CheckpointError(f"Rank 0 failed to commit the DCP checkpoint `{final}`: {status[1]}")
    manifest = decode(status[1], path=str(final))
    if dist is not None:
        dist.barrier()
    return manifest


def _hashing_fsspec_writer(final: Remote, token: str) -> Any:
    """torch's own FsspecWriter onto ``final``'s filesystem, hashing every file as it streams up.

    Shard files are named ``__<rank>_<token>_<n>.distcp``: a new save never overwrites the files the
    committed manifest names.
    """
    import dataclasses

    from torch.distributed.checkpoint._fsspec_filesystem import FileSystem, FsspecWriter
    from torch.distributed.checkpoint.filesystem import _StoragePrefix

    class Writer(FsspecWriter):
        def prepare_global_plan(self, plans: list[Any]) -> list[Any]:
            return [dataclasses.replace(plan, storage_data=_StoragePrefix(f"__{i}_{token}_"))
                    for i, plan in enumerate(plans)]

    class HashingFsspec(FileSystem):
        def __init__(self) -> None:
            super().__init__()
            self.hashes: dict[str, tuple[str, int]] = {}
            self.errors: list[BaseException] = []

        @contextlib.contextmanager
        def create_stream(self, path: Any, mode: str) -> Iterator[Any]:
            if "w" not in mode:
                with super().create_stream(path, mode) as stream:
                    yield stream
                return
            try:
                with super().create_stream(path, mode) as stream:
                    hashing = HashingStream(stream)
                    with _without_zip_crc():
                        yield hashing
            except Exception as exc:  # noqa: BLE001 - raised by write() once dcp.save returns (see _hashing_writer)
                self.errors.append(exc)
                return
            self.hashes[str(path).rstrip("/").rsplit("/", 1)[-1]] = (hashing.digest(), hashing.count)

        def rename(self, path: Any, new_path: Any) -> None:
            super().rename(path, new_path)
            entry = self.hashes.pop(str(path).rsplit("/", 1)[-1], None)
            if entry is not None:
                self.hashes[str(new_path).rsplit("/", 1)[-1]] = entry

    # sync_files: a store has no fsync (torch would fall back to a machine-wide sync per file)
    writer = Writer(final.url, sync_files=False, thread_count=WRITER_THREADS, **dict(final.options))
    hashing = HashingFsspec()
    hashing.fs = final.fs  # the filesystem resolved with the caller's options, not a second one
    writer.fs = hashing
    return writer


class ReplacedWhileReading(CorruptCheckpointError):
    """A concurrent save swapped the DCP directory between two reads; reading again sees the new one."""


#: A writer saving in a tight loop can swap the directory under several reads in a row; backing off a
#: little longer each time lets the reader land between two saves (about 1 s in all at most).
REPLACED_RETRIES = 20


def retry_when_replaced(fn: Any) -> Any:
    """Run ``fn`` again when a DCP directory was replaced under it: readers see the old or the new one."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(REPLACED_RETRIES):
            try:
                return fn(*args, **kwargs)
            except ReplacedWhileReading:
                if attempt == REPLACED_RETRIES - 1:
                    raise
                time.sleep(0.005 * attempt)
        raise AssertionError("unreachable")

    return wrapper


def _identity(path: Path) -> tuple[int, ...] | None:
    """Which directory ``path`` names now: inode numbers get reused, so change times count too."""
    try:
        st = os.stat(path)
        marker = os.stat(path / DCP_MANIFEST) if (path / DCP_MANIFEST).exists() else st
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns, marker.st_ino, marker.st_mtime_ns, marker.st_ctime_ns)


def _raise_recorded(errors: list[BaseException]) -> None:
    """Raise the first write error DCP's threads recorded (an OSError first: it names the real cause)."""
    for exc in errors:  # torch's zip writer wraps the OSError of a short write in a RuntimeError
        seen: BaseException | None = exc
        while seen is not None:
            if isinstance(seen, OSError):
                raise seen
            seen = seen.__cause__ or seen.__context__
    if errors:
        raise errors[0]


def _raise_os_error_of(exc: BaseException) -> None:
    """Raise the OSError inside a DCP ``CheckpointException`` (a rank's failure, or its cause), if any."""
    from torch.distributed.checkpoint.api import CheckpointException

    if not isinstance(exc, CheckpointException):
        return
    for failure, _trace in exc.failures.values():
        seen: BaseException | None = failure
        while seen is not None:
            if isinstance(seen, OSError):
                raise seen from None
            seen = seen.__cause__ or seen.__context__


def _write_manifest(directory: Path, text: str) -> None:
    path = directory / DCP_MANIFEST
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(directory)


# -- the restricted reader ---------------------------------------------------------------------------------
def read_metadata(path: Path, manifest: Manifest | None = None) -> Any:
    """DCP's metadata object, unpickled through an allow-list and checked (see :mod:`.dcp_metadata`).

    With the enn_nb ``manifest``, the pickle's bytes are first checked against its hash, whatever
    ``verify`` says: a damaged one would otherwise surface as a confusing unpickling error.

    Raises:
        IncompleteCheckpointError: the file is missing.
        UnsafeCheckpointError: it references code.
        CorruptCheckpointError: it is damaged.
    """
    name = metadata_name(path) or DCP_METADATA
    files = manifest.files if manifest is not None else []
    return dcp_metadata.read(path, name, expected=next((f for f in files if f.path == name), None))


def metadata_name(path: Path) -> str | None:
    """``.metadata``, or the rank-local ``__N.metadata`` an upstream training checkpoint has instead."""
    try:
        return dcp_metadata_name(os.listdir(path))
    except OSError:
        return None


def _safe_reader(path: Path | str, metadata: Any, adopted: dict[str, Any] | None = None,
                 on_adopt: Callable[[str, Any], None] | None = None, *, remote: Remote | None = None,
                 streams: Any = None) -> Any:
    """A FileSystemReader that serves the metadata already checked and never reads pickled bytes entries.

    ``adopted`` maps DCP keys (``model.fc.weight``) to ``None``: those entries are kept as the tensors
    DCP's own ``torch.load`` of each record returns, written back into the dict, instead of being copied
    into a destination buffer (the destination given to ``dcp.load`` for them is a placeholder).
    This saves a fresh buffer and one copy per tensor when the destination is a new state dict.
    Only whole-tensor records without transforms qualify (see :func:`_adoptable`). ``on_adopt(key,
    tensor)`` is called as each arrives (to hash it while the next one is read).

    With ``remote``, the reader is torch's own ``FsspecReader`` of that URL, reading through ``streams``
    (a torch fsspec ``FileSystem``: :mod:`.streamed_dcp` passes one that hashes every shard as it streams).
    """

    import torch
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader
    from torch.distributed.checkpoint.planner import LoadItemType

    class SafeReader(FileSystemReader if remote is None else FsspecReader):  # type: ignore[misc]
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            from torch.distributed.checkpoint.metadata import StorageMeta

            # The object checked by DcpReader, not a second read of the file (which could have changed).
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

        def read_data(self, plan: Any, planner: Any) -> Any:
            if any(item.type == LoadItemType.BYTE_IO for item in plan.items):
                raise UnsafeCheckpointError(
                    f"DCP was about to unpickle a bytes entry of `{path}` (`weights_only=False`); enn_nb refused it."
                )
            if adopted:
                self._adopt([item for item in plan.items if item.dest_index.fqn in adopted])
                plan = dataclasses.replace(plan, items=[i for i in plan.items if i.dest_index.fqn not in adopted])
            if remote is not None:  # in file order: a streamed shard is read front to back (see .streamed_dcp)
                order = {k: (v.relative_path, v.offset) for k, v in self.storage_data.items()}
                plan = dataclasses.replace(plan, items=sorted(plan.items, key=lambda i: order[i.storage_index]))
            return super().read_data(plan, planner) if plan.items else _done()

        def _slice_file(self, file: Any, sinfo: Any) -> Any:
            if hasattr(file, "window"):  # a streamed shard (see .streamed_dcp): the record in one request
                file.window(sinfo.offset, sinfo.length)
            return super()._slice_file(file, sinfo)

        def _adopt(self, items: list[Any]) -> None:
            by_file: dict[str, list[Any]] = {}
            for item in items:
                by_file.setdefault(self.storage_data[item.storage_index].relative_path, []).append(item)
            for relative_path, group in by_file.items():
                with self.fs.create_stream(self.fs.concat_path(self.path, relative_path), "rb") as stream:
                    for item in sorted(group, key=lambda i: self.storage_data[i.storage_index].offset):
                        record = self._slice_file(stream, self.storage_data[item.storage_index])
                        tensor = torch.load(record, map_location="cpu", weights_only=True)
                        adopted[item.dest_index.fqn] = tensor
                        if on_adopt is not None:
                            on_adopt(item.dest_index.fqn, tensor)

    if remote is None:
        return SafeReader(path)
    reader = SafeReader(remote.url, **dict(remote.options))
    reader.fs = streams
    return reader


def _done() -> Any:
    from torch.futures import Future

    fut: Future = Future()
    fut.set_result(None)
    return fut


def _adoptable(metadata: Any) -> set[str]:
    """DCP keys stored as one record holding the whole tensor, without transforms: DCP's own load of
    that record is the tensor, so it can be kept instead of copied (see :func:`_safe_reader`)."""
    records: dict[str, list[Any]] = {}
    for index, info in (metadata.storage_data or {}).items():
        records.setdefault(index.fqn, []).append(info)
    out = set()
    for fqn, entry in metadata.state_dict_metadata.items():
        chunks = getattr(entry, "chunks", None) or []
        infos = records.get(fqn, [])
        if (len(chunks) == 1 and not any(chunks[0].offsets) and tuple(chunks[0].sizes) == tuple(entry.size)
                and len(infos) == 1 and not getattr(infos[0], "transform_descriptors", None)):
            out.add(fqn)
    return out


def metadata_table(metadata: Any) -> dict[tuple[str, ...], tuple[str, tuple[int, ...]]]:
    """DCP path (``("model", "fc.weight")``) -> (dtype, global shape) of every stored tensor."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    planner = getattr(metadata, "planner_data", None) or {}
    out = {}
    for fqn, md in metadata.state_dict_metadata.items():
        if not isinstance(md, TensorStorageMetadata):
            continue  # pickled non-tensor objects: never loaded (DCP would unpickle them unsafely)
        path = planner.get(fqn)
        key = tuple(str(p) for p in path) if path else tuple(fqn.split(".", 1)) if fqn.startswith(MODEL_KEY + ".") else (fqn,)
        out[key] = (dtype_name(md.properties.dtype), tuple(int(d) for d in md.size))
    return out


class DcpReader:
    """An open DCP checkpoint directory (enn_nb manifest, or ENN-PyTorch ``meta.json``)."""

    #: ``tensors(into=...)`` reads straight into the given tensors (see ``api._in_place_targets``)
    fills_in_place = True

    def __init__(self, path: Path) -> None:
        # A concurrent save swaps the whole directory in one rename: when what was read does not
        # fit together and the directory was swapped meanwhile, read the new one from the start.
        for attempt in range(3):
            before = _identity(path)
            try:
                self._open(path)
                return
            except CheckpointError:
                if attempt == 2 or _identity(path) == before:
                    raise

    def _open(self, path: Path) -> None:
        self.path = path
        self._identity = _identity(path)
        manifest = _read_manifest(path)
        self.metadata = read_metadata(path, manifest)
        _check_layout(path, manifest, self.metadata)
        try:
            table = metadata_table(self.metadata)
        except Exception as exc:  # noqa: BLE001 - an unpickled object of the wrong shape
            raise CorruptCheckpointError(f"`{path / DCP_METADATA}` does not hold DCP metadata ({exc}).",
                                         file=DCP_METADATA) from exc
        if manifest is not None:
            self.manifest = manifest
            self.upstream = False
            self.paths = {key[1]: key for key in table if len(key) == 2 and key[0] == MODEL_KEY}
            check_table(self.manifest, {key[1]: v for key, v in table.items() if key in self.paths.values()},
                        where=f"`{path}`")
        elif upstream_meta_file(path) is not None:
            if dcp_metadata.written_by_enn_nb(self.metadata):
                # enn_nb wrote these shards and its commit marker is gone: damaged, whatever meta.json a
                # folder above holds (a planted `{}` two folders up must not revive it as upstream's)
                raise IncompleteCheckpointError(
                    f"`{path}` was written by enn_nb but its `{DCP_MANIFEST}` commit marker is missing: the save did "
                    "not finish or the directory was damaged, so its content cannot be trusted. Restore it from a "
                    "good copy or save again.")

            nested = all(len(key) == 2 and key[0] == MODEL_KEY for key in table)
            self.paths = {(key[1] if nested else ".".join(key)): key for key in table}
            names = {name: table[key] for name, key in self.paths.items()}
            self.manifest = upstream.from_dcp(path, names, metadata_name(path) or DCP_METADATA)
            self.upstream = True
        else:
            raise IncompleteCheckpointError(f"`{path}` has no `{DCP_MANIFEST}` commit marker: the save did not finish.")
        self._verified = False

    @property
    def verifiable(self) -> bool:
        return not self.upstream

    def verify_files(self) -> None:
        """Check every file's hash (split across ranks when a process group is up).

        Each file is read once, in chunks hashed while cached (BLAKE3 spreads each chunk over all
        cores). A load runs it beside its own read (:meth:`_files_checked_beside`).
        """
        if self._verified or self.upstream:
            return
        dist, rank, world = _dist()
        for entry in self.manifest.files:
            confined(self.path, entry.path, what="A file the DCP manifest lists")
        mine = self.manifest.files[rank::world]
        ok = [_file_matches(self.path / entry.path, entry) for entry in mine]
        bad = [entry.path for entry, good in zip(mine, ok) if not good]
        self._refuse_files(sorted({name for part in _all_gather(dist, bad, world) for name in part}))
        self._verified = True

    def _refuse_files(self, bad: list[str]) -> None:
        """Raise :class:`CorruptCheckpointError` naming the shard files in ``bad`` (if any) and what they hold."""
        if bad:
            holds = self._tensors_in(bad[0])
            raise CorruptCheckpointError(
                f"The hash of shard file(s) {', '.join(f'`{b}`' for b in bad)} in `{self.path}` does not match "
                f"the manifest: the checkpoint is damaged{f' (`{bad[0]}` holds {holds})' if holds else ''}. "
                "Restore it from a good copy, or pass `verify=False` to load it anyway (not recommended).",
                file=bad[0],
                tensor=None,
            )

    def _tensors_in(self, file: str) -> str:
        names = sorted({idx.fqn.removeprefix(MODEL_KEY + ".") for idx, info in (self.metadata.storage_data or {}).items()
                        if getattr(info, "relative_path", None) == file})
        return ", ".join(f"`{n}`" for n in names[:8]) + (" ..." if len(names) > 8 else "")

    def _load(self, dest: dict[tuple[str, ...], Any],
              fresh: Mapping[tuple[str, ...], tuple[tuple[int, ...], str]] | None = None,
              pool: HashPool | None = None, hashes: Mapping[tuple[str, ...], str | None] | None = None,
              ) -> dict[tuple[str, ...], Any]:
        """Read into the tensors of ``dest`` and into new tensors for ``fresh`` (key -> shape, dtype); returns those.

        With ``pool``, each new tensor whose key has a digest in ``hashes`` is queued for hashing (under
        the key's last part) as soon as it is read.
        """
        import torch
        import torch.distributed.checkpoint as dcp

        fresh = fresh or {}
        fqns = dcp_metadata.fqns_of(self.metadata, fresh)
        adoptable = _adoptable(self.metadata) if fresh else set()
        adopted: dict[str, Any] = {}
        made: dict[tuple[str, ...], Any] = {}
        for key, (shape, dtype) in fresh.items():
            fqn = fqns[key]
            if fqn in adoptable and all(shape):  # DCP reads nothing for an empty tensor
                # a placeholder of the right shape over one element: DCP plans with it, never writes it
                adopted[fqn] = None
                made[key] = torch.empty((), dtype=torch_dtype(dtype)).expand(shape)
            else:
                made[key] = torch.empty(shape, dtype=torch_dtype(dtype))
        dest = {**dest, **made}
        on_adopt = None
        if pool is not None and hashes:
            wanted = {fqns[key]: (key[-1], hashes[key]) for key in made if hashes.get(key)}

            def on_adopt(fqn: str, tensor: Any) -> None:
                if fqn in wanted:
                    name, digest = wanted[fqn]
                    pool.put(name, tensor, split(digest)[0])
        nested: dict[str, Any] = {}
        for key, tensor in dest.items():
            node = nested
            for part in key[:-1]:
                node = node.setdefault(part, {})
            node[key[-1]] = tensor
        dcp_metadata.check_request(self.metadata, dest, where=str(self.path))
        from torch.distributed.checkpoint.api import CheckpointException

        dist, _rank, _world = _dist()
        try:
            with _quiet():
                dcp.load(nested, storage_reader=self._storage_reader(adopted, on_adopt), no_dist=dist is None)
        except (UnsafeCheckpointError, CorruptCheckpointError):
            raise
        except CheckpointException as exc:
            # A BaseException in torch: an `except Exception` in the user's code would not stop it. The
            # first rank's own error is the cause; ours (an unsafe entry) pass through as they are.
            cause = next((failure for failure, _trace in exc.failures.values()), exc)
            if isinstance(cause, (UnsafeCheckpointError, CorruptCheckpointError)):
                raise cause from None
            raise CorruptCheckpointError(f"Reading the DCP checkpoint `{self.path}` failed: "
                                         f"{type(cause).__name__}: {cause}", file=str(self.path)) from cause
        except Exception as exc:  # noqa: BLE001 - DCP wraps read failures in its own exception types
            raise CorruptCheckpointError(f"Reading the DCP checkpoint `{self.path}` failed: {exc}",
                                         file=str(self.path)) from exc
        for key, tensor in made.items():
            if fqns[key] in adopted:
                made[key] = self._adopted(key, adopted[fqns[key]], tensor)
        return made

    def _storage_reader(self, adopted: dict[str, Any], on_adopt: Callable[[str, Any], None] | None) -> Any:
        """The DCP storage reader ``_load`` hands to ``dcp.load`` (a URL's reader streams, see :mod:`.streamed_dcp`)."""
        return _safe_reader(self.path, self.metadata, adopted, on_adopt)

    def _adopted(self, key: tuple[str, ...], tensor: Any, placeholder: Any) -> Any:
        import torch

        if (type(tensor) is not torch.Tensor or tensor.dtype != placeholder.dtype
                or tuple(tensor.shape) != tuple(placeholder.shape)):
            got = f"{tensor.dtype} {tuple(tensor.shape)}" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise CorruptCheckpointError(
                f"The DCP record of `{'/'.join(key)}` in `{self.path}` holds {got}, not the {placeholder.dtype} "
                f"{tuple(placeholder.shape)} its metadata declares: the checkpoint is damaged or forged. "
                "Restore it from a good copy.", tensor=key[-1])
        return tensor.detach()  # a record of a parameter comes back with requires_grad set

    @contextlib.contextmanager
    def _detect_replacement(self) -> Iterator[None]:
        """Raise :class:`ReplacedWhileReading` when a concurrent save swapped the directory during the block.

        Checked after a failure and after a success alike: with ``verify=False`` a read that went on in
        the swapped-in directory would otherwise return its tensors silently (possibly some of each save).
        """
        try:
            yield
        except CheckpointError as exc:
            if _identity(self.path) != self._identity:
                raise self._replaced() from exc
            raise
        if _identity(self.path) != self._identity:
            raise self._replaced()

    def _replaced(self) -> ReplacedWhileReading:
        return ReplacedWhileReading(
            f"`{self.path}` was replaced by a concurrent save while being read; read it again.",
            file=str(self.path))

    def tensors(self, names: list[str], *, verify: bool, into: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        with self._detect_replacement():
            return self._tensors(names, verify=verify, into=into)

    def optimizer_state(self, *, verify: bool) -> dict[str, Any] | None:
        with self._detect_replacement():
            return self._optimizer_state(verify=verify)

    def _tensors(self, names: list[str], *, verify: bool, into: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        table = {t.name: t for t in self.manifest.tensors}
        into = into or {}
        fresh = {self.paths[n]: (tuple(table[n].shape), table[n].dtype) for n in names if n not in into}
        _check_declared_bytes(self.metadata, {key: {"shape": shape, "dtype": dtype} for key, (shape, dtype)
                                              in fresh.items()}, self.path)
        check = verify and not self.upstream
        digests = {name: table[name].hash for name in names}
        with self._files_checked_beside(verify), HashPool() as pool:
            made = self._load({self.paths[n]: into[n] for n in names if n in into}, fresh, pool=pool if check else None,
                              hashes={self.paths[n]: digest for n, digest in digests.items()})
            hashed = pool.results()
        out = {name: into[name] if name in into else made[self.paths[name]] for name in names}
        if check:
            check_tensors(out, digests, what=f"`{self.path}`", hashed=hashed)
        return out

    def _optimizer_state(self, *, verify: bool) -> dict[str, Any] | None:
        opt = self.manifest.optimizer
        if not opt:
            return None
        _check_declared_bytes(self.metadata, {(OPTIMIZER_KEY, t["name"]): t for t in opt["tensors"]}, self.path)
        with self._files_checked_beside(verify), HashPool() as pool:
            made = self._load({}, {(OPTIMIZER_KEY, t["name"]): (tuple(t["shape"]), t["dtype"]) for t in opt["tensors"]},
                              pool=pool if verify else None,
                              hashes={(OPTIMIZER_KEY, t["name"]): t.get("hash") for t in opt["tensors"]})
            hashed = pool.results()
        tensors = {key[1]: tensor for key, tensor in made.items()}
        if verify:
            check_tensors(tensors, {t["name"]: t.get("hash") for t in opt["tensors"]},
                          what=f"the optimizer state of `{self.path}`", hashed=hashed)
        return join_tree(opt["structure"], tensors)

    @contextlib.contextmanager
    def _files_checked_beside(self, verify: bool) -> Iterator[None]:
        """Check the shard files' hashes on a second thread while the block reads them.

        The load and the file check run side by side instead of one after the other (the load's reads
        and the check's find the same pages; from a cold cache, whichever comes second finds them
        cached). Nothing reaches the caller's model before both end (the block reads into fresh tensors or into
        a model enn_nb built); a damaged shard is reported by name even when the read failed first on
        it. Under a process group the check gathers across ranks, so it runs first, on this thread.
        """
        if not verify or self._verified or self.upstream:
            yield
            return
        if _dist()[0] is not None:
            self.verify_files()
            yield
            return
        failure: list[BaseException] = []

        def check() -> None:
            try:
                self.verify_files()
            except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
                failure.append(exc)

        thread = threading.Thread(target=check, name="enn_nb-dcp-verify", daemon=True)
        thread.start()
        try:
            yield
        except BaseException:
            thread.join()
            if failure:
                raise failure[0] from None
            raise
        thread.join()
        if failure:
            raise failure[0]


# -- checks on what a directory declares (paths, sizes) before anything is read -------------------------
def _read_manifest(path: Path) -> Manifest | None:
    """The enn_nb manifest of a DCP directory (size-capped, a regular file inside it), or None."""
    file = path / DCP_MANIFEST
    if not file.exists() and not file.is_symlink():
        return None
    confined(path, DCP_MANIFEST, what="The DCP manifest")
    return decode(read_capped(file, MAX_JSON_BYTES, what="The DCP manifest"), path=str(path))


def _check_layout(path: Path, manifest: Manifest | None, metadata: Any) -> None:
    """Every listed and every referenced file is a plain name inside ``path``; shards hold their slices."""
    allowed = None
    if manifest is not None:
        for entry in manifest.files:
            plain_name(entry.path, what="A file the DCP manifest lists")
        allowed = {entry.path for entry in manifest.files}
    dcp_metadata.check_files(metadata, path, allowed=allowed)


def _check_declared_bytes(metadata: Any, wanted: Mapping[tuple[str, ...], Mapping[str, Any]], path: Path) -> None:
    """Refuse to allocate a tensor larger than the shard bytes the metadata stores for it."""
    stored: dict[str, int] = {}
    for index, info in (metadata.storage_data or {}).items():
        stored[index.fqn] = stored.get(index.fqn, 0) + info.length
    fqns = dcp_metadata.fqns_of(metadata, wanted)
    for key, entry in wanted.items():
        need = expected_nbytes(str(entry["dtype"]), entry["shape"])
        have = stored.get(fqns[key], 0)
        if need > have:
            raise CorruptCheckpointError(
                f"`{'/'.join(key)}` in `{path}` is declared as {need} bytes but its shards hold only {have}; the "
                "checkpoint is damaged or forged. Nothing was allocated.", tensor=key[-1])


def _file_matches(path: Path, entry: FileEntry) -> bool:
    try:
        if not path.is_file():
            return False
    except OSError:
        return False
    return file_matches(path, entry.nbytes, entry.hash)
