"""Multi-head self-attention with three interchangeable implementations: flex, sdpa, math."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from enn_nb.errors import SpecError
from enn_nb.model.fastpaths import FastPath

from .config import ATTENTION_IMPLS


def check_impl(impl: str) -> str:
    if impl not in ATTENTION_IMPLS:
        raise SpecError(
            f"attention implementation {impl!r} is unknown; allowed values: "
            f"{', '.join(repr(a) for a in ATTENTION_IMPLS)}."
        )
    return impl


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: str) -> torch.Tensor:
    """Full (non-causal) scaled dot-product attention on ``[B, H, L, D]`` tensors."""
    if impl == "flex":
        from torch.nn.attention.flex_attention import flex_attention

        return flex_attention(q, k, v)
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if impl == "math":
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
        return torch.matmul(torch.softmax(scores, dim=-1), v)
    raise SpecError(check_impl(impl))  # pragma: no cover - check_impl raises first


class SelfAttention(nn.Module):
    """``impl`` selects the kernel at run time; every implementation computes the same function.

    No dropout on the attention probabilities: it would make the three paths differ in training.
    """

    def __init__(self, d_model: int, heads: int, impl: str = "flex") -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.impl = check_impl(impl)
        self._path_name = ""

    def enn_fast_paths(self) -> Iterator[FastPath]:
        yield FastPath(
            f"{self._path_name}.impl" if self._path_name else "attention.impl",
            self,
            "impl",
            "math",
            reason="FlexAttention has no ONNX conversion (its block mask sorts: aten.sort.stable) and cannot "
            "be traced with grad-requiring weights on CPU; fused SDPA lowers differently per runtime; "
            "explicit matmul + softmax converts everywhere",
            kind="attention",
            markers=("flex_attention", "FlexAttention", "aten.sort.stable", "scaled_dot_product_attention"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = attend(qkv[0], qkv[1], qkv[2], check_impl(self.impl))
        return self.proj(out.transpose(1, 2).reshape(b, n, d))
