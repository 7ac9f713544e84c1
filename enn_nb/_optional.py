"""The one place heavy optional packages are imported by name."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

from enn_nb.errors import BrokenDependencyError, MissingDependencyError, pip_line

# import name -> (pip distribution, enn-nb extra that installs it)
PACKAGES: dict[str, tuple[str, str]] = {
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "onnxscript": ("onnxscript", "onnx"),
    "executorch": ("executorch", "executorch"),
    "litert_torch": ("litert-torch", "litert"),
    "ai_edge_litert": ("ai-edge-litert", "litert"),
    "coremltools": ("coremltools", "coreml"),
    "tensorflow": ("tensorflow", "tensorflow"),
    "onnx2tf": ("onnx2tf", "tensorflow"),
    "tensorrt": ("tensorrt", "tensorrt"),
    "polygraphy": ("polygraphy", "tensorrt"),
    "ipywidgets": ("ipywidgets", "notebook"),
    "papermill": ("papermill", "notebook"),
    "nbformat": ("nbformat", "notebook"),
    "nbclient": ("nbclient", "notebook"),
    "nbconvert": ("nbconvert", "notebook"),
    "matplotlib": ("matplotlib", "notebook"),
}


def install_line(module: str) -> str:
    """The ``%pip install`` line that brings ``module``."""
    dist, extra = PACKAGES.get(module, (module, ""))
    return pip_line(extra=extra, dist=dist)


def is_installed(module: str) -> bool:
    """True when ``module`` can be found, without importing it."""

    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, *, purpose: str = "") -> ModuleType:
    """Import an optional package, or raise one clear error.

    Args:
        module: import name, e.g. ``"coremltools"`` or ``"executorch.runtime"``.
        purpose: what needs it, e.g. ``"the `coreml` backend"``; shown in the message.

    Raises:
        MissingDependencyError: not installed; the message holds the ``%pip install`` line.
        BrokenDependencyError: installed but importing it raised; the cause is chained.
    """
    top = module.split(".")[0]
    dist, extra = PACKAGES.get(top, (top, ""))
    needed_by = f" (needed by {purpose})" if purpose else ""
    if not is_installed(top):
        raise MissingDependencyError(
            f"`{top}` is not installed{needed_by}. Install it with: {install_line(top)}",
            package=dist,
            extra=extra,
        ) from None
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if getattr(exc, "name", None) == top and not is_installed(top):
            raise MissingDependencyError(
                f"`{top}` is not installed{needed_by}. Install it with: {install_line(top)}",
                package=dist,
                extra=extra,
            ) from None
        raise BrokenDependencyError(
            f"`{module}` is installed but failed to import{needed_by}: {exc}. "
            f"Reinstall it with: {install_line(top)}",
            package=dist,
        ) from exc
