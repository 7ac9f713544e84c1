"""Small models of the shapes users bring (sequences, ids + masks, calendar codes, dict outputs), for tests,
the model-zoo benchmark and ``enn-nb export CKPT --model enn_nb.reference.zoo:NAME``.

Each factory takes no argument (``--model`` calls it) and returns a seeded model in eval mode;
:func:`example_inputs` gives each one's example inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

FEATURES, STEPS, VOCAB, TOKENS, CLASSES = 5, 12, 50, 16, 3


class GRUForecaster(nn.Module):
    """``values [B, T, F]`` -> next-step forecast ``[B, F]`` (a recurrent ENN-style forecaster)."""

    def __init__(self, features: int = FEATURES, hidden: int = 16, cell: str = "gru") -> None:
        super().__init__()
        self.rnn = (nn.GRU if cell == "gru" else nn.LSTM)(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, features)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(values)
        return self.head(out[:, -1])


class IdsMask(nn.Module):
    """``ids int64 [B, L]`` and ``mask bool [B, L]`` -> class logits ``[B, C]`` (masked mean of embeddings)."""

    def __init__(self, vocab: int = VOCAB, dim: int = 8, classes: int = CLASSES) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return _pool(self, ids, mask)


class IdsMaskArgs(IdsMask):
    """The same model with ``forward(*args)``: torch.export binds its dynamic shapes to ``args``."""

    def forward(self, *args: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ids, mask = args
        return _pool(self, ids, mask)


def _pool(model: IdsMask, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(torch.float32).unsqueeze(-1)
    pooled = (model.embed(ids) * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    return model.head(pooled)


class CalendarForecaster(nn.Module):
    """``values [B, T, F]`` plus ``calendar int64 [B, T, 2]`` (hour of day, day of week) -> ``[B, F]``."""

    def __init__(self, features: int = FEATURES, dim: int = 4, hidden: int = 16) -> None:
        super().__init__()
        self.hour = nn.Embedding(24, dim)
        self.weekday = nn.Embedding(7, dim)
        self.mix = nn.Linear(features + 2 * dim, hidden)
        self.head = nn.Linear(hidden, features)

    def forward(self, values: torch.Tensor, calendar: torch.Tensor) -> torch.Tensor:
        codes = torch.cat([self.hour(calendar[..., 0]), self.weekday(calendar[..., 1])], dim=-1)
        hidden = torch.tanh(self.mix(torch.cat([values, codes], dim=-1)))
        return self.head(hidden.mean(1))


class GaussianHead(nn.Module):
    """``features [B, F]`` -> ``{"mean": [B, 2], "scale": [B, 2]}`` (a distributional head)."""

    def __init__(self, features: int = FEATURES, hidden: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, hidden), nn.ReLU())
        self.mean = nn.Linear(hidden, 2)
        self.scale = nn.Linear(hidden, 2)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(features)
        return {"mean": self.mean(h), "scale": F.softplus(self.scale(h)) + 1e-3}


class TinyEncoder(nn.Module):
    """``ids int64 [B, L]`` -> ``[B, C]`` through one transformer encoder layer (mask built with ``new_ones``)."""

    def __init__(self, vocab: int = VOCAB, dim: int = 16, classes: int = CLASSES) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layer = nn.TransformerEncoderLayer(dim, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.layer(self.embed(ids))
        weights = ids.new_ones(ids.shape).to(h.dtype).unsqueeze(-1)
        return self.head((h * weights).mean(1))


def _seeded(cls: Callable[..., nn.Module], **kwargs: Any) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return cls(**kwargs).eval()

    make.__name__ = cls.__name__
    return make


gru_forecaster = _seeded(GRUForecaster)
lstm_forecaster = _seeded(GRUForecaster, cell="lstm")
ids_mask = _seeded(IdsMask)
ids_mask_args = _seeded(IdsMaskArgs)
calendar_forecaster = _seeded(CalendarForecaster)
gaussian_head = _seeded(GaussianHead)
tiny_encoder = _seeded(TinyEncoder)


def example_inputs(name: str, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Example inputs of the zoo model ``name`` (valid codes for its integer inputs)."""
    gen = torch.Generator().manual_seed(seed)
    if name in ("gru_forecaster", "lstm_forecaster"):
        return (torch.randn(batch, STEPS, FEATURES, generator=gen),)
    if name in ("ids_mask", "ids_mask_args"):
        ids = torch.randint(0, VOCAB, (batch, TOKENS), generator=gen)
        mask = torch.rand(batch, TOKENS, generator=gen) > 0.25
        mask[:, 0] = True
        return ids, mask
    if name == "calendar_forecaster":
        hours = torch.randint(0, 24, (batch, STEPS, 1), generator=gen)
        days = torch.randint(0, 7, (batch, STEPS, 1), generator=gen)
        return torch.randn(batch, STEPS, FEATURES, generator=gen), torch.cat([hours, days], dim=-1)
    if name == "gaussian_head":
        return (torch.randn(batch, FEATURES, generator=gen),)
    if name == "tiny_encoder":
        return (torch.randint(0, VOCAB, (batch, TOKENS), generator=gen),)
    raise KeyError(f"`{name}` is not a zoo model; known: {', '.join(FACTORIES)}")


#: name -> factory, in the benchmark's row order.
FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "gru_forecaster": gru_forecaster,
    "lstm_forecaster": lstm_forecaster,
    "ids_mask": ids_mask,
    "ids_mask_args": ids_mask_args,
    "calendar_forecaster": calendar_forecaster,
    "gaussian_head": gaussian_head,
    "tiny_encoder": tiny_encoder,
}
