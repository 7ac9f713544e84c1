"""Checkpoint writes: refuse to replace what is not a checkpoint, then write through :mod:`enn_nb._fs`."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb._fs import atomic_path, check_same_kind, sweep_stale_temps
from enn_nb._fs import fsync_dir, new_token, remove_path, replace_dir, temp_path  # noqa: F401  (dcp.py imports them from here)
from enn_nb.errors import CheckpointError, CheckpointWriteError, EnnError

from .detect import DCP_MANIFEST, DCP_METADATA, UPSTREAM_DCP_META

if TYPE_CHECKING:
    from enn_nb.storage import Remote


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


@contextlib.contextmanager
def atomic_stream(final: Path | Remote) -> Iterator[Any]:
    """A binary file to write the checkpoint ``final`` (a local path or a URL); it is replaced only on success.

    Local: :func:`atomic_file` (temporary sibling, fsync, rename). On a store: one upload that is
    completed at the end and aborted on an exception (:func:`enn_nb.storage.open_atomic`).
    """
    if isinstance(final, Path):
        with atomic_file(final) as tmp, open(tmp, "wb") as fh:
            yield fh
        return
    from enn_nb.storage import open_atomic

    check_replaceable_remote(final, directory=False)
    with open_atomic(final) as fh:
        yield fh


def check_replaceable_remote(final: Remote, *, directory: bool) -> None:
    """The store version of :func:`check_replaceable`: never replace a folder of other objects, nor a file by a folder.

    Raises:
        CheckpointError: ``final`` holds what a save must not replace.
    """
    from enn_nb.errors import CheckpointError

    from .detect import DCP_MANIFEST, DCP_METADATA

    try:
        is_dir = final.is_dir()
        is_file = not is_dir and final.is_file()
    except Exception as exc:  # noqa: BLE001 - the store's own error types
        from enn_nb.storage import store_error

        raise store_error(final, exc, writing=True) from None
    if is_dir and not directory:
        raise CheckpointError(f"`{final}` is a folder on the store and the checkpoint to write there is a file: enn_nb "
                              "will not replace a folder with a file. Pick a file URL, or pass `format=\"dcp\"`.")
    if is_file and directory:
        raise CheckpointError(f"`{final}` is an existing object and the checkpoint to write there is a DCP folder: "
                              "enn_nb will not replace it. Give a new folder URL.")
    if is_dir and directory:
        names = {n.rstrip("/").rsplit("/", 1)[-1] for n in final.fs.ls(final.path, detail=False)}
        if names and not names & {DCP_MANIFEST, DCP_METADATA}:
            shown = ", ".join(sorted(names)[:5]) + (" ..." if len(names) > 5 else "")
            raise CheckpointError(f"`{final}` is a folder holding other objects ({shown}), not a checkpoint; enn_nb will "
                                  "not replace it. Save to a new URL, e.g. a subfolder.")


def write_error(final: Path, exc: OSError) -> Exception:
    """The enn_nb error for a failed write to ``final`` (keeps errno and strerror; the old content is intact)."""

    return CheckpointWriteError(
        exc.errno, f"{exc.strerror or exc} while writing `{final}`; nothing was replaced (the previous checkpoint, if "
        "any, is intact). Free disk space, check permissions, or save elsewhere."
    )
