"""Atomic writes: a temporary path in the same directory, fsync, then one rename into place."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from enn_nb.errors import EnnError

TEMP_MARK = ".enn-tmp-"  # temporary files and directories are named `.<final name>.enn-tmp-<id>`


def temp_path(final: Path, token: str | None = None) -> Path:
    """A hidden sibling of ``final`` (same directory, hence same filesystem: the rename is atomic).

    The name carries the writer's pid (``.<name>.enn-tmp-<pid>x<random>``) so a later save can tell
    the leftovers of a killed writer from the file of one still running.
    """
    return final.with_name(f".{final.name}{TEMP_MARK}{token or new_token()}")


def new_token() -> str:
    return f"{os.getpid()}x{uuid.uuid4().hex[:12]}"


#: A leftover temporary of a live writer is swept only when it has not changed for this long.
STALE_LIVE_WRITER_S = 3600.0


def sweep_stale_temps(final: Path, started: float) -> list[Path]:
    """Remove the temporaries that killed saves to ``final`` left (called after a save to it completed).

    A temporary is stale when it was last modified before this save ``started`` and its writer (the
    pid in its name) is gone, or when it has not changed for :data:`STALE_LIVE_WRITER_S`. Returns
    what was removed; errors are ignored (sweeping is housekeeping, the save already succeeded).
    """
    removed = []
    prefix = f".{final.name}{TEMP_MARK}"
    try:
        names = [n for n in os.listdir(final.parent) if n.startswith(prefix)]
    except OSError:
        return removed
    now = time.time()
    for name in names:
        path = final.parent / name
        try:
            mtime = path.lstat().st_mtime
        except OSError:
            continue
        token = name[len(prefix):].removeprefix("old-")
        pid_text = token.split("x", 1)[0]
        alive = pid_text.isdigit() and _pid_alive(int(pid_text))
        if (not alive and mtime < started) or now - mtime > STALE_LIVE_WRITER_S:
            remove_path(path)
            removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def check_same_kind(final: Path, *, directory: bool, what: str = "checkpoint") -> None:
    """Refuse to replace a file with a directory, a directory with a file, or anything not a regular file/directory.

    A symlink at ``final`` is replaced as a link (its target is never touched).

    Raises:
        CheckpointError: ``final`` exists and is of another kind (the message names it and the fix).
    """
    from enn_nb.errors import CheckpointError

    try:
        st = os.lstat(final)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        return
    if stat.S_ISDIR(st.st_mode):
        if not directory:
            hint = ", or pass `format=\"dcp\"` to save a DCP directory there" if what == "checkpoint" else ""
            raise CheckpointError(
                f"`{final}` is a directory and the {what} to write there is a file: enn_nb will not replace a "
                f"directory with a file. Pick a file path{hint}."
            )
        return
    if stat.S_ISREG(st.st_mode):
        if directory:
            hint = " with a `.pt`/`.safetensors` suffix" if what == "checkpoint" else ""
            raise CheckpointError(
                f"`{final}` is an existing file and the {what} to write there is a directory: enn_nb will not "
                f"replace a file with a directory. Give a path{hint} or a new directory path."
            )
        return
    raise CheckpointError(
        f"`{final}` is a special file (device, FIFO or socket), not {'an' if what[0] in 'aeiou' else 'a'} {what}; "
        "enn_nb never replaces one. "
        "Save to a regular path."
    )


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and TEMP_MARK in name


def write_error(final: Path, exc: OSError) -> Exception:
    """The enn_nb error for a failed write to ``final`` (keeps errno and strerror; the old content is intact)."""
    from enn_nb.errors import CheckpointWriteError

    err = CheckpointWriteError(
        exc.errno, f"{exc.strerror or exc} while writing `{final}`; nothing was replaced (the previous checkpoint, if "
        "any, is intact). Free disk space, check permissions, or save elsewhere."
    )
    return err


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (a no-op where directories cannot be opened)."""
    if sys.platform == "win32":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_replaceable(final: Path, *, directory: bool) -> None:
    """Refuse to replace what is not a checkpoint of the kind being written.

    Saving onto an existing checkpoint replaces it; saving a file where a directory is, or a DCP
    directory where a directory of other files is (say a project folder), would destroy unrelated data.

    Raises:
        CheckpointError: ``final`` is an existing directory that must not be replaced.
    """
    from enn_nb.errors import CheckpointError

    check_same_kind(final, directory=directory)
    if not final.is_dir() or final.is_symlink():
        return
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
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    started = time.time()
    try:
        yield tmp
        fsync_file(tmp)
        check_same_kind(final, directory=False)  # may have appeared while we wrote
        os.replace(tmp, final)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, EnnError):
            raise write_error(final, exc) from exc
        raise
    fsync_dir(final.parent)
    sweep_stale_temps(final, started)


# -- directories -------------------------------------------------------------------------------------
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # old kernel or filesystem without it
        return False
    raise OSError(err, os.strerror(err), str(b))


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def replace_dir(src: Path, final: Path) -> None:
    """Move the complete directory ``src`` onto ``final`` atomically, removing what was there.

    On Linux an existing ``final`` is swapped out in one ``renameat2(RENAME_EXCHANGE)`` and then
    deleted, so ``final`` always names a complete checkpoint. Elsewhere the old one is renamed aside
    first (a crash in between leaves it at ``.<name>.enn-tmp-old-*``).
    """
    for _ in range(100):  # concurrent savers may keep replacing `final` under us
        check_same_kind(final, directory=True)  # never swap out a file, a device or a FIFO
        try:
            os.rename(src, final)  # succeeds when `final` is absent (or an empty directory)
            fsync_dir(final.parent)
            return
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EPERM):
                raise
        try:
            swapped = _exchange(src, final)
        except FileNotFoundError:
            continue  # `final` vanished between the two calls: rename again
        if swapped:
            fsync_dir(final.parent)
            remove_path(src)  # `src` now names the old checkpoint
            return
        aside = temp_path(final, "old-" + new_token())
        try:
            os.rename(final, aside)
        except FileNotFoundError:
            continue
        os.rename(src, final)
        fsync_dir(final.parent)
        remove_path(aside)
        return
    raise OSError(f"Could not move the new checkpoint into `{final}`: other processes keep replacing it.")
