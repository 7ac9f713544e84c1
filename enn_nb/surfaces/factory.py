"""Bring-your-own models on the CLI and in reports: ``--model pkg.module:factory`` imports the factory the user typed."""

from __future__ import annotations

import importlib
import os
from typing import Any

from enn_nb.errors import SpecError


def import_factory(ref: str) -> Any:
    """The callable named by ``"pkg.module:factory"`` (a dotted attribute path after the colon).

    Only importable modules are accepted, never a file path: the module is imported because the user
    named it, the same as ``python -c "import pkg.module"`` would.

    Raises:
        SpecError: the reference is malformed, the module cannot be imported or lacks the attribute.
    """
    module_name, sep, attr = str(ref).partition(":")
    if not sep or not module_name or not attr or "/" in module_name or module_name.endswith(".py"):
        raise SpecError(
            f"`--model {ref}` is not `package.module:factory`; name an importable module and a callable in it, "
            "e.g. `--model mypkg.models:build_forecaster` (files are not imported by path)."
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(
            f"`--model {ref}`: module `{module_name}` cannot be imported ({exc}). Install its package or add its "
            "folder to PYTHONPATH."
        ) from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            known = sorted(n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None)))[:12]
            raise SpecError(f"`--model {ref}`: `{module_name}` has no `{attr}`; callables there: {', '.join(known)}.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SpecError(f"`--model {ref}` is a {type(obj).__name__}, not a callable returning a model.")
    return obj


def build_model(ref: str) -> Any:
    """``factory()`` for ``ref`` (or the class itself called without arguments), checked to be an ``nn.Module``."""
    import torch

    model = import_factory(ref)()
    if not isinstance(model, torch.nn.Module):
        raise SpecError(f"`--model {ref}` returned a {type(model).__name__}; the factory must return a torch.nn.Module.")
    return model


def load_with_model(path: str | os.PathLike[str], ref: str | None) -> Any:
    """``enn_nb.load(path)``, into ``build_model(ref)`` when a factory is named (a checkpoint without a builder)."""
    from enn_nb.checkpoint import load

    return load(path, model=build_model(ref) if ref else None)
