"""Which format a path holds (or should be written as): suffix, magic bytes, directory contents."""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

from enn_nb._safeio import MAX_JSON_BYTES, json_loads, read_capped, read_head
from enn_nb.errors import CorruptCheckpointError, IncompleteCheckpointError, NotACheckpointError, UnknownNameError

from .schema import FORMATS

_NAMED = ", ".join(f'"{name}"' for name in FORMATS[:-1]) + f' or "{FORMATS[-1]}"'

PT_SUFFIXES = (".pt", ".pth")
SAFETENSORS_SUFFIXES = (".safetensors",)
FORMAT_ALIASES = {"pt": "pt", "pth": "pt", "torch": "pt", "safetensors": "safetensors", "dcp": "dcp"}
DCP_MANIFEST = "enn_nb.manifest.json"
DCP_METADATA = ".metadata"
UPSTREAM_DCP_META = "meta.json"
# ENN-PyTorch reads its metadata from either name, in the checkpoint's folder or up to three above.
UPSTREAM_META_NAMES = (UPSTREAM_DCP_META, "model.meta.json")
UPSTREAM_META_PARENTS = 3
_RANK_METADATA = re.compile(r"^__(\d+)\.metadata$")

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOLS = tuple(bytes([0x80, p]) for p in range(2, 6))


def save_format(path: Path, format: str | None) -> str:
    """The format to write ``path`` as: ``format`` when given, else from the suffix.

    Raises:
        UnknownNameError: an unknown ``format`` or a suffix that names none (lists the known ones).
    """
    if format is not None:
        key = str(format).lower().lstrip(".")
        if key not in FORMAT_ALIASES:
            raise UnknownNameError(
                f"Unknown checkpoint format `{format}`. Known formats: pt (.pt/.pth), safetensors, dcp "
                "(a directory).",
                name=str(format),
                known=sorted(FORMAT_ALIASES),
            )
        return FORMAT_ALIASES[key]
    suffix = path.suffix.lower()
    if suffix in PT_SUFFIXES:
        return "pt"
    if suffix in SAFETENSORS_SUFFIXES:
        return "safetensors"
    if suffix == "" or path.is_dir():
        return "dcp"
    raise UnknownNameError(
        f"Cannot tell the checkpoint format from the suffix `{suffix}` of `{path}`. Use `.pt`/`.pth`, "
        "`.safetensors`, a path without suffix (a DCP directory), or pass `format=` "
        f"({_NAMED}).",
        name=suffix,
        known=list(FORMATS),
    )


def detect_format(path: Path) -> str:
    """The format stored at ``path``: ``"pt"``, ``"safetensors"`` or ``"dcp"``, by content not suffix.

    Raises:
        NotACheckpointError: missing path, empty file or directory, or unknown content.
        IncompleteCheckpointError: a DCP directory without its commit marker.
    """
    if not path.exists():
        raise NotACheckpointError(f"`{path}` does not exist.")
    if path.is_dir():
        return _detect_dir(path)

    head, size = read_head(path, 16, what="The checkpoint", error=NotACheckpointError)
    if size == 0:
        raise NotACheckpointError(f"`{path}` is an empty file, not a checkpoint.")
    if head.startswith(_ZIP_MAGIC):
        return "pt"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= 100 * 1024 * 1024 and head[8:9] == b"{":  # a short file is a truncated one
            return "safetensors"
    if head[:2] in _PICKLE_PROTOCOLS:
        return "pt"  # legacy torch.save or a bare pickle: the weights-only reader refuses anything unsafe
    raise NotACheckpointError(
        f"`{path}` is not a checkpoint: its first bytes {head[:8]!r} match neither a .pt (zip) nor a "
        ".safetensors header. enn_nb reads .pt/.pth, .safetensors and DCP directories."
    )


def _detect_dir(path: Path) -> str:
    try:
        names = set(os.listdir(path))
    except OSError as exc:
        raise NotACheckpointError(f"`{path}` cannot be listed: {exc}") from exc
    if DCP_MANIFEST in names or UPSTREAM_DCP_META in names:
        if DCP_METADATA not in names and DCP_MANIFEST in names:
            raise IncompleteCheckpointError(
                f"`{path}` has an enn_nb manifest but no DCP `{DCP_METADATA}` file; the directory was "
                "damaged after saving. Restore it from a good copy."
            )
        return "dcp"
    if not names:
        raise NotACheckpointError(f"`{path}` is an empty directory, not a checkpoint.")
    if dcp_metadata_name(names) is not None and upstream_meta_file(path) is not None:
        return "dcp"  # an ENN-PyTorch DCP folder whose meta.json lies in a parent folder
    if DCP_METADATA in names or any(n.endswith(".distcp") for n in names):
        raise IncompleteCheckpointError(
            f"`{path}` holds DCP files but no `{DCP_MANIFEST}` commit marker: the save did not finish (a "
            "rank died or the process was killed), so its content cannot be trusted. Save again; if this "
            f"is a plain `torch.distributed.checkpoint` directory, add an ENN-PyTorch `{UPSTREAM_DCP_META}` "
            "beside it or load it with `torch.distributed.checkpoint.load`."
        )
    raise NotACheckpointError(
        f"`{path}` is a directory without a checkpoint (no `{DCP_MANIFEST}`, `{DCP_METADATA}` or "
        f"`{UPSTREAM_DCP_META}`); it holds {', '.join(sorted(names)[:5])}{'...' if len(names) > 5 else ''}."
    )


def safetensors_sidecar(path: Path) -> Path:
    """The ENN-PyTorch sidecar of a safetensors file: ``<name>.safetensors.json``."""
    return path.with_name(path.name + ".json")


def read_json_file(path: Path) -> dict:
    """A JSON object from a regular file of bounded size and nesting (``meta.json``, sidecars)."""

    value = json_loads(read_capped(path, MAX_JSON_BYTES, what="The JSON file"), what=f"`{path}`")
    if not isinstance(value, dict):
        raise CorruptCheckpointError(f"`{path}` does not hold a JSON object.", file=str(path))
    return value


def dcp_metadata_name(names: set[str] | list[str]) -> str | None:
    """DCP's ``.metadata``, else the lowest rank-local ``__N.metadata`` (saved without collectives)."""
    if DCP_METADATA in names:
        return DCP_METADATA
    ranks = sorted((int(m.group(1)), n) for n in names if (m := _RANK_METADATA.match(n)))
    return ranks[0][1] if ranks else None


def upstream_meta_file(folder: Path) -> Path | None:
    """ENN-PyTorch's ``meta.json``/``model.meta.json`` for ``folder``: in it or up to three folders up."""
    for where in [folder, *list(folder.resolve().parents)[:UPSTREAM_META_PARENTS]]:
        for name in UPSTREAM_META_NAMES:
            if (where / name).is_file():
                return where / name
    return None
