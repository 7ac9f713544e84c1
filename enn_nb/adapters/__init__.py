"""Adapters for model libraries that do not follow enn_nb's contracts themselves.

Each adapter is a module imported only when a model of its library is met (or its builder is
asked for), so ``import enn_nb`` never imports the library. Built-in: ``enn_torch`` (ENN-PyTorch).
"""

from __future__ import annotations

from typing import Any

# top-level package of a model's class -> the adapter module for it
ADAPTERS = {"enn_torch": "enn_nb.adapters.enn_torch"}


def package_of(model: Any) -> str:
    """The top-level package a model's class comes from (``"enn_torch"`` for ENN-PyTorch models)."""
    return type(model).__module__.partition(".")[0]


def adapter_for(model: Any) -> Any:
    """The adapter module for ``model``'s library, or None (imports nothing for other models)."""
    name = ADAPTERS.get(package_of(model))
    if name is None:
        return None
    import importlib

    return importlib.import_module(name)
