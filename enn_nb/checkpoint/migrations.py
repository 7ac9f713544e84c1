"""Manifest migrations: each registered step turns schema version N into N+1 until the current one."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from enn_nb.errors import CorruptCheckpointError

from .schema import CURRENT_VERSION, SCHEMA_ID, SCHEMA_NAME, check_not_newer, parse_schema_id

Migration = Callable[[dict[str, Any]], dict[str, Any]]

_MIGRATIONS: dict[int, Migration] = {}


def register_migration(from_version: int, *, replace: bool = False) -> Callable[[Migration], Migration]:
    """Decorator registering ``fn(document) -> document`` that upgrades ``from_version`` to the next.

    The function receives a copy it may modify and must return a document whose ``schema`` is
    ``enn_nb.checkpoint/<from_version + 1>``.
    """

    def wrap(fn: Migration) -> Migration:
        if from_version in _MIGRATIONS and not replace and _MIGRATIONS[from_version] is not fn:
            raise ValueError(
                f"A migration from `{SCHEMA_NAME}/{from_version}` is already registered; pass replace=True."
            )
        _MIGRATIONS[from_version] = fn
        return fn

    return wrap


def migrations() -> dict[int, Migration]:
    """The registered migrations, by the version they upgrade from."""
    return dict(_MIGRATIONS)


def migrate(document: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Upgrade a manifest document to the current schema.

    Returns:
        The current-version document and the version it was found at.

    Raises:
        SchemaVersionError: the document is newer than this enn_nb (names both versions).
        CorruptCheckpointError: no migration is registered for an older version, or one failed.
    """
    found = version = parse_schema_id(document.get("schema"))
    check_not_newer(version)
    doc = dict(document)
    while version < CURRENT_VERSION:
        step = _MIGRATIONS.get(version)
        if step is None:
            raise CorruptCheckpointError(
                f"The manifest uses schema `{SCHEMA_NAME}/{version}` and no migration to "
                f"`{SCHEMA_NAME}/{version + 1}` is registered (known: "
                f"{', '.join(f'{SCHEMA_NAME}/{v}' for v in sorted(_MIGRATIONS)) or 'none'}). Register one "
                "with `@enn_nb.checkpoint.register_migration(from_version)`."
            )
        try:
            doc = step(dict(doc))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptCheckpointError(
                f"Migrating the manifest from `{SCHEMA_NAME}/{version}` failed: {exc!r}. The manifest is "
                "damaged or not of that version."
            ) from exc
        new_version = parse_schema_id(doc.get("schema"))
        if new_version != version + 1:
            raise CorruptCheckpointError(
                f"The migration from `{SCHEMA_NAME}/{version}` produced schema `{doc.get('schema')}`; "
                f"expected `{SCHEMA_NAME}/{version + 1}`."
            )
        version = new_version
    return doc, found


# -- built-in: v0 -> v1 -----------------------------------------------------------------------------
# Version 0 was the pre-release layout: the spec under `model`, user metadata under `user_metadata`,
# versions as flat `*_version` keys, and the tensor table as a mapping `name -> {dtype, shape, sha256}`.

_ITEMSIZE = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
    "int8": 1, "uint8": 1, "bool": 1, "complex64": 8, "complex128": 16,
}


@register_migration(0)
def _v0_to_v1(doc: dict[str, Any]) -> dict[str, Any]:
    model = dict(doc.get("model") or {})
    tensors = []
    for name, entry in (doc.get("weights") or {}).items():
        shape = [int(d) for d in entry["shape"]]
        dtype = str(entry["dtype"])
        tensors.append(
            {
                "name": name,
                "dtype": dtype,
                "shape": shape,
                "nbytes": math.prod(shape) * _ITEMSIZE[dtype],
                "sha256": entry.get("sha256"),
            }
        )
    return {
        "schema": f"{SCHEMA_NAME}/1",
        "format": doc["format"],
        "created": doc["created"],
        "versions": {
            "enn_nb": doc.get("enn_nb_version"),
            "torch": doc.get("torch_version"),
            "python": doc.get("python_version"),
        },
        "spec": {key: model.get(key) for key in (
            "builder", "config", "in_dim", "out_shape", "tasks", "scaler", "embedding", "feature_dtype"
        )},
        "metadata": dict(doc.get("user_metadata") or {}),
        "hash_algorithm": "sha256",
        "tensors": tensors,
        "files": [],
        "optimizer": None,
        "source": {"migrated_from": f"{SCHEMA_NAME}/0"},
    }


# -- built-in: v1 -> v2 -----------------------------------------------------------------------------
# Version 1 hashed with sha256 only: one top-level `hash_algorithm: "sha256"` and bare hex digests under
# `sha256` in every tensor/file row. Version 2 names the algorithm in each digest (`"hash": "blake3:…"`),
# so rows of a migrated v1 manifest become `"hash": "sha256:<hex>"` and still verify with sha256.


def _v1_row(row: Any) -> Any:
    if not isinstance(row, dict) or "sha256" not in row:
        return row
    out = {key: value for key, value in row.items() if key != "sha256"}
    out["hash"] = None if row["sha256"] is None else f"sha256:{row['sha256']}"
    return out


@register_migration(1)
def _v1_to_v2(doc: dict[str, Any]) -> dict[str, Any]:
    algorithm = doc.pop("hash_algorithm", "sha256")
    if algorithm != "sha256":
        raise ValueError(f"schema 1 knows only sha256, the manifest says hash_algorithm={algorithm!r}")
    doc["schema"] = f"{SCHEMA_NAME}/2"
    doc["tensors"] = [_v1_row(row) for row in doc.get("tensors") or []]
    doc["files"] = [_v1_row(row) for row in doc.get("files") or []]
    if isinstance(doc.get("optimizer"), dict):
        doc["optimizer"] = {**doc["optimizer"],
                            "tensors": [_v1_row(row) for row in doc["optimizer"].get("tensors") or []]}
    return doc


assert SCHEMA_ID == f"{SCHEMA_NAME}/{CURRENT_VERSION}"
