"""Self-describing checkpoints: .pt/.pth, .safetensors and DCP directories that restore exactly.

``save`` writes the weights with a manifest (ModelSpec, versions, metadata, tensor table, BLAKE3
hashes), ``load`` rebuilds the model from it, ``inspect`` reads only the manifest, ``convert`` moves
a checkpoint between formats. ENN-PyTorch (upstream) checkpoints are read too.
"""

from __future__ import annotations

from .api import Loaded, convert, inspect, load, open_reader, save
from .manifest import FileEntry, Manifest, TensorEntry
from .migrations import register_migration
from .schema import CURRENT_VERSION, SCHEMA_ID
from .upstream import UPSTREAM_BUILDER

__all__ = [
    "CURRENT_VERSION",
    "SCHEMA_ID",
    "UPSTREAM_BUILDER",
    "FileEntry",
    "Loaded",
    "Manifest",
    "TensorEntry",
    "convert",
    "inspect",
    "load",
    "open_reader",
    "register_migration",
    "save",
]
