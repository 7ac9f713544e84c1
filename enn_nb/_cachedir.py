"""Where enn_nb keeps its caches: ``ENN_NB_CACHE_DIR``, else ``<project>/.cache/...`` in a source checkout, else
the user's cache folder (``~/.cache/enn_nb``...). Never the system temp folder. Read at call time."""

from __future__ import annotations

import os
import sys
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def project_cache() -> Path | None:
    """``<checkout>/.cache`` when enn_nb runs from its source checkout, else None."""
    pyproject = _PACKAGE_ROOT / "pyproject.toml"
    try:
        if pyproject.is_file() and 'name = "enn-nb"' in pyproject.read_text(encoding="utf-8"):
            return _PACKAGE_ROOT / ".cache"
    except OSError:
        pass
    return None


def user_cache() -> Path:
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "enn_nb"


def cache_dir() -> Path:
    """Where exported artifacts and fetched remote objects are stored for reuse."""
    env = os.environ.get("ENN_NB_CACHE_DIR")
    if env:
        return Path(env)
    project = project_cache()
    return project / "enn_nb" if project else user_cache()
