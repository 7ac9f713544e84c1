"""Manifest: the checkpoint's self-description (spec, versions, metadata, tensor table, hashes)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
from collections.abc import Mapping
from typing import Any

from enn_nb._safeio import MAX_JSON_BYTES, json_loads
from enn_nb._version import __version__
from enn_nb.errors import CorruptCheckpointError, SpecError
from enn_nb.model.spec import SPEC_FIELDS, ModelSpec, jsonable

from .display import manifest_html, manifest_text
from .migrations import migrate
from .schema import FORMATS, SCHEMA_ID  # noqa: F401 (FORMATS re-exported)
from .schema import validate as validate_document

_SPEC_KEYS = tuple(name for name in SPEC_FIELDS if name != "metadata")


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    """One row of the tensor table."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    hash: str | None = None  # "<algorithm>:<hex>" (see checkpoint/hashing.py); None when no rank held it whole

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "nbytes": self.nbytes,
                "hash": self.hash}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorEntry:
        return cls(str(data["name"]), str(data["dtype"]), tuple(int(d) for d in data["shape"]),
                   int(data["nbytes"]), data.get("hash"))


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """A file of a DCP directory and its digest (``"<algorithm>:<hex>"``)."""

    path: str
    nbytes: int
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "nbytes": self.nbytes, "hash": self.hash}


@dataclasses.dataclass
class Manifest:
    """What a checkpoint holds and how to rebuild its model.

    Render it in a notebook (HTML table) or print it (text); :meth:`to_dict` gives the JSON document
    (``"schema": "enn_nb.checkpoint/2"``, validated against ``enn_nb/schemas/checkpoint.schema.json``).

    Attributes:
        format: ``"pt"``, ``"safetensors"`` or ``"dcp"``.
        spec: the ModelSpec (builder, config, in_dim, out_shape, tasks, scaler, embedding);
            ``spec.metadata`` is the user metadata.
        tensors: the tensor table (name, dtype, shape, byte size, digest ``"blake3:<hex>"``).
        versions: ``enn_nb``, ``torch``, ``python`` (and format libraries) at save time.
        created: ISO 8601 UTC creation time.
        files: DCP only, every data file with its digest.
        optimizer: optimizer state description (class, tensor table, JSON structure) or None.
        source: set when the content was not written by ``enn_nb.save`` (upstream layout, conversion,
            migration), e.g. ``{"layout": "enn-pytorch", "missing_fields": [...]}``.
        extra_state: JSON ``get_extra_state()`` values by state-dict key (handed to ``set_extra_state``).
        self_check: inputs and outputs recorded at save time (batch 2) that ``load`` re-runs; None for
            checkpoints written before it existed or of models that could not run on spec inputs.
        path: where it was read from or written to (not part of the document).
    """

    format: str
    spec: ModelSpec
    tensors: list[TensorEntry]
    versions: dict[str, str | None]
    created: str
    files: list[FileEntry] = dataclasses.field(default_factory=list)
    optimizer: dict[str, Any] | None = None
    source: dict[str, Any] | None = None
    extra_state: dict[str, Any] | None = None
    self_check: dict[str, Any] | None = None
    schema: str = SCHEMA_ID
    path: str | None = None

    # -- convenient views ---------------------------------------------------------------------------
    @property
    def metadata(self) -> dict[str, Any]:
        """User metadata (JSON); the same dict as ``spec.metadata``."""
        return self.spec.metadata

    @property
    def provenance(self) -> dict[str, Any] | None:
        """``metadata["provenance"]`` when a caller (e.g. the notebook magics) recorded one."""
        value = self.metadata.get("provenance")
        return value if isinstance(value, dict) else None

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def parameter_count(self) -> int:
        return sum(math.prod(t.shape) for t in self.tensors)

    def tensor(self, name: str) -> TensorEntry:
        for entry in self.tensors:
            if entry.name == name:
                return entry
        raise KeyError(f"No tensor `{name}` in this checkpoint; it holds {len(self.tensors)} tensors.")

    @property
    def content_hash(self) -> str:
        """sha256 over the spec and the tensor hashes: the identity of the model, whatever the format.

        Two checkpoints of the same weights and spec in .pt, .safetensors or DCP share it (metadata,
        versions and times are not part of it). When tensor hashes are unknown (a DCP directory
        written by several ranks) the file hashes stand in. The digests include their algorithm, so
        a checkpoint hashed with sha256 (schema 1) and its BLAKE3 re-save have different ones.
        """
        spec = {key: value for key, value in self.spec.to_dict().items() if key != "metadata"}
        if all(t.hash for t in self.tensors):  # an empty table too: the same identity in every format
            body: Any = sorted([t.name, t.dtype, list(t.shape), t.hash] for t in self.tensors)
            kind = "tensors"
        else:
            body = sorted([f.path, f.hash] for f in self.files)
            kind = "files"
        text = json.dumps({"spec": spec, kind: body}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    # -- JSON ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The manifest document (plain JSON types)."""
        spec = self.spec.to_dict()
        document = {
            "schema": self.schema,
            "format": self.format,
            "created": self.created,
            "versions": dict(self.versions),
            "spec": {key: spec[key] for key in _SPEC_KEYS if key in spec},
            "metadata": spec["metadata"],
            "tensors": [t.to_dict() for t in self.tensors],
            "files": [f.to_dict() for f in self.files],
            "optimizer": self.optimizer,
            "source": self.source,
        }
        # Optional parts appear only when present: documents without them stay as they were.
        if self.extra_state:
            document["extra_state"] = self.extra_state
        if self.self_check:
            document["self_check"] = self.self_check
        return document

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, document: Mapping[str, Any], *, path: str | None = None) -> Manifest:
        """Read a manifest document of any known schema version (older ones are migrated).

        Raises:
            SchemaVersionError: newer than this enn_nb understands (names both versions).
            CorruptCheckpointError: not a valid manifest.
        """
        doc, found = migrate(dict(document))
        doc.pop("manifest_sha256", None)
        validate_document(doc)
        spec_data = dict(doc["spec"])
        spec_data["metadata"] = doc.get("metadata") or {}
        try:
            spec = ModelSpec.from_dict(spec_data)
        except SpecError as exc:
            raise CorruptCheckpointError(f"The manifest's `spec` is invalid: {exc}") from exc
        return cls(
            format=doc["format"],
            spec=spec,
            tensors=[TensorEntry.from_dict(t) for t in doc["tensors"]],
            versions=dict(doc["versions"]),
            created=doc["created"],
            files=[FileEntry(f["path"], int(f["nbytes"]), f["hash"]) for f in doc.get("files") or []],
            optimizer=doc.get("optimizer"),
            source=doc.get("source"),
            extra_state=doc.get("extra_state"),
            self_check=doc.get("self_check"),
            path=path,
        )

    # -- display -----------------------------------------------------------------------------------
    def __str__(self) -> str:
        return manifest_text(self)

    def __repr__(self) -> str:  # the REPL shows the same table as print()

        return manifest_text(self)

    def _repr_html_(self) -> str:
        return manifest_html(self)


