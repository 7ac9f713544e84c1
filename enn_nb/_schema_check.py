"""JSON Schema checks in milliseconds: a compiled validator says "valid", jsonschema explains "why not".

``import jsonschema`` takes seconds (its format checkers build an RFC 3987 grammar at import), which
every first checkpoint save and every first sidecar paid. Documents enn_nb writes are valid almost
always, so a validator compiled from the same schema file by ``fastjsonschema`` (built once, lazily,
in tens of milliseconds) answers first; jsonschema, the reference, is imported only to list the
problems of a document the compiled one refused, and its verdict is the one that counts.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


@functools.lru_cache(maxsize=None)
def _compiled(schema_file: Path) -> Callable[[Any], Any] | None:
    try:
        import fastjsonschema

        return fastjsonschema.compile(json.loads(schema_file.read_text(encoding="utf-8")))
    except Exception:  # noqa: BLE001 - no compiled validator: every document takes the reference path
        return None


def passes_compiled(schema_file: Path, document: Any) -> bool:
    """True when the compiled validator of ``schema_file`` accepts ``document`` (False: ask jsonschema)."""
    check = _compiled(schema_file)
    if check is None:
        return False
    try:
        check(document)
    except Exception:  # noqa: BLE001 - any refusal or validator failure defers to jsonschema
        return False
    return True


def warm_up(schema_file: Path) -> None:
    """Compile the validator now (the engine does it in a background thread while backends convert)."""
    _compiled(schema_file)
