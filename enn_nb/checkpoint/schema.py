"""The manifest's schema identifier, its JSON Schema file and validation against it."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from enn_nb.errors import CorruptCheckpointError, SchemaVersionError

SCHEMA_NAME = "enn_nb.checkpoint"
CURRENT_VERSION = 1
SCHEMA_ID = f"{SCHEMA_NAME}/{CURRENT_VERSION}"
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
        from enn_nb import __version__

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


def validate(document: dict[str, Any], *, where: str = "manifest", error: type[Exception] = CorruptCheckpointError) -> None:
    """Validate a current-version manifest document; all violations are listed in one error.

    Raises:
        CorruptCheckpointError: (or ``error``) the document does not follow the schema.
    """
    errors = sorted(_validator().iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [
            f"  - at `{'/'.join(str(p) for p in err.absolute_path) or '(root)'}`: {err.message[:300]}"
            for err in errors[:20]
        ]
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise error(
            f"The {where} does not follow `{SCHEMA_ID}` ({SCHEMA_FILE.name}):\n" + "\n".join(lines) + more
        )
