"""Self-describing checkpoints: .pt/.pth, .safetensors and DCP directories that restore exactly.

``save`` writes the weights with a manifest (ModelSpec, versions, metadata, tensor table, BLAKE3
hashes), ``load`` rebuilds the model from it, ``inspect`` reads only the manifest, ``convert`` moves
a checkpoint between formats. ENN-PyTorch (upstream) checkpoints are read too.

The names are imported on first use, so that a light module of this package (``schema``, with the
format names) can be imported without the readers and writers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import Loaded, convert, inspect, load, open_reader, save
    from .manifest import FileEntry, Manifest, TensorEntry
    from .migrations import register_migration
    from .schema import CURRENT_VERSION, FORMATS, SCHEMA_ID
    from .upstream import UPSTREAM_BUILDER

# public name -> the module of this package that defines it
_LAZY = {
    "CURRENT_VERSION": "schema",
    "FORMATS": "schema",
    "SCHEMA_ID": "schema",
    "UPSTREAM_BUILDER": "upstream",
    "FileEntry": "manifest",
    "Loaded": "api",
    "Manifest": "manifest",
    "TensorEntry": "manifest",
    "convert": "api",
    "inspect": "api",
    "load": "api",
    "open_reader": "api",
    "register_migration": "migrations",
    "save": "api",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'enn_nb.checkpoint' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
