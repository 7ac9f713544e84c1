"""The .pt/.pth format: a torch.save zip that ``torch.load(weights_only=True)`` reads, manifest inside.

Layout of the pickled payload (a plain dict, safe for the weights-only unpickler)::

    {"enn_nb.manifest": "<manifest JSON>", "state_dict": {name: tensor}, "optimizer": optimizer.state_dict()}

The zip is written by torch's own ``PyTorchFileWriter`` with the tensor records *first* and
``data.pkl`` last, so the tensors are hashed (BLAKE3, in a background thread) while they are written
and the manifest holding those hashes is pickled after. ``torch.load`` finds records by name, so any
order loads, with or without ``mmap=True``. No CRC-32 is computed (torch.load ignores it; the tensor
hashes and the manifest's self-hash cover every byte that is read), which saves a pass over the bytes.
Tensors go from their own memory to the file (``write_record`` of each storage) and come back as a
memory map (``torch.load(mmap=True)``) that is hashed in place: no intermediate buffer either way.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb.errors import CorruptCheckpointError, NotACheckpointError, UnsafeCheckpointError

from . import upstream
from .atomic import atomic_file
from .base import SaveRequest, build_manifest, check_table, sync_while_recording
from .hashing import HashPool, check_tensors
from .manifest import Manifest, decode, encode
from .tensors import (
    OPTIMIZER_PREFIX,
    cpu_contiguous,
    dtype_name,
    join_tree,
    split_tree,
)

if TYPE_CHECKING:
    import torch

MANIFEST_KEY = "enn_nb.manifest"
PICKLE_PROTOCOL = 2  # what torch.save uses


# -- writing ---------------------------------------------------------------------------------------
def write(final: Path, request: SaveRequest) -> Manifest:
    """Write ``request`` to ``final`` atomically and return the manifest stored in it."""
    state = {name: cpu_contiguous(t) for name, t in request.state.items()}
    structure, opt_raw = request.optimizer_parts()
    opt_tensors = {name: cpu_contiguous(t) for name, t in opt_raw.items()}
    optimizer = join_tree(structure, opt_tensors) if request.optimizer_state is not None else None

    def payload(manifest_text: str) -> dict[str, Any]:
        out: dict[str, Any] = {MANIFEST_KEY: manifest_text, "state_dict": state}
        if optimizer is not None:
            out["optimizer"] = optimizer
        return out

    _, storages = _pickle(payload(""))
    everything = {**state, **opt_tensors}
    # Hash in the order the storages are written (see HashPool.submit_all).
    position = {storage._cdata: int(key) for key, storage in storages.items()}
    order = sorted(everything, key=lambda n: position.get(everything[n].untyped_storage()._cdata, 0))
    with atomic_file(final) as tmp, HashPool() as pool:
        pool.submit_all(everything, order)
        writer, handle = _open_writer(tmp)
        try:
            for key, storage in storages.items():
                writer.write_record(f"data/{key}", storage, storage.nbytes())
                handle.raise_if_failed()  # stop at the first short write instead of writing the rest
            sync_while_recording(handle.raw, request)
            hashes = pool.results()
            manifest = build_manifest(
                "pt", request, hashes, optimizer_structure=structure, optimizer_tensors=opt_tensors
            )
            data, again = _pickle(payload(encode(manifest)))
            if list(again) != list(storages):  # the same objects pickle to the same storage keys
                raise RuntimeError("enn_nb internal error: storage keys changed between pickling passes")
            writer.write_record("data.pkl", data, len(data))
            _write_torch_records(writer)
            writer.write_end_of_file()
        finally:
            del writer  # the C++ writer closes its file when released: before the fsync and rename
            handle.close()
        handle.raise_if_failed()
    manifest.path = str(final)
    return manifest


def _pickle(obj: Any) -> tuple[bytes, dict[str, Any]]:
    """Pickle like torch.save: tensors reference storages by key; returns (bytes, key -> storage)."""
    import torch
    from torch.serialization import location_tag, normalize_storage_type

    storages: dict[str, Any] = {}
    keys: dict[int, str] = {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, o: Any) -> Any:
            if isinstance(o, torch.storage.TypedStorage):
                storage, storage_type, numel = o._untyped_storage, getattr(torch, o._pickle_storage_type()), o._size()
            elif torch.is_storage(o):
                storage, storage_type, numel = o, normalize_storage_type(type(o)), o.nbytes()
            else:
                return None
            key = keys.setdefault(storage._cdata, str(len(keys)))
            storages[key] = storage
            return ("storage", storage_type, key, location_tag(storage), numel)

    buf = io.BytesIO()
    Pickler(buf, protocol=PICKLE_PROTOCOL).dump(obj)
    return buf.getvalue(), storages


class _GuardedFile:
    """The file torch's C++ zip writer writes through: a failed write is recorded, never raised into C++.

    An error raised inside ``PyTorchFileWriter`` (disk full, file too large) reaches a C++ destructor
    that cannot throw and aborts the interpreter (a notebook kernel dies). Here a failing ``write``
    stores the OSError, reports the bytes as written and drops everything after it; the caller raises
    the stored error once the writer is released, and the atomic write removes the temporary file.
    """

    def __init__(self, path: Path) -> None:
        self.raw = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        view = memoryview(data)
        if self.error is None and not self.raw.closed:
            try:
                self.raw.write(view)
            except OSError as exc:
                self.error = exc
            except Exception as exc:  # noqa: BLE001 - nothing may propagate into the C++ writer
                self.error = OSError(f"{type(exc).__name__}: {exc}")
        return view.nbytes  # also after close: the writer's destructor may finish an abandoned file late

    def flush(self) -> None:
        if self.error is None and not self.raw.closed:
            try:
                self.raw.flush()
            except Exception as exc:  # noqa: BLE001 - see write()
                self.error = exc if isinstance(exc, OSError) else OSError(str(exc))

    def close(self) -> None:
        try:
            self.raw.close()
        except OSError as exc:
            self.error = self.error or exc

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error  # atomic_file turns it into a CheckpointWriteError naming the checkpoint


def _open_writer(path: Path) -> tuple[Any, _GuardedFile]:
    import torch
    from torch.serialization import _get_storage_alignment

    handle = _GuardedFile(path)
    # No CRC-32: the hash of every tensor and the manifest's self-hash cover the content, and a CRC
    # pass over every byte would cost more than the BLAKE3 one. torch.load does not check CRCs; zip
    # tools do (`unzip -t` reports them). The writer hands _GuardedFile memoryviews of the storages:
    # no copy on the way to the file.
    return torch._C.PyTorchFileWriter(handle, False, _get_storage_alignment()), handle


def _write_torch_records(writer: Any) -> None:
    from torch.serialization import _get_storage_alignment

    writer.write_record(".format_version", "1", 1)
    alignment = str(_get_storage_alignment())
    writer.write_record(".storage_alignment", alignment, len(alignment))
    writer.write_record("byteorder", sys.byteorder, len(sys.byteorder))


# -- reading ---------------------------------------------------------------------------------------
def torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``, memory-mapped when possible; errors become enn_nb errors.

    Raises:
        UnsafeCheckpointError: the pickle references code (names it); nothing was executed.
        CorruptCheckpointError: truncated or damaged file.
        NotACheckpointError: not something torch.load reads.
    """
    import torch
    from torch.serialization import safe_globals
    from torch.torch_version import TorchVersion

    _check_zip_bounds(path)
    try:
        # ENN-PyTorch stores `pytorch_version` as a TorchVersion, a `str` subclass without code of its
        # own: allowed for this load only, so files work in processes that never imported enn_torch.
        with safe_globals([TorchVersion]):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap can only be used" not in str(exc):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as exc:
        unsafe = unsafe_globals(path)
        if unsafe:
            raise UnsafeCheckpointError(
                f"`{path}` contains a pickle that would import and run {', '.join(f'`{g}`' for g in unsafe[:5])}; "
                "enn_nb loads with `weights_only=True` and refused it, nothing was executed. Only load it "
                "with `torch.load(weights_only=False)` if you fully trust where it came from."
            ) from None
        raise CorruptCheckpointError(f"`{path}` cannot be unpickled ({_first_line(exc)}); the file is damaged.",
                                     file=str(path)) from exc
    except RuntimeError as exc:
        text = str(exc)
        if "zip archive" in text or "central directory" in text or "PytorchStreamReader" in text:
            raise CorruptCheckpointError(
                f"`{path}` is truncated or damaged: torch cannot read its zip structure ({_first_line(exc)}).",
                file=str(path),
            ) from None
        raise CorruptCheckpointError(f"`{path}` cannot be read: {_first_line(exc)}", file=str(path)) from exc
    except Exception as exc:  # noqa: BLE001 - a damaged pickle/zip fails in many ways inside torch.load
        raise CorruptCheckpointError(f"`{path}` is truncated or damaged ({type(exc).__name__}: {exc}).",
                                     file=str(path)) from exc


