"""The files a ``--each`` glob names: like :func:`glob.glob` with ``recursive=True``, but ``**`` never
follows a symlinked directory and the matches are capped.

Python's ``**`` descends into symlinked directories: two links to ``.`` in one folder make it walk
2^depth paths (minutes, then memory). Here ``**`` walks the real tree (``os.walk`` without following
links); a link is still matched as a name, and a literal or ``*`` component may still go through one.
"""

from __future__ import annotations

import fnmatch
import glob
import os

from enn_nb._safeio import escape
from enn_nb.errors import ReportError

#: More matches than this is a mistake (or a trap), not a batch of reports.
MAX_MATCHES = 10_000


def expand(pattern: str, *, limit: int = MAX_MATCHES) -> list[str]:
    """The sorted paths matching ``pattern`` (``~`` expanded; hidden names only where the pattern says so).

    Raises:
        ReportError: more than ``limit`` paths match (or are walked through on the way).
    """
    pattern = os.path.expanduser(pattern)
    if not glob.has_magic(pattern):
        return [pattern] if os.path.lexists(pattern) else []
    absolute = pattern.startswith(os.sep)
    parts = [p for p in pattern.split(os.sep) if p]
    found: list[str] = [os.sep if absolute else ""]
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        step: list[str] = []
        for base in found:
            if part == "**":
                step.extend(_walk(base, files=last))
            elif glob.has_magic(part):
                step.extend(_join(base, name) for name in _names(base)
                            if (part.startswith(".") or not name.startswith(".")) and fnmatch.fnmatchcase(name, part))
            elif os.path.lexists(_join(base, part)):
                step.append(_join(base, part))
            if len(step) > limit:
                raise ReportError(f"`{escape(pattern)}` matches more than {limit} paths; narrow the pattern (a `**` "
                                  "over a large tree?).")
        found = list(dict.fromkeys(step))  # `a/**/**/b` reaches a path twice
        if not last:
            found = [p for p in found if os.path.isdir(p or ".")]
    return sorted(p for p in found if p)


def _join(base: str, name: str) -> str:
    return os.path.join(base, name) if base else name


def _names(base: str) -> list[str]:
    try:
        return os.listdir(base or ".")
    except OSError:  # not a directory, gone, or unreadable: no matches below it, as with glob
        return []


def _walk(base: str, *, files: bool) -> list[str]:
    """``base`` and every directory below it (and every file, for a trailing ``**``), hidden ones left out,
    symlinked directories not entered."""
    out = [base]
    for root, dirs, names in os.walk(base or ".", followlinks=False):
        # os.walk lists a symlinked folder among `dirs` without entering it: leave it out altogether
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not os.path.islink(os.path.join(root, d)))
        rel = os.path.relpath(root, base or ".")
        prefix = base if rel == "." else _join(base, rel)
        out.extend(_join(prefix, d) for d in dirs)
        if files:
            out.extend(_join(prefix, n) for n in sorted(names) if not n.startswith("."))
    return out
