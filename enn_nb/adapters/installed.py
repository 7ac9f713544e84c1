"""Import an adapter's library from its installed distribution only, never from the working folder."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from enn_nb.errors import BrokenDependencyError


def import_installed(package: str, distribution: str) -> Any:
    """Import the top-level ``package`` from the files of the installed ``distribution`` only.

    A plain ``import`` searches ``sys.path`` in order, and its first entry is the working folder
    (``python -c``, notebooks, IPython): an ``enn_torch.py`` next to a downloaded checkpoint would
    run. Here the package's ``__init__.py`` is taken from the distribution's own file list and
    loaded from there; a module already imported must come from those files too.

    Raises:
        ImportError: the distribution is not installed, or lists no such package (an editable
            install, whose files live elsewhere, is not followed).
        BrokenDependencyError: ``package`` was already imported from a file outside the distribution.
    """
    import importlib.metadata
    import importlib.util

    if package in sys.modules and sys.modules[package] is None:  # Python's mark for "import blocked"
        raise ImportError(f"import of `{package}` halted; None in sys.modules")
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(f"no installed distribution `{distribution}`") from None
    located = {Path(str(f.locate())).resolve() for f in files if f.parts and f.parts[0] in (package, f"{package}.py")}
    init = next((p for p in located if p.name == "__init__.py" and p.parent.name == package), None)
    init = init or next((p for p in located if p.name == f"{package}.py"), None)
    if init is None or not init.is_file():
        raise ImportError(f"the distribution `{distribution}` installs no `{package}` package files")
    loaded = sys.modules.get(package)
    if loaded is not None:
        origin = getattr(getattr(loaded, "__spec__", None), "origin", None)
        if origin is None or Path(origin).resolve() not in located:
            raise BrokenDependencyError(
                f"`{package}` is already imported from `{origin}`, not from the installed distribution "
                f"`{distribution}` ({init.parent}); enn_nb will not build models with it. Restart the kernel from "
                f"a folder without a `{package}` module of its own.", package=package)
        return loaded
    spec = importlib.util.spec_from_file_location(
        package, init, submodule_search_locations=[str(init.parent)] if init.name == "__init__.py" else None)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load `{package}` from `{init}`")
    module = importlib.util.module_from_spec(spec)
    sys.modules[package] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(package, None)
        raise
    return module
