"""What to say about a path that does not exist: the close names beside it (``did you mean``)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path

#: Suffixes of single-file checkpoints (a DCP checkpoint is a folder).
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")


def did_you_mean(path: str | Path, suffixes: Iterable[str] | None = None) -> str:
    """``"; did you mean `runs/model.pt`?"`` from the entries near a path that does not exist, else ''.

    ``suffixes``: only files with one of these (folders always count); None: any entry.
    """
    path = Path(path)
    wanted = tuple(suffixes) if suffixes is not None else None
    folder = path.parent
    while not folder.is_dir():  # a wrong folder: look in the nearest one that exists
        if folder.parent == folder:
            return ""
        folder = folder.parent
    try:
        entries = [p for p in folder.iterdir() if wanted is None or p.is_dir() or p.suffix in wanted]
    except OSError:
        return ""
    names = {p.name: p for p in entries if not p.name.startswith(".")}
    close = difflib.get_close_matches(path.name, list(names), n=3, cutoff=0.5)
    if not close:
        return ""
    shown = [str(names[name]) if folder != Path(".") else name for name in close]
    return "; did you mean " + " or ".join(f"`{s}`" for s in shown) + "?"
