"""The .safetensors format: the manifest is one header metadata key, so any safetensors tool opens it.

Layout: the standard safetensors file (8-byte little-endian header length, JSON header, raw tensor
bytes). ``__metadata__["enn_nb.manifest"]`` holds the manifest JSON. Optimizer state, when saved,
is stored as ordinary tensors named ``__optimizer__/<path>`` (``__optimizer__/state/0/exp_avg``);
its non-tensor parts (param groups, hyper-parameters) live in the manifest's ``optimizer.structure``.

The file is written in one pass: the header is reserved with placeholder hashes of the final length,
the tensor bytes are written straight from the tensors' memory while a background thread hashes them
(BLAKE3), and the header is then rewritten in place with the real hashes (a digest has a fixed length).
Loading memory-maps the file (safetensors' ``safe_open``) and hashes the mapped bytes in place.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb._fs import timestamp
from enn_nb._safeio import escape, json_loads
from enn_nb.errors import CheckpointError, CorruptCheckpointError, NotACheckpointError

from . import upstream
from .atomic import atomic_file, atomic_stream
from .base import SaveRequest, build_manifest, check_table, sync_while_recording
from .hashing import ALGORITHM, HEX_DIGITS, HashPool, check_tensors, tensor_digest
from .manifest import Manifest, decode, encode
from .selfcheck import Recording, resolve
from .tensors import byte_view, cpu_contiguous, dtype_name, expected_nbytes, join_tree, nbytes

if TYPE_CHECKING:
    import torch

    from enn_nb.storage import Remote

MANIFEST_KEY = "enn_nb.manifest"
MAX_HEADER = 100 * 1024 * 1024  # what the safetensors library accepts

DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
    "uint16": "U16", "uint32": "U32", "uint64": "U64", "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "complex64": "C64",
}
TORCH_DTYPES = {code: name for name, code in DTYPES.items()}


# -- writing ---------------------------------------------------------------------------------------
def write(final: Path | Remote, request: SaveRequest) -> Manifest:
    """Write ``request`` to ``final`` (a path or a URL) atomically and return the manifest stored in its header."""
    import safetensors

    state = {name: cpu_contiguous(t) for name, t in request.state.items()}
    structure, opt_raw = request.optimizer_parts()
    opt_tensors = {name: cpu_contiguous(t) for name, t in opt_raw.items()}
    tensors = {**state, **opt_tensors}
    for name, t in tensors.items():
        if dtype_name(t.dtype) not in DTYPES:
            raise CorruptCheckpointError(f"Tensor `{name}` has dtype {t.dtype}, which safetensors cannot store; "
                                         "save as .pt instead.")
    # Widest elements first: every tensor then starts at an offset aligned to its element size.
    order = sorted(tensors, key=lambda n: -tensors[n].element_size())
    entries: dict[str, Any] = {}
    offset = 0
    for name in order:
        t = tensors[name]
        size = nbytes(t)
        entries[name] = {"dtype": DTYPES[dtype_name(t.dtype)], "shape": list(t.shape),
                         "data_offsets": [offset, offset + size]}
        offset += size

    # Fix the creation time once: both header passes must have exactly the same length.
    request = dataclasses.replace(request, created=request.created or timestamp())
    recording = request.self_check if isinstance(request.self_check, Recording) else None

    def header(req: SaveRequest, hashes: Mapping[str, str], reserve: int = 0) -> tuple[bytes, Manifest]:
        manifest = build_manifest("safetensors", req, hashes, optimizer_structure=structure,
                                  optimizer_tensors=opt_tensors,
                                  extra_versions={"safetensors": safetensors.__version__})
        # The placeholder pass differs from the real one only in the digests: validate the real one.
        doc = {"__metadata__": {MANIFEST_KEY: encode(manifest, validate=reserve > 0)}, **entries}
        raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        size = max(reserve, len(raw) + (-(8 + len(raw)) % 8))  # pad so tensor data starts 8-aligned
        return raw + b" " * (size - len(raw)), manifest

    placeholders = {name: f"{ALGORITHM}:" + "0" * HEX_DIGITS for name in tensors}
    if recording is None:
        placeholder, _ = header(request, placeholders)
    else:
        # The self-check is still being recorded beside the writer: reserve room for its longest form.
        bare, _ = header(dataclasses.replace(request, self_check=None), placeholders)
        pad = recording.max_json_chars()
        placeholder = bare + b" " * (pad + (-(8 + len(bare) + pad) % 8))
    if len(placeholder) > MAX_HEADER:  # the safetensors library could never open the file: refuse before replacing

        raise CheckpointError(
            f"The safetensors header for `{final}` would be {len(placeholder)} bytes (manifest and metadata included), "
            f"over safetensors' {MAX_HEADER}-byte limit, so the file could never be loaded; nothing was written. "
            "Shrink `metadata=`, or save as .pt or DCP."
        )
    if not isinstance(final, Path) and _parts_upload(final):
        return _write_parts(final, request, tensors, order, placeholder, header)
    if not isinstance(final, Path):
        # A store cannot seek back to fill in the digests: hash first (BLAKE3 on all cores, a fraction of
        # the upload's time), then one front-to-back upload, committed when complete.
        if recording is not None:
            recording.start()
        hashes = {name: tensor_digest(tensors[name], threads=True) for name in order}
        request = dataclasses.replace(request, self_check=resolve(request.self_check))
        real, manifest = header(request, hashes, reserve=1)
        with atomic_stream(final) as fh:
            fh.write(struct.pack("<Q", len(real)))
            fh.write(real)
            for name in order:
                fh.write(byte_view(tensors[name]))
        manifest.path = str(final)
        return manifest
    with atomic_file(final) as tmp, HashPool() as pool:
        pool.submit_all(tensors, order)
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<Q", len(placeholder)))
            fh.write(placeholder)
            for name in order:
                fh.write(byte_view(tensors[name]))
            sync_while_recording(fh, request)
            hashes = pool.results()
            real, manifest = header(request, hashes, reserve=len(placeholder))
            if len(real) != len(placeholder):  # vectors longer than the bound: saved without them
                real, manifest = header(dataclasses.replace(request, self_check=None), hashes, reserve=len(placeholder))
            if len(real) != len(placeholder):
                raise RuntimeError("enn_nb internal error: the safetensors header changed length")
            fh.seek(8)
            fh.write(real)
    manifest.path = str(final)
    return manifest


def _parts_upload(final: Remote) -> bool:
    from enn_nb.storage_parts import accepts_parts

    return accepts_parts(final)


def _write_parts(final: Remote, request: SaveRequest, tensors: Mapping[str, Any], order: list[str],
                 placeholder: bytes, header: Any) -> Manifest:
    """Upload to S3 while hashing: the tensor bytes go up in parts at once, the header (with the hashes) last.

    The header keeps the length of ``placeholder`` (digests have a fixed length; the self-check's room
    is reserved as for a local file), so every tensor's offset is known before any hash is.
    """
    from enn_nb.storage_parts import upload_head_last

    from .atomic import check_replaceable_remote

    check_replaceable_remote(final, directory=False)
    recording = request.self_check if isinstance(request.self_check, Recording) else None
    made: list[Manifest] = []
    with HashPool() as pool:
        pool.submit_all(tensors, order)
        if recording is not None:
            recording.start()

        def head() -> bytes:  # called while the tensor parts upload
            hashes = pool.results()
            done = dataclasses.replace(request, self_check=resolve(request.self_check))
            real, manifest = header(done, hashes, reserve=len(placeholder))
            if len(real) != len(placeholder):  # vectors longer than the bound: saved without them
                real, manifest = header(dataclasses.replace(done, self_check=None), hashes, reserve=len(placeholder))
            made.append(manifest)
            return struct.pack("<Q", len(real)) + real

        upload_head_last(final, 8 + len(placeholder), [byte_view(tensors[name]) for name in order], head)
    manifest = made[0]
    manifest.path = str(final)
    return manifest


# -- reading ---------------------------------------------------------------------------------------
def read_header(path: Path | Remote) -> tuple[dict[str, Any], int]:
    """The parsed JSON header and the byte offset where tensor data starts (a URL: by ranged reads).

    Raises:
        NotACheckpointError: not a safetensors file.
        CorruptCheckpointError: header cut short, not JSON, or data shorter than the header says.
    """
    if isinstance(path, Path):
        size = path.stat().st_size
        with open(path, "rb") as fh:
            return _parse_header(path, size, lambda start, n: (fh.seek(start), fh.read(n))[1])
    # On a store: two ranged reads (the length, then the header), never the tensor bytes.
    from enn_nb.storage import read_range, store_error

    try:
        size = int(path.fs.size(path.path))
    except Exception as exc:  # noqa: BLE001 - the store's own error types
        raise store_error(path, exc, writing=False) from None
    return _parse_header(path, size, lambda start, n: read_range(path, start, min(size, start + n)))


def _parse_header(path: Any, size: int, read: Any) -> tuple[dict[str, Any], int]:
    head = read(0, 8)
    if len(head) < 8:
        raise NotACheckpointError(f"`{path}` is too short to be a safetensors file ({size} bytes).")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER:
        raise NotACheckpointError(f"`{path}` is not a safetensors file (header length {n} is implausible).")
    raw = read(8, n) if n else b""
    if len(raw) < n:
        raise CorruptCheckpointError(
            f"`{path}` is truncated: its safetensors header needs {n} bytes, the file has {size - 8}.", file=str(path)
        )

    header = json_loads(raw, what=f"The safetensors header of `{path}`")
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"The safetensors header of `{path}` is not a JSON object.", file=str(path))
    start = 8 + n
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            if info is not None and not (isinstance(info, dict) and all(isinstance(v, str) for v in info.values())):
                raise CorruptCheckpointError(f"The safetensors `__metadata__` of `{path}` is not a string map.",
                                             file=str(path))
            continue
        end = max(end, _check_entry(path, name, info))
    if size < start + end:
        raise CorruptCheckpointError(
            f"`{path}` is truncated: the header describes {start + end} bytes, the file has {size}. Save it again "
            "or restore it from a good copy.",
            file=str(path),
        )
    return header, start


def _check_entry(path: Path, name: str, info: Any) -> int:
    """The end offset of a well-formed tensor entry (dtype known, shape of ints, byte range matching it)."""

    def bad(what: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"The safetensors header entry `{escape(name)}` of `{path}` is malformed "
                                      f"({what}); the file is damaged.", file=str(path), tensor=name)

    if not isinstance(info, dict):
        raise bad("not an object")
    code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if code not in TORCH_DTYPES:
        raise bad(f"dtype {code!r}")
    if not isinstance(shape, list) or len(shape) > 16 or not all(type(d) is int and d >= 0 for d in shape):
        raise bad("shape is not a list of sizes")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]):
        raise bad("data_offsets is not [begin, end]")

    if offsets[1] - offsets[0] != expected_nbytes(TORCH_DTYPES[code], shape) or math.prod(shape) > 1 << 40:
        raise bad(f"{offsets[1] - offsets[0]} bytes for shape {shape}")
    return offsets[1]


def header_table(header: Mapping[str, Any]) -> dict[str, tuple[str, tuple[int, ...]]]:
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        code = info.get("dtype")
        out[name] = (TORCH_DTYPES.get(code, str(code)), tuple(int(d) for d in info.get("shape", ())))
    return out


class SafetensorsReader:
    """An open .safetensors checkpoint (enn_nb manifest, or ENN-PyTorch ``enn_meta_json``/sidecar)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.header, self.data_start = read_header(path)
        metadata = self.header.get("__metadata__") or {}
        text = metadata.get(MANIFEST_KEY) if isinstance(metadata, dict) else None
        table = header_table(self.header)
        if text is not None:
            self.manifest = decode(text, path=str(path))
            self.upstream = False
            opt = self.manifest.optimizer or {}
            model_table = {k: v for k, v in table.items() if not k.startswith(opt.get("prefix", "\0"))}
            check_table(self.manifest, model_table, where=f"`{path}`")
        else:
            metadata = metadata if isinstance(metadata, dict) else {}
            stray = [k for k, v in metadata.items() if isinstance(v, str) and '"schema":"enn_nb.checkpoint/' in v[:40]]
            if stray:  # an enn_nb manifest under a damaged key: do not fall back to unverified loading
                raise CorruptCheckpointError(
                    f"`{path}` holds an enn_nb manifest under the header key {stray[0]!r} instead of "
                    f"`{MANIFEST_KEY}`: the header is damaged. Restore the file from a good copy.",
                    file=str(path),
                )
            self.manifest = upstream.from_safetensors(path, metadata, table)
            self.upstream = True

    @property
    def verifiable(self) -> bool:
        return not self.upstream

    def _read(self, names: list[str]) -> dict[str, torch.Tensor]:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.path), framework="pt", device="cpu") as fh:
                return {name: fh.get_tensor(name) for name in names}
        except SafetensorError as exc:
            raise CorruptCheckpointError(f"`{self.path}` cannot be read by safetensors: {exc}",
                                         file=str(self.path)) from exc

    def tensors(self, names: list[str], *, verify: bool, into: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        out = self._read(names)
        if verify and not self.upstream:
            check_tensors(out, {t.name: t.hash for t in self.manifest.tensors if t.name in out},
                          what=f"`{self.path}`")
        return out

    def optimizer_state(self, *, verify: bool) -> dict[str, Any] | None:
        opt = self.manifest.optimizer
        if not opt:
            return None
        names = [t["name"] for t in opt["tensors"]]
        missing = [n for n in names if n not in self.header]
        if missing:
            raise CorruptCheckpointError(f"`{self.path}` lacks optimizer tensor(s) {missing[:5]} its manifest lists.",
                                         file=str(self.path), tensor=missing[0])
        tensors = self._read(names)
        if verify:
            check_tensors(tensors, {t["name"]: t.get("hash") for t in opt["tensors"]},
                          what=f"the optimizer state of `{self.path}`")
        return join_tree(opt["structure"], tensors)

