"""Bounded, confined reads of untrusted files, and terminal-safe text.

Everything enn_nb reads from a checkpoint or an artifact directory may have been written by someone
else: a path inside it must stay inside it (symlinks included), a file must be a regular file (a FIFO
blocks, ``/dev/zero`` never ends) and no read may exceed a size fixed before reading.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from enn_nb.errors import CorruptCheckpointError, EnnError, SpecError

#: JSON documents enn_nb reads (manifests, ``meta.json``, sidecars, safetensors sidecars).
MAX_JSON_BYTES = 64 * 1024 * 1024
#: DCP's ``.metadata`` pickle (a few hundred bytes per tensor).
MAX_DCP_METADATA_BYTES = 256 * 1024 * 1024
#: Nesting depth of any JSON document enn_nb parses (Python's json recursion would raise first).
MAX_JSON_DEPTH = 64


#: Example inputs enn_nb draws itself (from a shape or a spec's ``in_dim``): 16 Mi values (64 MiB of float32).
MAX_EXAMPLE_ELEMENTS = 1 << 24


def check_example_shape(shape: object, *, what: str) -> tuple[int, ...]:
    """``shape`` as a tuple of positive ints whose product stays under :data:`MAX_EXAMPLE_ELEMENTS`.

    Raises:
        SpecError: not a list of positive integers, or too many values (names the limit).
    """

    if not isinstance(shape, (list, tuple)) or not shape or not all(type(d) is int and d > 0 for d in shape):
        raise SpecError(f"`{what}` is {shape!r}; expected a shape of positive integers such as [2, 32].")
    if math.prod(shape) > MAX_EXAMPLE_ELEMENTS:
        raise SpecError(f"`{what}` {list(shape)} has {math.prod(shape)} values, more than the {MAX_EXAMPLE_ELEMENTS} "
                        "enn_nb draws as example inputs; pass a smaller shape or your own tensors.")
    return tuple(shape)


def check_regular(path: Path, *, what: str, error: type[EnnError] = CorruptCheckpointError) -> os.stat_result:
    """``os.stat`` of ``path`` when it is a regular file (symlinks followed); else a one-line error."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise error(f"{what} `{path}` cannot be read: {exc.strerror or exc}.") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} `{path}` is {_kind(st.st_mode)}, not a regular file; enn_nb refused to read it.")
    return st


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


@contextlib.contextmanager
def _open_regular(path: Path, what: str, error: type[EnnError]) -> Iterator[tuple[int, os.stat_result]]:
    """(descriptor, fstat) of ``path`` opened non-blocking, when it is a regular file.

    Checked with ``fstat`` on the open descriptor, so a FIFO or device put there after a first
    check can neither block the open nor stream forever.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"{what} `{path}` cannot be read: {exc.strerror or exc}.") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} `{path}` is {_kind(st.st_mode)}, not a regular file; enn_nb refused to read it.")
        yield fd, st
    except OSError as exc:
        if isinstance(exc, EnnError):
            raise
        raise error(f"{what} `{path}` cannot be read: {exc.strerror or exc}.") from None
    finally:
        os.close(fd)


def read_capped(path: Path, limit: int, *, what: str, error: type[EnnError] = CorruptCheckpointError) -> bytes:
    """The bytes of the regular file ``path``, refusing anything larger than ``limit``."""
    chunks: list[bytes] = []
    with _open_regular(path, what, error) as (fd, st):
        if st.st_size > limit:
            raise error(f"{what} `{path}` is {st.st_size} bytes, more than the {limit}-byte limit for such a "
                        "file; it is damaged or hostile.")
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    data = b"".join(chunks)
    if len(data) > limit:  # grew while being read
        raise error(f"{what} `{path}` is larger than the {limit}-byte limit; it is damaged or hostile.")
    return data


def read_head(path: Path, n: int, *, what: str, error: type[EnnError] = CorruptCheckpointError) -> tuple[bytes, int]:
    """(first ``n`` bytes, size) of the regular file ``path``; a FIFO, device or socket is refused unopened."""
    with _open_regular(path, what, error) as (fd, st):
        return os.read(fd, n), st.st_size


def json_loads(text: str | bytes, *, what: str, error: type[EnnError] = CorruptCheckpointError) -> object:
    """``json.loads`` with the nesting depth bounded (deep nesting would raise RecursionError)."""

    if _depth_exceeds(text, MAX_JSON_DEPTH):
        raise error(f"{what} nests deeper than {MAX_JSON_DEPTH} levels; it is damaged or hostile.")
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise error(f"{what} is not valid JSON ({str(exc)[:200]}); the file is damaged.") from None


_NOT_STRUCTURAL = bytes(b for b in range(256) if b not in b'[]{}"\\')


def _depth_exceeds(text: str | bytes, limit: int) -> bool:
    """True when brackets outside strings nest deeper than ``limit`` (a linear scan, no parsing)."""
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    data = data.translate(None, _NOT_STRUCTURAL)  # only brackets, quotes and backslashes matter: a short loop
    depth = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def confined(base: Path, relative: object, *, what: str, error: type[EnnError] = CorruptCheckpointError,
             must_exist: bool = True) -> Path:
    """``base / relative`` when it stays inside ``base`` after resolving ``..`` and symlinks.

    Raises:
        ``error``: ``relative`` is not a string, is absolute, or resolves outside ``base``.
    """
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise error(f"{what} names the path {relative!r}, which is not a relative file name inside `{base}`.")
    rel = Path(relative)
    if rel.is_absolute() or relative.startswith(("/", "\\")) or ".." in rel.parts:
        raise error(f"{what} names `{escape(relative)}`, a path outside `{base}`; enn_nb reads only files inside "
                    "the checkpoint/artifact directory and refused it.")
    root = base.resolve()
    target = (base / rel)
    resolved = target.resolve(strict=False)
    if resolved != root and root not in resolved.parents:
        raise error(f"{what} `{escape(relative)}` resolves to `{resolved}`, outside `{base}` (a symlink?); enn_nb "
                    "refused to read it.")
    if must_exist and not target.exists():
        raise error(f"{what} `{escape(relative)}` is missing from `{base}`.")
    return target


def plain_name(name: object, *, what: str, error: type[EnnError] = CorruptCheckpointError) -> str:
    """``name`` when it is one file name (no separator, not ``.``/``..``): DCP shard names are."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\x00" in name):
        raise error(f"{what} names the file {escape(repr(name))}, which is not a plain file name inside the "
                    "checkpoint directory; enn_nb refused it.")
    return name


# -- terminal output ---------------------------------------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def escape(text: object) -> str:
    """``text`` on one line with control characters (ANSI escapes, carriage returns, bidi overrides) made visible:
    ``\\n`` and ``\\t`` as those escapes, the others as ``\\xNN``/``\\uNNNN``."""
    s = str(text).replace("\n", "\\n").replace("\t", "\\t")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", s)
