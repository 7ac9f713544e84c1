"""Small text formats shared by the core and the notebook: byte sizes."""

from __future__ import annotations


def human_size(n: int | None) -> str:
    """``1536`` -> ``"1.5 KiB"``; ``None`` -> ``""``."""
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # unreachable, keeps type checkers calm
