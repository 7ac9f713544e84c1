"""A model whose weights pass ONNX's 2 GiB protobuf limit yet are cheap to make and to run.

One float32 table (``rows x 64``) filled by ``arange`` (one pass, no random numbers), read by a
gather whose row indices are computed from the input, so any input is valid and each output depends
on the table's real values: parity is a real check of the external-data file.
"""

from __future__ import annotations

import torch
from torch import nn

COLS = 64
TWO_GIB = 2**31


def rows_for(nbytes: int) -> int:
    return -(-nbytes // (COLS * 4))


class BigTable(nn.Module):
    """``[B, 4]`` float -> ``[B, 4]``: the sum of the table rows the inputs select."""

    def __init__(self, nbytes: int = TWO_GIB + 64 * 2**20) -> None:
        super().__init__()
        rows = rows_for(nbytes)
        table = torch.arange(rows * COLS, dtype=torch.float32).reshape(rows, COLS)
        table.mul_(1.0 / (rows * COLS))  # values in [0, 1): sums of 64 stay well inside float32's precision
        self.table = nn.Parameter(table, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = (x.abs() * 7919.0).to(torch.int64) % self.table.shape[0]
        return self.table[index].sum(-1)
