"""Checkpoint writes: refuse to replace what is not a checkpoint, then write through :mod:`enn_nb._fs`."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from enn_nb._fs import atomic_path, check_same_kind, sweep_stale_temps
from enn_nb._fs import fsync_dir, new_token, remove_path, replace_dir, temp_path  # noqa: F401  (dcp.py imports them from here)
from enn_nb.errors import CheckpointError, CheckpointWriteError, EnnError

from .detect import DCP_MANIFEST, DCP_METADATA, UPSTREAM_DCP_META


def check_replaceable(final: Path, *, directory: bool) -> None:
    """Refuse to replace what is not a checkpoint of the kind being written.

    Saving onto an existing checkpoint replaces it; saving a file where a directory is, or a DCP
    directory where a directory of other files is (say a project folder), would destroy unrelated data.

    Raises:
        CheckpointError: ``final`` is an existing directory that must not be replaced.
    """

    check_same_kind(final, directory=directory, what="checkpoint", error=CheckpointError)
    if not final.is_dir() or final.is_symlink():
        return

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
    started = time.time()
    try:
        with atomic_path(final) as tmp:
            yield tmp
    except OSError as exc:
        if isinstance(exc, EnnError):
            raise
        raise write_error(final, exc) from exc
    sweep_stale_temps(final, started)


def write_error(final: Path, exc: OSError) -> Exception:
    """The enn_nb error for a failed write to ``final`` (keeps errno and strerror; the old content is intact)."""

    return CheckpointWriteError(
        exc.errno, f"{exc.strerror or exc} while writing `{final}`; nothing was replaced (the previous checkpoint, if "
        "any, is intact). Free disk space, check permissions, or save elsewhere."
    )
