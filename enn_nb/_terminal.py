"""The one line a plain script's ``save``/``export`` prints on a terminal (a notebook displays the result instead)."""

from __future__ import annotations

import sys


def watched() -> bool:
    """A person reads stderr: it is a terminal, and no IPython shell displays results instead."""
    ipython = sys.modules.get("IPython")
    if ipython is not None and getattr(ipython, "get_ipython", lambda: None)() is not None:
        return False
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def announce(line: str, *, quiet: bool) -> None:
    """Print ``line`` to stderr when :func:`watched` and not ``quiet`` (stdout stays the script's own)."""
    if not quiet and watched():
        print(line, file=sys.stderr, flush=True)
