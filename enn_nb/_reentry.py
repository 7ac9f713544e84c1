"""Refuse enn_nb's writing calls (save, export, convert, report) when they run only because a module was imported.

Two places import a user's module without meaning to run its top-level code: ``--model pkg.module:factory``
(the module is imported to reach the factory) and an export worker (unpickling a model imports its
class's module). A module that saves or exports at its top level (the README's examples do) would then
overwrite the checkpoint being read, or start an export inside an export, whose workers import the
module again. Both are refused with one line naming the module's line and the ``__main__`` guard.
"""

from __future__ import annotations

import contextlib
import os
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path

from enn_nb.errors import SideEffectError

#: Set in an export worker's environment (and so in every process the worker starts).
WORKER_ENV = "ENN_NB_WORKER"

_state = threading.local()
_PACKAGE = str(Path(__file__).resolve().parent)
GUARD = 'put the module\'s top-level code under `if __name__ == "__main__":`'


@contextlib.contextmanager
def importing_factory(ref: str) -> Iterator[None]:
    """While the body runs (the import behind ``--model ref``), enn_nb's writing calls are refused."""
    previous = getattr(_state, "factory", None)
    _state.factory = ref
    try:
        yield
    finally:
        _state.factory = previous


def worker_environment(env: dict[str, str]) -> dict[str, str]:
    """``env`` marked as an export worker's: enn_nb's writing calls are refused in it and below it."""
    env[WORKER_ENV] = "1"
    return env


def in_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


def check(call: str) -> None:
    """Raise SideEffectError when ``call`` (e.g. ``"enn_nb.save"``) runs inside a factory import or a worker."""
    factory = getattr(_state, "factory", None)
    if factory is None and not in_worker():
        return
    origin = _user_line()
    where = f" (from {origin})" if origin else ""
    if factory is not None:
        module = factory.partition(":")[0]
        why = (f"it ran while enn_nb imported `{module}` for `--model {factory}`, and importing a factory must "
               "never write files")
    else:
        why = "it ran inside an enn_nb export worker, which imported a module that saves or exports at its top level"
    raise SideEffectError(f"`{call}` refused{where}: {why}; {GUARD}.", call=call, origin=origin)


def _user_line() -> str:
    """``tagger.py:19`` for the innermost frame outside enn_nb and the import machinery, else ''."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        name = str(Path(frame.filename).resolve()) if not frame.filename.startswith("<") else frame.filename
        if name.startswith(_PACKAGE) or frame.filename.startswith("<frozen"):
            continue
        return f"{Path(frame.filename).name}:{frame.lineno}"
    return ""
