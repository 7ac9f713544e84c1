"""Small text formats shared by the core and the notebook: byte sizes, parameter counts."""

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


def model_counts(model: object) -> tuple[int, int]:
    """``(parameters, values)`` of a module: trainable-or-not parameters, and every tensor value its
    ``state_dict`` (so its checkpoint) holds, buffers included."""
    parameters = sum(p.numel() for p in model.parameters())  # type: ignore[attr-defined]
    values = sum(t.numel() for t in model.state_dict().values() if hasattr(t, "numel"))  # type: ignore[attr-defined]
    return parameters, values


def count_text(parameters: int | None, values: int) -> str:
    """The one labelled count: ``18,340 parameters (18,452 values with buffers)``; ``18,340 parameters`` when
    the model has no buffers; ``18,452 values (parameters + buffers)`` when only the checkpoint is known."""
    if parameters is None:
        return f"{values:,} values (parameters + buffers)"
    if parameters == values:
        return f"{parameters:,} parameters"
    return f"{parameters:,} parameters ({values:,} values with buffers)"
