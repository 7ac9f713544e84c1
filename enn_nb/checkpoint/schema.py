"""The manifest's schema identifier, its JSON Schema file and validation against it."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from enn_nb._schema_check import passes_compiled
from enn_nb._version import __version__
from enn_nb.errors import CorruptCheckpointError, SchemaVersionError

SCHEMA_NAME = "enn_nb.checkpoint"
CURRENT_VERSION = 2
SCHEMA_ID = f"{SCHEMA_NAME}/{CURRENT_VERSION}"
#: The checkpoint formats, listed once (the schema file's ``format`` enum is tested against it).
FORMATS: tuple[str, ...] = ("pt", "safetensors", "dcp")
SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schemas" / "checkpoint.schema.json"

_ID = re.compile(r"^enn_nb\.checkpoint/(\d+)$")


def parse_schema_id(value: Any) -> int:
    """The integer version in ``"enn_nb.checkpoint/N"``.

    Raises:
        CorruptCheckpointError: the value is not a schema id of enn_nb checkpoints.
    """
    match = _ID.match(value) if isinstance(value, str) else None
    if match is None:
        raise CorruptCheckpointError(
            f"The manifest's `schema` is {value!r}; expected `{SCHEMA_NAME}/<version>` "
            f"(this enn_nb writes `{SCHEMA_ID}`). The manifest is damaged or not an enn_nb manifest."
        )
    return int(match.group(1))


def check_not_newer(version: int) -> None:
    """Raise SchemaVersionError when ``version`` is newer than this code understands."""
    if version > CURRENT_VERSION:
        found = f"{SCHEMA_NAME}/{version}"
        raise SchemaVersionError(
            f"This checkpoint's manifest uses schema `{found}`, newer than `{SCHEMA_ID}`, the newest "
            f"this enn_nb ({__version__}) understands. Upgrade enn_nb (`pip install -U enn-nb`) to read it.",
            found=found,
            supported=SCHEMA_ID,
        )


@functools.lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The JSON Schema of manifests (shipped as ``enn_nb/schemas/checkpoint.schema.json``)."""
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema

    cls = jsonschema.validators.validator_for(schema())
    cls.check_schema(schema())
    return cls(schema())


# Arrays that grow with the model. jsonschema costs ~0.5 ms per row, so a 1000-tensor model would
# spend a second validating; jsonschema checks their first row (so the schema's item rules stay the
# reference) and :func:`_check_rows`, which mirrors `$defs/tensor` and `$defs/file` exactly (tested
# against jsonschema in tests/test_checkpoint_schema.py), checks the rest.
_ROW_ARRAYS = (("tensors",), ("files",), ("optimizer", "tensors"))
_DIGEST = re.compile(r"^(blake3|sha256):[0-9a-f]{64}$")  # mirrors `$defs/digest`


def validate(
    document: dict[str, Any], *, where: str = "manifest", error: type[Exception] = CorruptCheckpointError
) -> None:
    """Validate a current-version manifest document; all violations are listed in one error.

    Raises:
        CorruptCheckpointError: (or ``error``) the document does not follow the schema.
    """

    if passes_compiled(SCHEMA_FILE, document):  # milliseconds; jsonschema below only explains refusals
        return
    slim, rest = _split_rows(document)
    problems = [
        ("/".join(str(p) for p in err.absolute_path), err.message)
        for err in sorted(_validator().iter_errors(slim), key=lambda e: list(e.absolute_path))
    ]
    for path, rows, kind in rest:
        problems += _check_rows(rows, kind, path, start=1)
    if problems:
        lines = [f"  - at `{path or '(root)'}`: {message[:300]}" for path, message in problems[:20]]
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise error(
            f"The {where} does not follow `{SCHEMA_ID}` ({SCHEMA_FILE.name}):\n" + "\n".join(lines) + more
        )


def _split_rows(document: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, list[Any], str]]]:
    slim = dict(document)
    rest = []
    for keys in _ROW_ARRAYS:
        parent = slim
        for key in keys[:-1]:
            if not isinstance(parent.get(key), dict):
                parent = None
                break
            parent[key] = parent = dict(parent[key])
        if parent is None or not isinstance(parent.get(keys[-1]), list) or len(parent[keys[-1]]) <= 1:
            continue
        rows = parent[keys[-1]]
        parent[keys[-1]] = rows[:1]
        rest.append(("/".join(keys), rows[1:], "file" if keys == ("files",) else "tensor"))
    return slim, rest


_TENSOR_KEYS = {"name": True, "dtype": True, "shape": True, "nbytes": True, "hash": False}
_FILE_KEYS = {"path": True, "nbytes": True, "hash": True}


def _is_int(value: Any) -> bool:
    """JSON Schema's "integer": 3 and 3.0, not True."""
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def _check_rows(rows: list[Any], kind: str, path: str, start: int) -> list[tuple[str, str]]:
    """The rules of `$defs/tensor` or `$defs/file`, for many rows at once."""
    keys = _TENSOR_KEYS if kind == "tensor" else _FILE_KEYS
    out: list[tuple[str, str]] = []
    for index, row in enumerate(rows, start):
        where = f"{path}/{index}"
        if not isinstance(row, dict):
            out.append((where, f"{row!r} is not of type 'object'"))
            continue
        for key, required in keys.items():
            if required and key not in row:
                out.append((where, f"{key!r} is a required property"))
        extra = [k for k in row if k not in keys]
        if extra:
            out.append((where, f"Additional properties are not allowed ({', '.join(map(repr, extra))} were unexpected)"))
        for key in ("name", "dtype", "path"):
            if key in row and key in keys and not (isinstance(row[key], str) and row[key]):
                out.append((f"{where}/{key}", f"{row[key]!r} is not a non-empty string"))
        if "nbytes" in row and not (_is_int(row["nbytes"]) and row["nbytes"] >= 0):
            out.append((f"{where}/nbytes", f"{row['nbytes']!r} is not an integer >= 0"))
        if "shape" in row and kind == "tensor":
            shape = row["shape"]
            if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
                out.append((f"{where}/shape", f"{shape!r} is not a list of integers >= 0"))
        if "hash" in row:
            digest = row["hash"]
            ok = (isinstance(digest, str) and _DIGEST.match(digest)) or (digest is None and kind == "tensor")
            if not ok:
                out.append((f"{where}/hash", f"{digest!r} is not a digest `<blake3|sha256>:<64 lowercase hex>`"))
    return out
