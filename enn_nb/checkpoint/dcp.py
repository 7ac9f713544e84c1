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
import os
import pickle
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb.errors import (
    CheckpointError,
    CorruptCheckpointError,
    IncompleteCheckpointError,
    UnsafeCheckpointError,
)

from .atomic import check_replaceable, fsync_dir, remove_path, replace_dir, temp_path
from .base import SaveRequest, build_manifest, check_table
from .detect import DCP_MANIFEST, DCP_METADATA, UPSTREAM_DCP_META
from .hashing import HashingStream, HashPool, file_matches
from .manifest import FileEntry, Manifest, decode, encode
from .tensors import dtype_name, join_tree

if TYPE_CHECKING:
    import torch

MODEL_KEY = "model"
OPTIMIZER_KEY = "optimizer"
WRITER_THREADS = max(1, min(4, os.cpu_count() or 1))


# -- process group helpers ------------------------------------------------------------------------------
def _dist() -> tuple[Any, int, int]:
    """(torch.distributed or None, rank, world size)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist, dist.get_rank(), dist.get_world_size()
    return None, 0, 1


def _broadcast(dist: Any, value: Any) -> Any:
    if dist is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _all_gather(dist: Any, value: Any, world: int) -> list[Any]:
    if dist is None:
        return [value]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, value)
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        # DCP warns on every single-process call and about overwriting; both are expected here.
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        warnings.filterwarnings("ignore", message=".*assuming the intent is to.*")
        warnings.filterwarnings("ignore", message=".*Detected an existing checkpoint.*")
        yield


# -- hashing while DCP writes -------------------------------------------------------------------------------
def _hashing_writer(path: Path) -> Any:
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.filesystem import FileSystem

    class HashingFileSystem(FileSystem):
        def __init__(self) -> None:
            super().__init__()
            self.hashes: dict[str, tuple[str, int]] = {}  # file name -> (digest, bytes)

        @contextlib.contextmanager
        def create_stream(self, path: Any, mode: str) -> Iterator[Any]:
            with super().create_stream(path, mode) as stream:
                if "w" not in mode:
                    yield stream
                    return
                hashing = HashingStream(stream)
                yield hashing
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
def write(final: Path, request: SaveRequest) -> Manifest:
    """Save ``request`` as a DCP directory at ``final`` (collective when a process group is up)."""
    import torch.distributed.checkpoint as dcp

    dist, rank, world = _dist()
    token = _broadcast(dist, os.urandom(6).hex() if rank == 0 else None)
    tmp = temp_path(final, token)
    structure, opt_tensors = request.optimizer_parts()
    state: dict[str, Any] = {MODEL_KEY: dict(request.state)}
    if opt_tensors:
        state[OPTIMIZER_KEY] = dict(opt_tensors)

    refusal = None
    if rank == 0:
        try:
            check_replaceable(final, directory=True)
        except CheckpointError as exc:
            refusal = str(exc)
    refusal = _broadcast(dist, refusal)
    if refusal is not None:
        raise CheckpointError(refusal)

    # Tensor-level hashes where this rank holds whole tensors (DTensor shards only have file hashes).
    local = {name: t for name, t in {**request.state, **opt_tensors}.items() if not _is_dtensor(t)}
    pool = HashPool().submit_all(local) if rank == 0 else None
    error: BaseException | None = None
    text = None
    try:
        if rank == 0:
            final.parent.mkdir(parents=True, exist_ok=True)
        writer = _hashing_writer(tmp)
        with _quiet():
            dcp.save(state, storage_writer=writer, no_dist=dist is None)
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
            _write_manifest(tmp, text)
            replace_dir(tmp, final)  # the commit: `final` switches from the old checkpoint to this one
    except BaseException as exc:  # noqa: BLE001 - re-raised below, after telling the other ranks
        error = exc
        if pool is not None:
            pool.close()
        if rank == 0:
            remove_path(tmp)
    status = _broadcast(dist, ("error", f"{type(error).__name__}: {error}") if error else ("ok", text))
    if error is not None:
        raise error
    if status[0] != "ok":
        raise CheckpointError(f"Rank 0 failed to commit the DCP checkpoint `{final}`: {status[1]}")
    manifest = decode(status[1], path=str(final))
    if dist is not None:
        dist.barrier()
    return manifest


def _write_manifest(directory: Path, text: str) -> None:
    path = directory / DCP_MANIFEST
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(directory)


def _is_dtensor(t: Any) -> bool:
    return type(t).__name__ == "DTensor"


# -- the restricted reader ---------------------------------------------------------------------------------
_SAFE_EXACT = {
    ("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"), ("pathlib", "Path"), ("builtins", "set"), ("builtins", "frozenset"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata`` allowing only DCP's metadata classes, torch dtypes and paths."""

    def find_class(self, module: str, name: str) -> Any:
        import torch

        if (module, name) in _SAFE_EXACT:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith("torch.distributed.checkpoint."):
            obj = super().find_class(module, name)
            if isinstance(obj, type):  # dataclasses and enums only: no callable that could run code
                return obj
        raise UnsafeCheckpointError(
            f"The DCP `{DCP_METADATA}` file references `{module}.{name}`, which a checkpoint's metadata "
            "never needs; enn_nb refused to unpickle it and nothing was executed."
        )


