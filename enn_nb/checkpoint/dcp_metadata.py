"""Reading DCP's ``.metadata`` pickle safely, and checking it before DCP touches any shard.

DCP stores its metadata as a pickle. This module unpickles it with an explicit allow-list of
``(module, name)`` pairs: the DCP metadata dataclasses and the few torch values they hold. Names are
matched exactly, never resolved attribute by attribute, so protocol 4's dotted names
(``FileSystemReader.read_metadata.__code__.__class__``) cannot reach ``FunctionType``/``CodeType``.
The object that comes out is then checked field by field (types, sizes, plain shard file names inside
the directory, no stream transforms).

Allow-listed globals are shared by the whole process: a pickle ``BUILD`` aimed at one of them (a class,
a function, an enum member) would set attributes on it (``PosixPath.exists = set``, a poisoned layout
cache). The unpickler is Python's own pure-Python one with its mutating opcodes checked before they
run: ``BUILD`` only on an instance of a DCP metadata dataclass (into its ``__dict__``), and
items only into the lists, dicts and sets the pickle made itself. A refused file changes nothing.

DCP loads a ``BytesStorageMetadata`` entry with ``torch.load(weights_only=False)``; :func:`check_request`
refuses a load before DCP runs unless every requested entry is a tensor entry of the expected dtype
and shape.
"""

from __future__ import annotations

import collections
import importlib
import io
import math
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from enn_nb._safeio import MAX_DCP_METADATA_BYTES, check_regular, confined, escape, plain_name, read_capped
from enn_nb.errors import CorruptCheckpointError, IncompleteCheckpointError, UnsafeCheckpointError

from .detect import DCP_METADATA
from .hashing import digest, split

_DCP_METADATA_MODULE = "torch.distributed.checkpoint.metadata"
_DCP_FILESYSTEM_MODULE = "torch.distributed.checkpoint.filesystem"

