"""Example inputs for a model, drawn from its spec; new batches resampled from them; eval-only reference runs.

Below both ``checkpoint`` (the restore self-check runs the model on example inputs) and ``engine``
(capture and parity), so neither has to import the other for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from enn_nb._safeio import check_example_shape
from enn_nb.errors import ExportError
from enn_nb.model.signature import eval_only  # noqa: F401 (re-exported: it runs the model these inputs feed)

if TYPE_CHECKING:
    import torch


def default_example_inputs(spec: Any, in_dim: int | None, feature_dtype: str | None, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Example ``[batch, in_dim]`` features drawn from the spec (a ``ModelSpec`` or None).

    Continuous columns follow the scaler's mean/std when the spec has them; categorical columns
    (``spec.embedding``) get valid integer codes. Batch 2 by default: capture at 0 or 1 would
    specialise the batch dimension.
    """
    import torch

    if in_dim is None:
        raise ExportError(
            "Cannot make example inputs: the model has no `in_dim` and no `spec`. "
            "Pass `example_inputs=(torch.randn(2, N),)` or `spec=ModelSpec(in_dim=N)`."
        )
    check_example_shape([int(batch), int(in_dim)], what="example input shape [batch, in_dim]")
    dtype = getattr(torch, feature_dtype or "float32")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_dim, generator=gen, dtype=torch.float64)
    scaler = (spec.scaler if spec is not None else None) or {}
    mean, std = scaler.get("x_mean"), scaler.get("x_std")
    if isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) and len(mean) <= in_dim:
        n = len(mean)
        x[:, :n] = x[:, :n] * torch.tensor(std, dtype=torch.float64) + torch.tensor(mean, dtype=torch.float64)
    embedding = (spec.embedding if spec is not None else None) or {}
    for col, card in zip(embedding.get("categorical_columns", []), embedding.get("cardinalities", [])):
        if 0 <= int(col) < in_dim and int(card) > 0:
            x[:, int(col)] = torch.randint(0, int(card), (batch,), generator=gen).to(torch.float64)
    return (x.to(dtype),)


def resample_inputs(example: Sequence[torch.Tensor], batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """New inputs of ``batch`` rows for a model without a spec: rows drawn from the example inputs.

    Floating columns whose example values are not all integers get noise of their own spread, so that
    the new batch is not only copies; integer-valued columns (codes, indices) are kept as drawn.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    n = example[0].shape[0]
    rows = torch.randint(0, n, (batch,), generator=gen)
    out = []
    for tensor in example:
        new = tensor[rows].clone()
        if new.is_floating_point() and new.dim() >= 2 and n > 1:
            flat = tensor.reshape(n, -1).double()
            continuous = (flat != flat.round()).any(0)
            spread = flat.std(0).nan_to_num(0.0)
            noise = torch.randn(batch, flat.shape[1], generator=gen, dtype=torch.float64) * spread * continuous * 0.5
            new = (new.reshape(batch, -1).double() + noise).to(tensor.dtype).reshape(new.shape)
        out.append(new)
    return tuple(out)
