"""Checkpoint writes: refuse to replace what is not a checkpoint, then write through :mod:`enn_nb._fs`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from enn_nb._fs import atomic_path
from enn_nb._fs import fsync_dir, remove_path, replace_dir, temp_path  # noqa: F401  (dcp.py imports them from here)


def check_replaceable(final: Path, *, directory: bool) -> None:
    """Refuse to replace what is not a checkpoint of the kind being written.

    Saving onto an existing checkpoint replaces it; saving a file where a directory is, or a DCP
    directory where a directory of other files is (say a project folder), would destroy unrelated data.

    Raises:
        CheckpointError: ``final`` is an existing directory that must not be replaced.
    """
    from enn_nb.errors import CheckpointError

    if not final.is_dir() or final.is_symlink():
        return
    if not directory:
        raise CheckpointError(
            f"`{final}` is a directory; a .pt/.safetensors checkpoint is a file. Pick a file path, or pass "
            "`format=\"dcp\"` to save a DCP directory there."
        )
    from .detect import DCP_MANIFEST, DCP_METADATA, UPSTREAM_DCP_META

    names = set(os.listdir(final))
    if names and not names & {DCP_MANIFEST, DCP_METADATA, UPSTREAM_DCP_META}:
        shown = ", ".join(sorted(names)[:5]) + (" ..." if len(names) > 5 else "")
        raise CheckpointError(
            f"`{final}` is a directory holding other files ({shown}), not a checkpoint; enn_nb will not "
            "replace it. Save to a new path, e.g. a subdirectory."
        )


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed onto ``final``.

    A crash or an exception at any point leaves ``final`` as it was (the old checkpoint or nothing);
    on an exception the temporary file is removed. Two writers racing each use their own temporary
    file, so the last rename wins and ``final`` is always one complete file.
    """
    check_replaceable(final, directory=False)
    with atomic_path(final) as tmp:
        yield tmp