# -- encoding with a self-hash ------------------------------------------------------------------------
def _canonical(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def self_hash(document: Mapping[str, Any]) -> str:
    """The ``manifest_sha256`` of a manifest document (computed without that key)."""
    return hashlib.sha256(_canonical({k: v for k, v in document.items() if k != "manifest_sha256"})).hexdigest()


def encode(manifest: Manifest, *, validate: bool = True) -> str:
    """The manifest as the JSON text stored in a checkpoint, validated, with ``manifest_sha256``.

    The self-hash makes damage to the manifest itself detectable (a flipped digit in a number would
    otherwise still parse).
    """
    document = manifest.to_dict()
    if validate:
        validate_document(document, where="manifest to write", error=SpecError)
    document["manifest_sha256"] = self_hash(document)
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))

    if len(text) > MAX_JSON_BYTES:  # readers refuse larger manifests: never write one
        raise SpecError(
            f"The manifest would be {len(text)} bytes, over the {MAX_JSON_BYTES}-byte limit enn_nb reads back "
            "(most of it is `metadata=`); nothing was replaced. Store large data in a file of its own."
        )
    return text


def decode(text: str | bytes, *, path: str | None = None, where: str = "manifest") -> Manifest:
    """Parse stored manifest text, check its self-hash, migrate and validate it.

    Raises:
        CorruptCheckpointError: not JSON, self-hash mismatch, or schema violations.
        SchemaVersionError: newer than this enn_nb understands.
    """

    if len(text) > MAX_JSON_BYTES:
        raise CorruptCheckpointError(f"The {where} of `{path}` is {len(text)} bytes, over the {MAX_JSON_BYTES}-byte "
                                     "limit; the file is damaged or hostile.", file=path)
    document = json_loads(text, what=f"The {where} of `{path}`")
    if not isinstance(document, dict):
        raise CorruptCheckpointError(f"The {where} of `{path}` is not a JSON object; the file is damaged.", file=path)
    stored = document.pop("manifest_sha256", None)
    if stored is None and document.get("schema") == SCHEMA_ID:  # pre-release (v0) manifests had no self-hash
        raise CorruptCheckpointError(
            f"The {where} of `{path}` has no `manifest_sha256`: every manifest enn_nb writes carries one, so it was "
            "edited or damaged. Restore the checkpoint from a good copy.", file=path)
    if stored is not None and self_hash(document) != stored:
        raise CorruptCheckpointError(
            f"The {where} of `{path}` does not match its own sha256: the manifest was damaged or edited. "
            "Restore the checkpoint from a good copy.",
            file=path,
        )
    return Manifest.from_dict(document, path=path)


# -- building ----------------------------------------------------------------------------------------
def versions(**extra: str | None) -> dict[str, str | None]:
    import torch

    out: dict[str, str | None] = {"enn_nb": __version__, "torch": torch.__version__,
                                  "python": platform.python_version()}
    out.update(extra)
    return out


def user_metadata(spec: ModelSpec, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """``spec.metadata`` updated with ``metadata`` (nested dicts merged), as plain JSON."""
    merged = _deep_merge(jsonable(spec.metadata or {}, where="spec.metadata"),
                         jsonable(dict(metadata or {}), where="metadata"))
    return merged


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out