def read_metadata(path: Path) -> Any:
    """DCP's metadata object, unpickled safely.

    Raises:
        IncompleteCheckpointError: the file is missing.
        UnsafeCheckpointError: it references code.
        CorruptCheckpointError: it is damaged.
    """
    file = path / DCP_METADATA
    if not file.exists():
        raise IncompleteCheckpointError(
            f"`{path}` has no DCP `{DCP_METADATA}` file: the save did not finish or the directory was damaged."
        )
    try:
        with open(file, "rb") as fh:
            return _MetadataUnpickler(fh).load()
    except UnsafeCheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise CorruptCheckpointError(f"`{file}` is damaged ({type(exc).__name__}: {exc}).", file=str(file)) from exc


def _safe_reader(path: Path) -> Any:
    from torch.distributed.checkpoint import FileSystemReader

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            from torch.distributed.checkpoint.metadata import StorageMeta

            metadata = read_metadata(Path(self.path))
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(path)


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

    def __init__(self, path: Path) -> None:
        self.path = path
        manifest_file = path / DCP_MANIFEST
        manifest = decode(manifest_file.read_bytes(), path=str(path)) if manifest_file.exists() else None
        if manifest is not None:
            # The small `.metadata` pickle is checked before it is parsed, whatever `verify` says:
            # a damaged one would otherwise surface as a confusing unpickling error.
            entry = next((f for f in manifest.files if f.path == DCP_METADATA), None)
            if entry is not None and (path / DCP_METADATA).exists() and not _file_matches(path / DCP_METADATA, entry):
                raise CorruptCheckpointError(
                    f"The hash of `{DCP_METADATA}` in `{path}` does not match the manifest: the checkpoint is "
                    "damaged. Restore it from a good copy.",
                    file=DCP_METADATA,
                )
        self.metadata = read_metadata(path)
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
        elif (path / UPSTREAM_DCP_META).exists():
            from . import upstream

            nested = all(len(key) == 2 and key[0] == MODEL_KEY for key in table)
            self.paths = {(key[1] if nested else ".".join(key)): key for key in table}
            names = {name: table[key] for name, key in self.paths.items()}
            self.manifest = upstream.from_dcp(path, names)
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
        cores); the load that follows finds the bytes in the page cache.
        """
        if self._verified or self.upstream:
            return
        dist, rank, world = _dist()
        mine = self.manifest.files[rank::world]
        ok = [_file_matches(self.path / entry.path, entry) for entry in mine]
        bad = [entry.path for entry, good in zip(mine, ok) if not good]
        bad = sorted({name for part in _all_gather(dist, bad, world) for name in part})
        if bad:
            holds = self._tensors_in(bad[0])
            raise CorruptCheckpointError(
                f"The hash of shard file(s) {', '.join(f'`{b}`' for b in bad)} in `{self.path}` does not match "
                f"the manifest: the checkpoint is damaged{f' (`{bad[0]}` holds {holds})' if holds else ''}. "
                "Restore it from a good copy, or pass `verify=False` to load it anyway (not recommended).",
                file=bad[0],
                tensor=None,
            )
        self._verified = True

    def _tensors_in(self, file: str) -> str:
        names = sorted({idx.fqn.removeprefix(MODEL_KEY + ".") for idx, info in (self.metadata.storage_data or {}).items()
                        if getattr(info, "relative_path", None) == file})
        return ", ".join(f"`{n}`" for n in names[:8]) + (" ..." if len(names) > 8 else "")

    def _load(self, dest: dict[tuple[str, ...], Any]) -> None:
        import torch.distributed.checkpoint as dcp

        nested: dict[str, Any] = {}
        for key, tensor in dest.items():
            node = nested
            for part in key[:-1]:
                node = node.setdefault(part, {})
            node[key[-1]] = tensor
        dist, _rank, _world = _dist()
        try:
            with _quiet():
                dcp.load(nested, storage_reader=_safe_reader(self.path), no_dist=dist is None)
        except (UnsafeCheckpointError, CorruptCheckpointError):
            raise
        except Exception as exc:  # noqa: BLE001 - DCP wraps read failures in its own exception types
            raise CorruptCheckpointError(f"Reading the DCP checkpoint `{self.path}` failed: {exc}",
                                         file=str(self.path)) from exc

    def tensors(self, names: list[str], *, verify: bool, into: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        import torch

        if verify:
            self.verify_files()
        table = {t.name: t for t in self.manifest.tensors}
        out: dict[str, Any] = {}
        for name in names:
            if into is not None and name in into:
                out[name] = into[name]
            else:
                entry = table[name]
                out[name] = torch.empty(entry.shape, dtype=getattr(torch, entry.dtype))
        self._load({self.paths[name]: tensor for name, tensor in out.items()})
        return out

    def optimizer_state(self, *, verify: bool) -> dict[str, Any] | None:
        import torch

        opt = self.manifest.optimizer
        if not opt:
            return None
        if verify:
            self.verify_files()
        tensors = {t["name"]: torch.empty(t["shape"], dtype=getattr(torch, t["dtype"])) for t in opt["tensors"]}
        self._load({(OPTIMIZER_KEY, name): t for name, t in tensors.items()})
        return join_tree(opt["structure"], tensors)


def _file_matches(path: Path, entry: FileEntry) -> bool:
    return file_matches(path, entry.nbytes, entry.hash)
