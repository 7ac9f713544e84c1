"""A fused GELU(linear) custom op standing for ENN's Triton kernels, and its plain-PyTorch reference.

``enn_nb::fused_gelu_linear`` is registered with ``torch.library.custom_op`` and an autograd
formula but deliberately **no fake implementation**: like a hand-written Triton kernel it is opaque
to tracing, so ``torch.export`` fails on it ("no fake impl registered"). The export-safe path is
:func:`gelu_linear_reference`, which computes the same function with ordinary ops.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from enn_nb.model.fastpaths import FastPath

OP_NAME = "enn_nb::fused_gelu_linear"


@torch.library.custom_op(OP_NAME, mutates_args=())
def fused_gelu_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``gelu(x @ weight.T + bias)`` (exact erf GELU) in one call."""
    # addmm computes bias + x @ W^T in one call instead of a matmul and a separate add.
    flat = x.reshape(-1, x.shape[-1])
    out = torch.addmm(bias, flat, weight.t())
    return F.gelu(out).reshape(*x.shape[:-1], weight.shape[0])


def _setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight, bias)


def _backward(ctx, grad):  # type: ignore[no-untyped-def]
    x, weight, bias = ctx.saved_tensors
    z = F.linear(x, weight, bias)
    # d/dz gelu(z) = Phi(z) + z * phi(z)
    dgelu = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    gz = grad * dgelu
    gz2 = gz.reshape(-1, gz.shape[-1])
    gx = (gz2 @ weight).reshape(x.shape)
    gw = gz2.t() @ x.reshape(-1, x.shape[-1])
    gb = gz2.sum(0)
    return gx, gw, gb


torch.library.register_autograd(OP_NAME, _backward, setup_context=_setup_context)


@torch.compiler.disable
def _fused_eager(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    # Without a fake impl dynamo cannot trace the op; under torch.compile (compile_blocks=True) the
    # blocks graph-break here and the op runs eagerly, as a hand-written kernel launch would.
    return fused_gelu_linear(x, weight, bias)


def gelu_linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The plain-PyTorch path: the same function as the custom op, traceable by every exporter."""
    return F.gelu(F.linear(x, weight, bias))


class GeluLinear(nn.Module):
    """``gelu(linear(x))`` through the custom op when ``fused`` is true, else the reference path."""

    def __init__(self, in_features: int, out_features: int, fused: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.fused = fused
        self._path_name = ""

    def enn_fast_paths(self) -> Iterator[FastPath]:
        yield FastPath(
            f"{self._path_name}.fused" if self._path_name else "gelu_linear.fused",
            self,
            "fused",
            False,
            reason=f"the custom op `{OP_NAME}` has no fake implementation, so torch.export cannot trace it",
            kind="custom_kernel",
            markers=(OP_NAME, "fused_gelu_linear", "fake impl", "fake kernel"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return _fused_eager(x, self.linear.weight, self.linear.bias)
        return gelu_linear_reference(x, self.linear.weight, self.linear.bias)
