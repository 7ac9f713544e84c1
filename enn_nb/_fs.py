"""Atomic file writes, the one way enn_nb writes files: a temporary sibling, fsync, one rename, fsync of the folder.

Every writer (checkpoints, sidecars, parity vectors, backend artifacts, the export cache, report
notebooks and pages) goes through :func:`atomic_path` or the helpers built on it, so a crash or an
exception leaves either the old file or the new one, never a torn one, and a finished write
survives a power cut.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import errno
import os
import shutil
import stat
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from enn_nb.errors import OverwriteRefusedError

TEMP_MARK = ".enn-tmp-"  # temporary files and folders are named `.<final name>.enn-tmp-<id>`


def temp_path(final: Path, token: str | None = None) -> Path:
    """A hidden sibling of ``final`` (same folder, hence same filesystem: the rename is atomic).

    The name carries the writer's pid (``.<name>.enn-tmp-<pid>x<random>``) so a later save can tell
    the leftovers of a killed writer from the file of one still running.
    """
    final = Path(final)
    return final.with_name(f".{final.name}{TEMP_MARK}{token or new_token()}")


def new_token() -> str:
    return f"{os.getpid()}x{uuid.uuid4().hex[:12]}"


#: A leftover temporary of a live writer is swept only when it has not changed for this long.
STALE_LIVE_WRITER_S = 3600.0


def sweep_stale_temps(final: Path, started: float) -> list[Path]:
    """Remove the temporaries that killed writes to ``final`` left (call it after a write to it completed).

    A temporary is stale when it was last modified before this write ``started`` and its writer (the
    pid in its name) is gone, or when it has not changed for :data:`STALE_LIVE_WRITER_S`. Returns
    what was removed; errors are ignored (sweeping is housekeeping, the write already succeeded).
    """
    final = Path(final)
    removed: list[Path] = []
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
        pid_text = name[len(prefix):].removeprefix("old-").split("x", 1)[0]
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
    except OSError:  # another user's process: alive
        return True
    return True


def check_same_kind(final: Path, *, directory: bool, what: str = "file", error: type[Exception] | None = None) -> None:
    """Refuse to replace a file with a folder, a folder with a file, or anything not a regular file/folder.

    A symlink at ``final`` is replaced as a link (its target is never touched).

    Raises:
        ``error`` (default :class:`~enn_nb.errors.OverwriteRefusedError`): ``final`` is of another kind.
    """

    error = error or OverwriteRefusedError
    try:
        st = os.lstat(final)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        return
    article = "an" if what[0] in "aeiou" else "a"
    if stat.S_ISDIR(st.st_mode):
        if not directory:
            hint = ", or pass `format=\"dcp\"` to save a DCP directory there" if what == "checkpoint" else ""
            raise error(f"`{final}` is a directory and the {what} to write there is a file: enn_nb will not replace "
                        f"a directory with a file. Pick a file path{hint}.")
        return
    if stat.S_ISREG(st.st_mode):
        if directory:
            hint = " with a `.pt`/`.safetensors` suffix" if what == "checkpoint" else ""
            raise error(f"`{final}` is an existing file and the {what} to write there is a directory: enn_nb will "
                        f"not replace a file with a directory. Give a path{hint} or a new directory path.")
        return
    raise error(f"`{final}` is a special file (device, FIFO or socket), not {article} {what}; enn_nb never replaces "
                "one. Write to a regular path.")


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and TEMP_MARK in name


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (a no-op where folders cannot be opened)."""
    if sys.platform == "win32":
        return
    fsync_file(path)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync a file, or every file and folder under a folder (a directory artifact)."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        fsync_file(path)
        return
    for root, _dirs, files in os.walk(path):
        for name in files:
            fsync_file(Path(root) / name)
        fsync_dir(Path(root))


def remove_path(path: Path) -> None:
    """Delete a file or a folder tree; absent is fine."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``final`` to write (by any writer that takes a path); on success it
    is fsynced and renamed onto ``final``, and the folder is fsynced.

    An exception at any point leaves ``final`` as it was and removes the temporary file. Two writers
    racing each use their own temporary name, so the last rename wins with one complete file.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    try:
        yield tmp
        replace_path(tmp, final)
    except BaseException:
        remove_path(tmp)
        raise


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def replace_path(new: Path, dst: Path) -> None:
    """Move the finished file or folder ``new`` onto ``dst`` (same filesystem), durably.

    Everything under ``new`` is fsynced first. Files: one ``os.replace``. Folders: see
    :func:`replace_dir`. Either way the parent folder is fsynced after.
    """
    new, dst = Path(new), Path(dst)
    check_same_kind(dst, directory=new.is_dir())  # never a folder (a user's) for a file, nor a device or FIFO
    fsync_tree(new)
    if new.is_dir():
        replace_dir(new, dst)
        return
    os.replace(new, dst)
    fsync_dir(dst.parent)


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


def replace_dir(src: Path, final: Path) -> None:
    """Move the complete folder ``src`` onto ``final`` atomically, removing what was there.

    On Linux an existing ``final`` is swapped out in one ``renameat2(RENAME_EXCHANGE)`` and then
    deleted, so ``final`` always names a complete folder. Elsewhere the old one is renamed aside
    first (a crash in between leaves it at ``.<name>.enn-tmp-old-*``).
    """
    src, final = Path(src), Path(final)
    for _ in range(100):  # concurrent writers may keep replacing `final` under us
        check_same_kind(final, directory=True)  # never swap out a file, a device or a FIFO
        try:
            os.rename(src, final)  # succeeds when `final` is absent (or an empty folder)
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
            remove_path(src)  # `src` now names the old folder
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
    raise OSError(f"Could not move the new folder into `{final}`: other processes keep replacing it.")


def timestamp(when: _dt.datetime | None = None) -> str:
    """The one timestamp format of manifests, sidecars and provenance: UTC ISO 8601 with milliseconds,
    ``2026-11-29T19:33:55.123Z``."""
    when = when or _dt.datetime.now(_dt.timezone.utc)
    return when.astimezone(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
