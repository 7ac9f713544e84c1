"""Helpers shared by the checkpoint tests: inputs, small models, byte surgery on files."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

import enn_nb

TINY_BUILDER = "tests.checkpoint.tiny"


def features(n: int = 64, seed: int = 7) -> torch.Tensor:
    """Realistic reference-model inputs (continuous values + categorical code columns)."""
    from enn_nb.reference import make_dataset

    x, _ = make_dataset(seed, n_sensors=2, n_steps=24 * 8)
    return x[:n].clone()


def forward(model: Any, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_export(x)


class Tiny(nn.Module):
    """A small model following the ENN contract, with a float64 buffer and a registered builder."""

    enn_builder = TINY_BUILDER
    feature_dtype = "float32"

    def __init__(self, in_dim: int = 6, hidden: int = 8, horizon: int = 3) -> None:
        super().__init__()
        self.config = {"in_dim": in_dim, "hidden": hidden, "horizon": horizon}
        self.in_dim = in_dim
        self.out_shape = (horizon, 2)
        self.register_buffer("mean", torch.zeros(in_dim, dtype=torch.float64))
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, horizon * 2)

    def forward_export(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc1((x.double() - self.mean).float()))
        return self.fc2(h).reshape(-1, *self.out_shape)

    def task_specs(self) -> list[dict[str, Any]]:
        return [{"name": "y", "kind": "regression"}]


def build_tiny(spec: enn_nb.ModelSpec) -> Tiny:
    cfg = spec.config or {}
    return Tiny(cfg.get("in_dim", 6), cfg.get("hidden", 8), cfg.get("horizon", 3))


enn_nb.register_builder(TINY_BUILDER, replace=True)(build_tiny)


def tiny(seed: int = 0, **kwargs: int) -> Tiny:
    torch.manual_seed(seed)
    model = Tiny(**kwargs)
    with torch.no_grad():
        model.mean.copy_(torch.randn(model.in_dim, dtype=torch.float64))
    return model.eval()


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def pt_record_offset(path: Path, suffix: str) -> tuple[int, int]:
    """(absolute data offset, size) of the zip record whose name ends with ``suffix``."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(suffix))
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def pt_record_of(path: Path, tensor: str) -> str:
    """The zip record (``data/N``) holding ``tensor`` in a .pt written by enn_nb.

    Storages are numbered in pickling order, which is the state dict's order.
    """
    payload = torch.load(path, weights_only=True, mmap=True)
    numbers: dict[int, int] = {}
    for value in payload["state_dict"].values():
        numbers.setdefault(value.untyped_storage().data_ptr(), len(numbers))
    return f"data/{numbers[payload['state_dict'][tensor].untyped_storage().data_ptr()]}"


def safetensors_offset(path: Path, tensor: str) -> tuple[int, int]:
    """(absolute offset, size) of ``tensor``'s bytes in a safetensors file."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    begin, end = header[tensor]["data_offsets"]
    return 8 + n + begin, end - begin
