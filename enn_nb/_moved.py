"""Old module paths kept working after the 0.x layout change (issue 23), with a deprecation warning.

``enn_nb.spec`` became ``enn_nb.model.spec``, the surfaces moved under ``enn_nb.surfaces``, and so on
(:data:`MOVED`). Importing an old path returns the *same* module object as the new one (not a copy),
so ``isinstance`` checks, monkeypatching and pickles written under either name keep working. The
old names live only here: there are no shim files at the old paths, which keeps each move a plain
rename in git.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import warnings
from types import ModuleType

#: old dotted path -> new dotted path; a package's entry covers the modules inside it.
MOVED: dict[str, str] = {
    "enn_nb.spec": "enn_nb.model.spec",
    "enn_nb.signature": "enn_nb.model.signature",
    "enn_nb.fastpaths": "enn_nb.model.fastpaths",
    "enn_nb.provenance": "enn_nb.model.provenance",
    "enn_nb.notebook": "enn_nb.surfaces.notebook",
    "enn_nb.reports.cli": "enn_nb.surfaces.cli.report",
    "enn_nb.reports": "enn_nb.surfaces.reports",
    "enn_nb.cli": "enn_nb.surfaces.cli",
    "enn_nb.checkpoint.cli": "enn_nb.surfaces.cli.checkpoint",
    "enn_nb.engine.cli": "enn_nb.surfaces.cli.export",
    "enn_nb.plots": "enn_nb.surfaces.plots",
    "enn_nb.demo": "enn_nb.surfaces.demo",
    "enn_nb.factory": "enn_nb.surfaces.factory",
}


def new_name(old: str) -> str | None:
    """The current path of module ``old``, or None when ``old`` did not move."""
    for prefix in sorted(MOVED, key=len, reverse=True):  # the most specific entry wins
        if old == prefix or old.startswith(prefix + "."):
            return MOVED[prefix] + old[len(prefix):]
    return None


class _Alias:
    """A loader that hands out the module already imported under its new name (no importlib.abc: it
    would make ``import enn_nb`` import twenty more modules)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self._spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system stamped the alias spec on the module; give it back its own.
        old = module.__spec__.name if module.__spec__ is not None else "?"
        module.__spec__ = self._spec
        warnings.warn(f"`{old}` moved to `{self.target}`: import it from there (the old path will be removed)",
                      DeprecationWarning, stacklevel=2)


    def get_code(self, fullname: str) -> object:
        # `python -m enn_nb.demo` (runpy) asks for code, not a module: run the new module's code.
        import importlib.util

        spec = importlib.util.find_spec(self.target)
        return spec.loader.get_code(self.target) if spec and spec.loader else None  # type: ignore[attr-defined]


class _Finder:
    """A meta path finder for the old paths."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        new = new_name(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(new), is_package=False)


def install() -> None:
    """Put the old-path finder first on ``sys.meta_path`` (once): a stale folder at an old path must not win."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