#: Every global a DCP ``.metadata`` pickle may name. Nothing else is imported.
ALLOWED_CLASSES: frozenset[tuple[str, str]] = frozenset({
    (_DCP_METADATA_MODULE, "Metadata"),
    (_DCP_METADATA_MODULE, "MetadataIndex"),
    (_DCP_METADATA_MODULE, "StorageMeta"),
    (_DCP_METADATA_MODULE, "TensorProperties"),
    (_DCP_METADATA_MODULE, "TensorStorageMetadata"),
    (_DCP_METADATA_MODULE, "ChunkStorageMetadata"),
    (_DCP_METADATA_MODULE, "BytesStorageMetadata"),
    (_DCP_METADATA_MODULE, "_MEM_FORMAT_ENCODING"),
    (_DCP_FILESYSTEM_MODULE, "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a lookup in a dict of layouts by name
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
})
_DTYPE_NAMES = frozenset({
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "uint16",
    "uint32", "uint64", "bool", "complex64", "complex128", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
    "float8_e5m2fnuz", "double", "float", "half", "long", "int", "short", "cfloat", "cdouble",
})
#: Bounds on what one metadata file may declare (far above any real model, far below a memory bomb).
MAX_ENTRIES = 1_000_000
MAX_DIMS = 16
MAX_ELEMENTS = 1 << 40


def _resolve(module: str, name: str) -> Any:
    if (module, name) == ("torch.serialization", "_get_layout"):
        return _layout_named  # not torch's function: it keeps a cache on itself that a pickle could reach
    return getattr(importlib.import_module(module), name)


def _layout_named(name: str) -> Any:
    """The ``torch.layout`` DCP pickled by name (``"torch.strided"``): what ``torch.serialization._get_layout``
    returns, looked up afresh (never through that function's cache, shared by the process)."""
    import torch

    value = getattr(torch, name.removeprefix("torch."), None) if isinstance(name, str) else None
    if not isinstance(value, torch.layout) or str(value) != name:
        raise UnsafeCheckpointError(f"The DCP `{DCP_METADATA}` file names the layout {escape(repr(name))[:80]}, "
                                    "which is not a torch layout; enn_nb refused it.")
    return value


def _buildable() -> dict[type, bool]:
    """The metadata dataclasses a ``BUILD`` may fill -> whether their own ``__setstate__`` takes the state."""
    import dataclasses

    return {obj: "__setstate__" in vars(obj) for module, name in ALLOWED_CLASSES
            if isinstance(obj := _resolve(module, name), type) and dataclasses.is_dataclass(obj)}


def _refuse_mutation(what: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"The DCP `{DCP_METADATA}` file {what}, which DCP metadata never does: it would change objects shared by "
        "the whole process. enn_nb refused to unpickle it; nothing was changed or executed. The file is hostile: "
        "delete it."
    )


class _AllowListUnpickler(pickle._Unpickler):  # type: ignore[name-defined]  # the Python one: opcodes can be checked
    """Globals through the allow-list only; ``BUILD``, ``SETITEM(S)``, ``APPEND(S)`` and ``ADDITEMS`` only on
    objects this pickle created (instances of the metadata dataclasses, lists, dicts, sets)."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self._buildable = _buildable()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_CLASSES:
            return _resolve(module, name)
        if module == "torch" and name in _DTYPE_NAMES:
            import torch

            value = getattr(torch, name)
            if isinstance(value, torch.dtype):
                return value
        raise UnsafeCheckpointError(
            f"The DCP `{DCP_METADATA}` file references `{escape(module)}.{escape(name)}`, which DCP metadata never "
            "needs; enn_nb refused to unpickle it and nothing was executed. Only load this directory with "
            "`torch.distributed.checkpoint` if you fully trust where it came from."
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(f"The DCP `{DCP_METADATA}` file uses persistent ids; enn_nb refused it.")

    def _load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        kind = type(inst)
        if kind not in self._buildable:  # a class, a function, a module, an enum member, a layout...
            raise _refuse_mutation(f"sets attributes on {_described(inst)}")
        if self._buildable[kind]:  # TensorProperties unpacks a tuple into its own fields
            ok = type(state) is tuple
        else:  # into the instance's __dict__ only; a (dict, slots) pair would go through setattr
            ok = type(state) is dict and all(type(k) is str for k in state)
        if not ok:
            raise _refuse_mutation(f"gives a `{kind.__name__}` the state {escape(repr(state))[:120]}")
        pickle._Unpickler.dispatch[pickle.BUILD[0]](self)  # type: ignore[attr-defined]

    def _into_own_container(opcode: bytes, kinds: tuple[type, ...], at: int) -> Any:  # noqa: N805 - a class-body helper
        original = pickle._Unpickler.dispatch[opcode[0]]  # type: ignore[attr-defined]

        def checked(self: _AllowListUnpickler) -> None:
            if opcode in (pickle.APPEND, pickle.SETITEM):
                target = self.stack[at]
            else:  # after MARK: the target is the last object of the enclosing stack
                target = self.metastack[-1][-1] if self.metastack else None
            if type(target) not in kinds:
                raise _refuse_mutation(f"adds items to {_described(target)}")
            original(self)

        return checked

    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.APPEND[0]] = _into_own_container(pickle.APPEND, (list,), -2)
    dispatch[pickle.APPENDS[0]] = _into_own_container(pickle.APPENDS, (list,), -1)
    dispatch[pickle.SETITEM[0]] = _into_own_container(pickle.SETITEM, (dict, collections.OrderedDict), -3)
    dispatch[pickle.SETITEMS[0]] = _into_own_container(pickle.SETITEMS, (dict, collections.OrderedDict), -1)
    dispatch[pickle.ADDITEMS[0]] = _into_own_container(pickle.ADDITEMS, (set,), -1)
    del _into_own_container


def _described(obj: Any) -> str:
    import types

    if isinstance(obj, type):
        return f"the class `{obj.__module__}.{obj.__qualname__}`"
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType)):
        return f"the function `{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}`"
    if isinstance(obj, types.ModuleType):
        return f"the module `{obj.__name__}`"
    return f"a shared `{type(obj).__name__}` object"


def unpickle(data: bytes, *, where: str) -> Any:
    """The object in a DCP metadata pickle, through the allow-list, then type-checked.

    Raises:
        UnsafeCheckpointError: a global outside the allow-list, or an opcode that would modify an object
            the pickle did not create (a class, a function: see :class:`_AllowListUnpickler`).
        CorruptCheckpointError: not a pickle, or not shaped like DCP metadata.
    """
    try:
        obj = _AllowListUnpickler(io.BytesIO(data)).load()
    except UnsafeCheckpointError:
        raise
    except RecursionError:
        raise CorruptCheckpointError(f"`{where}` nests too deeply to be DCP metadata; it is damaged or hostile.",
                                     file=where) from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise CorruptCheckpointError(f"`{where}` is damaged ({type(exc).__name__}: {escape(str(exc)[:200])}).",
                                     file=where) from None
    check_metadata(obj, where=where)
    return obj


def read(directory: Path, name: str = DCP_METADATA, *, expected: Any = None) -> Any:
    """The checked DCP metadata of ``directory`` (``.metadata``, or a rank-local ``__N.metadata``, size-limited).

    ``expected`` (a manifest ``FileEntry``) is checked against the very bytes about to be unpickled:
    read once, so a file changed between a hash check and the parse cannot slip through.

    Raises:
        IncompleteCheckpointError: no ``.metadata``.
        CorruptCheckpointError: the bytes differ from ``expected``.
        UnsafeCheckpointError, CorruptCheckpointError: see :func:`unpickle`.
    """
    file = directory / name
    if not file.exists() and not file.is_symlink():
        raise IncompleteCheckpointError(
            f"`{directory}` has no DCP `{DCP_METADATA}` file: the save did not finish or the directory was damaged."
        )

    confined(directory, name, what="The DCP metadata file")
    data = read_capped(file, MAX_DCP_METADATA_BYTES, what="The DCP metadata file")
    return parse(data, name, where=str(directory), expected=expected)


def parse(data: bytes, name: str, *, where: str, expected: Any = None) -> Any:
    """The checked DCP metadata in ``data`` (the bytes of ``name`` in the folder ``where``: a path or a URL).

    ``expected`` (a manifest ``FileEntry``) is checked against these very bytes before they are unpickled.
    """
    if expected is not None:  # the manifest's FileEntry: the bytes checked are the bytes unpickled
        if len(data) != expected.nbytes or digest(data, split(expected.hash)[0]) != expected.hash:
            raise CorruptCheckpointError(
                f"The hash of `{name}` in `{where}` does not match the manifest: the checkpoint is damaged. "
                "Restore it from a good copy.", file=name)
    return unpickle(data, where=f"{where}/{name}")


# -- the shape of the metadata ------------------------------------------------------------------------
def _bad(where: str, what: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"`{where}` does not hold valid DCP metadata: {what}. The checkpoint is damaged "
                                  "or hostile; restore it from a good copy.", file=where)


def _is_int(value: Any, low: int = 0) -> bool:
    return type(value) is int and value >= low


def _check_size(value: Any, where: str, what: str) -> None:
    import torch

    if not isinstance(value, torch.Size) or len(value) > MAX_DIMS or not all(_is_int(d) for d in value):
        raise _bad(where, f"{what} is not a shape of at most {MAX_DIMS} non-negative sizes")
    if math.prod(value) > MAX_ELEMENTS:
        raise _bad(where, f"{what} {list(value)} declares more than {MAX_ELEMENTS} elements")


def check_metadata(md: Any, *, where: str) -> None:
    """Raise CorruptCheckpointError unless ``md`` is a DCP ``Metadata`` with well-typed, bounded fields."""
    import torch
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        StorageMeta,
        TensorProperties,
        TensorStorageMetadata,
    )

    if type(md) is not Metadata:
        raise _bad(where, f"the pickle holds a {type(md).__name__}, not DCP `Metadata`")
    entries = md.state_dict_metadata
    if not isinstance(entries, dict) or len(entries) > MAX_ENTRIES:
        raise _bad(where, "`state_dict_metadata` is not a dictionary of a sane size")
    for fqn, entry in entries.items():
        if not isinstance(fqn, str):
            raise _bad(where, f"a state-dict key is a {type(fqn).__name__}")
        if type(entry) is BytesStorageMetadata:
            continue  # allowed to exist; never loaded (see check_request)
        if type(entry) is not TensorStorageMetadata:
            raise _bad(where, f"entry `{escape(fqn)}` is a {type(entry).__name__}")
        props = entry.properties
        if (type(props) is not TensorProperties or not isinstance(props.dtype, torch.dtype)
                or props.layout is not torch.strided):
            raise _bad(where, f"entry `{escape(fqn)}` has invalid tensor properties")
        _check_size(entry.size, where, f"the size of `{escape(fqn)}`")
        if not isinstance(entry.chunks, list) or len(entry.chunks) > MAX_ENTRIES:
            raise _bad(where, f"the chunks of `{escape(fqn)}` are not a list")
        for chunk in entry.chunks:
            if type(chunk) is not ChunkStorageMetadata:
                raise _bad(where, f"a chunk of `{escape(fqn)}` is a {type(chunk).__name__}")
            _check_size(chunk.offsets, where, f"a chunk offset of `{escape(fqn)}`")
            _check_size(chunk.sizes, where, f"a chunk size of `{escape(fqn)}`")
            if len(chunk.offsets) != len(entry.size) or len(chunk.sizes) != len(entry.size) or any(
                    o + s > d for o, s, d in zip(chunk.offsets, chunk.sizes, entry.size)):
                raise _bad(where, f"a chunk of `{escape(fqn)}` lies outside the tensor")
    storage = md.storage_data
    if not isinstance(storage, dict) or len(storage) > MAX_ENTRIES:
        raise _bad(where, "`storage_data` is not a dictionary of a sane size")
    for index, info in storage.items():
        if type(index) is not MetadataIndex or not isinstance(index.fqn, str):
            raise _bad(where, "a `storage_data` key is not a MetadataIndex")
        if type(info) is not _StorageInfo:
            raise _bad(where, f"the storage of `{escape(index.fqn)}` is a {type(info).__name__}")
        plain_name(info.relative_path, what=f"The DCP storage entry of `{escape(index.fqn)}`")
        if not (_is_int(info.offset) and _is_int(info.length)):
            raise _bad(where, f"the storage of `{escape(index.fqn)}` has an invalid offset or length")
        if info.transform_descriptors:
            raise _bad(where, f"the storage of `{escape(index.fqn)}` uses stream transforms "
                              f"{escape(repr(info.transform_descriptors))[:100]}, which enn_nb does not read")
    planner = md.planner_data
    if planner is not None:
        if not isinstance(planner, dict):
            raise _bad(where, "`planner_data` is not a dictionary")
        for fqn, path in planner.items():
            if not isinstance(fqn, str) or not isinstance(path, (tuple, list)) or not all(
                    isinstance(p, (str, int)) for p in path):
                raise _bad(where, "`planner_data` holds something other than key paths")
    if md.storage_meta is not None and type(md.storage_meta) is not StorageMeta:
        raise _bad(where, "`storage_meta` is not DCP's StorageMeta")


def written_by_enn_nb(md: Any) -> bool:
    """True when enn_nb's DCP writer made this metadata: it saves into a temporary sibling directory
    (``.<name>.enn-tmp-<pid>x<token>``), which DCP records as the checkpoint id, or it holds enn_nb's
    optimizer entries (``optimizer.__optimizer__/...``)."""
    from enn_nb._fs import TEMP_MARK

    from .tensors import OPTIMIZER_PREFIX

    checkpoint_id = getattr(md.storage_meta, "checkpoint_id", None) if md.storage_meta is not None else None
    if checkpoint_id is not None and TEMP_MARK in str(checkpoint_id).replace("\\", "/").rsplit("/", 1)[-1]:
        return True
    return any(fqn.startswith(f"optimizer.{OPTIMIZER_PREFIX}") for fqn in md.state_dict_metadata)


def check_files(md: Any, directory: Path, *, allowed: set[str] | None = None) -> None:
    """Every shard file the metadata points at is a regular file inside ``directory`` that holds its slices.

    ``allowed``: the file names a manifest lists (and hashes); a shard outside it is refused, since
    it would be read unverified.

    Raises:
        CorruptCheckpointError: a shard is outside the directory, not listed, not a regular file, or short.
    """

    ends: dict[str, int] = {}
    for info in md.storage_data.values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    for name, end in sorted(ends.items()):
        if allowed is not None and name not in allowed:
            raise CorruptCheckpointError(
                f"The DCP metadata of `{directory}` points at `{escape(name)}`, a file its manifest does not list "
                "(so it would be read unverified); the checkpoint is damaged or hostile.", file=name)
        path = confined(directory, name, what="The DCP shard file")
        st = check_regular(path, what="The DCP shard file")
        if st.st_size < end:
            raise CorruptCheckpointError(
                f"The DCP shard `{escape(name)}` in `{directory}` has {st.st_size} bytes, its metadata needs {end}: the "
                "checkpoint is truncated. Restore it from a good copy.", file=name)


def fqns_of(md: Any, keys: Iterable[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    """Nested state-dict path -> DCP's flattened key (``("model", "fc.weight")`` -> ``model.fc.weight``),
    for each of ``keys``; a path the planner data does not list flattens with dots.

    The planner data is inverted once per call: looking each key up in it costs N² for N tensors.
    """
    listed = {tuple(str(p) for p in path): fqn for fqn, path in (md.planner_data or {}).items()}
    return {key: listed.get(key, ".".join(key)) for key in keys}


def check_request(md: Any, dest: Mapping[tuple[str, ...], Any], *, where: str) -> None:
    """Refuse a DCP load unless every requested entry is a tensor entry of the destination's dtype and shape.

    DCP would read a ``BytesStorageMetadata`` entry with ``torch.load(weights_only=False)``: a pickle
    that runs code. This runs before DCP reads anything.

    Raises:
        UnsafeCheckpointError: a requested entry is a bytes (pickled object) entry.
        CorruptCheckpointError: a requested entry is missing or of another dtype/shape.
    """
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    fqns = fqns_of(md, dest)
    entries = md.state_dict_metadata
    for key, tensor in dest.items():
        fqn = fqns[key]
        entry = entries.get(fqn)
        name = "/".join(key)
        if entry is None:
            raise CorruptCheckpointError(f"The DCP checkpoint `{where}` has no entry for `{escape(name)}`; it is "
                                         "damaged. Restore it from a good copy.", tensor=key[-1])
        if type(entry) is not TensorStorageMetadata:
            raise UnsafeCheckpointError(
                f"The DCP checkpoint `{where}` stores `{escape(name)}` as a pickled object "
                f"({type(entry).__name__}), not a tensor; DCP would unpickle it with `weights_only=False`, so "
                "enn_nb refused to load it and nothing was read."
            )
        want_dtype, want_shape = tensor.dtype, tuple(tensor.shape)
        if entry.properties.dtype != want_dtype or tuple(entry.size) != want_shape:
            raise CorruptCheckpointError(
                f"The DCP checkpoint `{where}` stores `{escape(name)}` as {entry.properties.dtype}"
                f"{list(entry.size)}, but {want_dtype}{list(want_shape)} is expected; the checkpoint is damaged "
                "or does not belong to this manifest.", tensor=key[-1])
