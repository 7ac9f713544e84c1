"""File names of a sweep's outputs: one per matched file, readable and unique."""

from __future__ import annotations

import re


def slug(name: str) -> str:
    """``model-3.safetensors`` -> ``model-3_safetensors``: safe in a file name and a Dask key."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).replace(".", "_").strip("_") or "file"


def unique(stem: str, used: set[str]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``... when it is taken; records the name in ``used``."""
    candidate, n = stem, 2
    while candidate in used:
        candidate, n = f"{stem}-{n}", n + 1
    used.add(candidate)
    return candidate
