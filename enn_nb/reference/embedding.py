"""Embedding: categorical float columns through nn.Embedding, continuous columns passed through."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class FeatureEmbedding(nn.Module):
    """Splits raw ``[B, in_dim]`` features into continuous columns and embedded categorical codes.

    Layout: the first ``n_continuous`` columns are continuous (time-major: step 0's channels, then
    step 1's...), the last ``len(cardinalities)`` hold integer codes stored as floats. A code is
    truncated with ``.long()`` and clamped into ``[0, cardinality - 1]`` so that an out-of-range
    value cannot index outside the table (the clamp is part of the exported graph too).
    """

    def __init__(self, n_continuous: int, cardinalities: tuple[int, ...], embed_dim: int) -> None:
        super().__init__()
        self.n_continuous = n_continuous
        self.cardinalities = tuple(cardinalities)
        self.embed_dim = embed_dim
        self.tables = nn.ModuleList(nn.Embedding(card, embed_dim) for card in self.cardinalities)

    @property
    def categorical_columns(self) -> list[int]:
        return [self.n_continuous + i for i in range(len(self.cardinalities))]

    @property
    def continuous_columns(self) -> list[int]:
        return list(range(self.n_continuous))

    @property
    def out_dim(self) -> int:
        return self.embed_dim * len(self.cardinalities)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(continuous [B, n_continuous], codes [B, n_cat] int64)``."""
        cont = x[:, : self.n_continuous]
        codes = x[:, self.n_continuous :].long()
        return cont, codes

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Concatenated embeddings ``[B, embed_dim * n_cat]`` of int64 codes."""
        parts = [
            table(codes[:, i].clamp(0, card - 1))
            for i, (table, card) in enumerate(zip(self.tables, self.cardinalities))
        ]
        if not parts:
            return codes.new_zeros((codes.shape[0], 0), dtype=torch.float32)
        return torch.cat(parts, dim=-1)

    def spec(self) -> dict[str, Any]:
        """JSON description: column indices, cardinalities and embedding dims."""
        return {
            "continuous_columns": self.continuous_columns,
            "categorical_columns": self.categorical_columns,
            "cardinalities": list(self.cardinalities),
            "dims": [self.embed_dim] * len(self.cardinalities),
            "code_dtype": "float32",
            "out_of_range": "clamp",
        }
