"""enn_nb: save ENN-style PyTorch models so they restore exactly, and export them to external runtimes.

The public API is imported lazily: ``import enn_nb`` (and ``%load_ext enn_nb``) import no heavy
package; torch and the backends load when a function that needs them is first called.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from enn_nb import _moved
from enn_nb._version import __version__
from enn_nb.errors import EnnError
from enn_nb.model.spec import ModelSpec, build, builders, register_builder

if TYPE_CHECKING:
    from enn_nb.checkpoint import Loaded, Manifest, inspect, load, save
    from enn_nb.engine import ExportReport, export, export_safe, register_backend, verify
    from enn_nb.engine.registry import backends
    from enn_nb.surfaces.notebook.wizard import wizard
    from enn_nb.surfaces.reports import report, report_batch
    from enn_nb.surfaces.sweep import export_many

# public name -> module that defines it
_LAZY = {
    "save": "enn_nb.checkpoint",
    "load": "enn_nb.checkpoint",
    "inspect": "enn_nb.checkpoint",
    "convert": "enn_nb.checkpoint",
    "Manifest": "enn_nb.checkpoint",
    "Loaded": "enn_nb.checkpoint",
    "export": "enn_nb.engine.pipeline",
    "export_safe": "enn_nb.engine.safe",
    "backends": "enn_nb.engine.registry",
    "register_backend": "enn_nb.engine.registry",
    "ExportReport": "enn_nb.engine.report",
    "verify": "enn_nb.engine.verify_artifact",
    "wizard": "enn_nb.surfaces.notebook.wizard",
    "report": "enn_nb.surfaces.reports",
    "report_batch": "enn_nb.surfaces.reports",
    "export_many": "enn_nb.surfaces.sweep",
}

__all__ = [
    "__version__",
    "EnnError",
    "ModelSpec",
    "build",
    "builders",
    "register_builder",
    "load_ipython_extension",
    "unload_ipython_extension",
    *_LAZY,
]


_moved.install()


def __getattr__(name: str) -> Any:
    if f"enn_nb.{name}" in _moved.MOVED:  # `enn_nb.spec` etc. as attributes, as before the layout change
        return importlib.import_module(f"enn_nb.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'enn_nb' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # Tab completion and dir() show the lazy names before they are first touched.
    return sorted(set(globals()) | set(__all__))


def load_ipython_extension(ipython: Any) -> None:
    from enn_nb.surfaces.notebook.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from enn_nb.surfaces.notebook.magics import unload_ipython_extension as unload

    unload(ipython)