#: The pickle inside a .pt (``data.pkl``): the manifest and the optimizer structure, never the tensors.
MAX_PICKLE_BYTES = 256 * 1024 * 1024


def _check_zip_bounds(path: Path) -> None:
    """Refuse a .pt zip whose records are compressed (torch never compresses) or claim more than the file holds.

    torch's zip reader inflates a deflated ``data.pkl``: half a megabyte can unpack into gigabytes of
    pickle before any check runs.

    Raises:
        CorruptCheckpointError: a compressed or oversized record.
    """
    with open(path, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":
            return  # legacy torch.save (not a zip): nothing to inflate
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except Exception:  # noqa: BLE001 - a damaged zip: torch.load reports it below with its own words
        return
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.file_size > size or (
                info.filename.endswith("data.pkl") and info.file_size > MAX_PICKLE_BYTES):
            raise CorruptCheckpointError(
                f"`{path}` holds the record `{info.filename}` {'compressed' if info.compress_type else 'stored'} as "
                f"{info.file_size} bytes in a {size}-byte file; torch.save never writes that, so the file is damaged "
                "or built to exhaust memory. enn_nb refused to read it.", file=str(path))


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    interesting = [line for line in lines if "GLOBAL" in line or "miniz" in line or "failed" in line]
    return (interesting or lines or [type(exc).__name__])[0][:300]


def unsafe_globals(path: Path) -> list[str]:
    """Globals a pickle in ``path`` would import that the weights-only unpickler does not allow.

    Scanned statically (``pickletools``), never executed.
    """
    try:
        data = _pickle_bytes(path)
    except Exception:  # noqa: BLE001 - a damaged zip: the caller reports it as damaged
        return []
    found = _scan_globals(data)
    try:
        from torch import _weights_only_unpickler as wo

        allowed = set(wo._get_allowed_globals()) | set(wo._get_user_allowed_globals())
    except (ImportError, AttributeError):  # private API moved: fall back to torch's own modules
        allowed = {g for g in found if g.startswith(("torch.", "collections.OrderedDict"))}
    return sorted(g for g in found if g not in allowed)


def _pickle_bytes(path: Path) -> bytes:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
            if name is None:
                return b""
            return zf.read(name)
    return path.read_bytes()


def _scan_globals(data: bytes) -> set[str]:
    """``module.name`` of every GLOBAL/STACK_GLOBAL in the pickle(s) at the start of ``data``."""
    found: set[str] = set()
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        strings: list[str] = []
        memo: dict[int, Any] = {}
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "STRING",
                               "BINSTRING", "SHORT_BINSTRING"):
                    strings.append(str(arg))
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = strings[-1] if strings else None
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                    memo[int(arg)] = strings[-1] if strings else None
                elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                    value = memo.get(int(arg))
                    if isinstance(value, str):
                        strings.append(value)
                elif op.name in ("GLOBAL", "INST"):
                    found.add(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.add(f"{strings[-2]}.{strings[-1]}")
        except (ValueError, EOFError, KeyError, IndexError):
            break  # not (or no longer) a pickle: stop scanning
    return found


class PtReader:
    """An open .pt/.pth checkpoint (enn_nb manifest, or an upstream ENN-PyTorch payload)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        payload = torch_load(path)
        self._container_checked = False
        if isinstance(payload, Mapping) and MANIFEST_KEY in payload:
            text = payload[MANIFEST_KEY]
            if not isinstance(text, str):
                raise CorruptCheckpointError(f"`{path}`'s `{MANIFEST_KEY}` entry is not a JSON string.", file=str(path))
            self.manifest = decode(text, path=str(path))
            state = payload.get("state_dict")
            if not isinstance(state, Mapping):
                raise CorruptCheckpointError(f"`{path}` has a manifest but no `state_dict` entry.", file=str(path))
            self.state = dict(state)
            self.raw_optimizer = payload.get("optimizer")
            self.upstream = False
            check_table(self.manifest, _table(self.state), where=f"`{path}`")
        else:
            stray = [k for k, v in payload.items() if isinstance(v, str) and '"schema":"enn_nb.checkpoint/' in v[:40]] \
                if isinstance(payload, Mapping) else []
            if stray:  # an enn_nb manifest under a damaged key: do not fall back to unverified loading
                raise CorruptCheckpointError(
                    f"`{path}` holds an enn_nb manifest under the key {stray[0]!r} instead of `{MANIFEST_KEY}`: "
                    "the file is damaged. Restore it from a good copy.",
                    file=str(path),
                )
            if not upstream.is_upstream_pt(payload):
                raise not_a_checkpoint(path, payload)
            self.manifest, self.state, self.raw_optimizer = upstream.from_pt_payload(payload, path)
            self.upstream = True
        self._unchecked_records = 0

    @property
    def verifiable(self) -> bool:
        # enn_nb files: tensor hashes. Upstream ones: the zip's CRC-32s, unless written without them.
        return not (self.upstream and self._unchecked_records)

    def _check_container(self) -> None:
        """Check the zip structure: every local header, and for upstream files, which carry no
        hashes, the CRC-32 of every record (enn_nb writes no CRCs: its hashes cover the content)."""
        if self._container_checked:
            return
        with open(self.path, "rb") as fh:
            is_zip = fh.read(4) == b"PK\x03\x04"
        try:
            if is_zip:  # legacy (pre-zip) torch.save files have no CRCs to check
                with zipfile.ZipFile(self.path) as zf:
                    for info in zf.infolist():
                        with zf.open(info) as record:  # opening validates the local header
                            if self.upstream and info.CRC == 0 and info.file_size:
                                self._unchecked_records += 1  # saved with torch's CRC-32 turned off
                            elif self.upstream:
                                while record.read(1 << 24):
                                    pass
        except Exception as exc:  # noqa: BLE001 - zipfile raises many types on damaged input
            raise CorruptCheckpointError(
                f"`{self.path}` is damaged: {exc}. Restore it from a good copy.", file=str(self.path)
            ) from exc
        self._container_checked = True

    def tensors(self, names: list[str], *, verify: bool, into: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        out = {name: self.state[name] for name in names}
        if verify:
            self._check_container()
            expected = {t.name: t.hash for t in self.manifest.tensors if t.name in out}
            check_tensors(out, expected, what=f"`{self.path}`")
        return out

    def optimizer_state(self, *, verify: bool) -> dict[str, Any] | None:
        if self.raw_optimizer is None:
            return None
        if verify and not self.upstream and self.manifest.optimizer is not None:
            self._check_container()
            structure, tensors = split_tree(self.raw_optimizer, OPTIMIZER_PREFIX)
            if structure != self.manifest.optimizer["structure"]:
                raise CorruptCheckpointError(
                    f"The optimizer state in `{self.path}` differs from its manifest; the file is damaged.",
                    file=str(self.path),
                )
            check_tensors(tensors, {t["name"]: t.get("hash") for t in self.manifest.optimizer["tensors"]},
                          what=f"the optimizer state of `{self.path}`")
        return self.raw_optimizer


def _table(state: Mapping[str, Any]) -> dict[str, tuple[str, tuple[int, ...]]]:
    import torch

    out = {}
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise CorruptCheckpointError(f"`state_dict[{name!r}]` is a {type(t).__name__}, not a tensor.")
        out[name] = (dtype_name(t.dtype), tuple(t.shape))
    return out


def not_a_checkpoint(path: Path, payload: Any) -> NotACheckpointError:
    kind = type(payload).__name__
    keys = f" with keys {sorted(map(str, payload))[:8]}" if isinstance(payload, Mapping) else ""
    return NotACheckpointError(
        f"`{path}` loads with torch but holds a {kind}{keys}, neither an enn_nb checkpoint (no "
        f"`{MANIFEST_KEY}`) nor an ENN-PyTorch one (no `state_dict` with `in_dim`/`config`). Save models "
        "with `enn_nb.save(model, path)`."
    )
