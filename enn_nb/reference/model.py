"""ReferenceModel: a compact ENN-style forecaster with the interface and the hazards of the real thing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from enn_nb.model.fastpaths import FastPath
from enn_nb.model.spec import check_features

from .attention import SelfAttention, check_impl
from .config import ModelConfig
from .embedding import FeatureEmbedding
from .kernels import GeluLinear
from .scaler import Scaler

TASKS = ("load", "peak")


class Block(nn.Module):
    """Pre-norm transformer encoder block: self-attention, then a GELU MLP on the fused kernel."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.norm1 = nn.LayerNorm(d)
        self.attn = SelfAttention(d, config.heads, config.attention)
        self.norm2 = nn.LayerNorm(d)
        self.fc1 = GeluLinear(d, 2 * d, fused=config.fused_kernel)
        self.fc2 = nn.Linear(2 * d, d)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.fc2(self.fc1(self.norm2(x))))


class ReferenceModel(nn.Module):
    """Raw features ``[B, in_dim]`` -> ``[B, horizon, 2]``: column 0 load (regression, data units,
    calibrated), column 1 peak probability (binary head, sigmoid).

    Input layout: ``lookback * channels`` continuous values (time-major), then one float column per
    categorical feature holding an integer code (day of week, hour of day).

    Fast paths (see :meth:`enn_fast_paths`): each block's attention ``impl``, each MLP's ``fused``
    custom op, the scaler's ``calibration``, and the model's ``compile_blocks``.

    ``compile_blocks=True`` runs the blocks through ``torch.compile``; the compiled wrappers are kept
    outside the module tree, so ``state_dict`` keys never contain ``_orig_mod.`` and are identical with
    and without compilation.
    """

    enn_builder = "enn_nb.reference"
    feature_dtype = "float32"

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else ModelConfig()
        n_cont = config.lookback * config.channels
        self.in_dim = config.in_dim
        self.out_shape = config.out_shape
        self.scaler = Scaler(n_cont, config.horizon, config.n_knots, config.calibration)
        self.embedding = FeatureEmbedding(n_cont, config.categorical_cardinalities, config.embed_dim)
        self.step_proj = nn.Linear(config.channels, config.d_model)
        self.calendar_proj = nn.Linear(max(self.embedding.out_dim, 1), config.d_model)
        self.pos = nn.Parameter(torch.zeros(config.lookback, config.d_model))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.d_model)
        self.load_head = nn.Linear(config.d_model, config.horizon)
        self.peak_head = nn.Linear(config.d_model, config.horizon)
        self.compile_blocks = config.compile_blocks
        self.__dict__["_compiled_blocks"] = None  # not a submodule: keeps state_dict keys stable
        self.training_history: dict[str, Any] = {}
        nn.init.normal_(self.pos, std=0.02)
        for name, module in self.named_modules():
            if hasattr(module, "_path_name"):
                module._path_name = name

    # -- contract ----------------------------------------------------------------------------------
    def enn_fast_paths(self) -> Iterator[FastPath]:
        """The model's own switch; the blocks, MLPs and scaler declare theirs."""
        yield FastPath(
            "compile_blocks",
            self,
            "compile_blocks",
            False,
            reason="torch.compile wrappers are not traceable by exporters; run the plain blocks",
            kind="compiled",
            markers=("torch._dynamo", "OptimizedModule", "_orig_mod"),
        )

    def set_attention(self, impl: str) -> None:
        """Switch every block's attention implementation (``"flex"``, ``"sdpa"`` or ``"math"``)."""
        check_impl(impl)
        for block in self.blocks:
            block.attn.impl = impl

    def task_specs(self) -> list[dict[str, Any]]:
        h = self.config.horizon
        return [
            {
                "name": "load",
                "kind": "regression",
                "output_column": 0,
                "output_index": [":", ":", 0],
                "shape": [h],
                "loss": "mse (on normalised targets)",
                "units": "data units (de-normalised)",
                "calibrated": True,
                "calibration": "piecewise-linear monotone",
            },
            {
                "name": "peak",
                "kind": "binary",
                "output_column": 1,
                "output_index": [":", ":", 1],
                "shape": [h],
                "loss": "bce_with_logits",
                "units": "probability",
                "activation": "sigmoid",
                "calibrated": False,
            },
        ]

    def scaler_state(self) -> dict[str, Any]:
        return self.scaler.state_json()

    def embedding_spec(self) -> dict[str, Any]:
        return self.embedding.spec()

    # -- computation ---------------------------------------------------------------------------------
    def _run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        blocks: list[Any] = list(self.blocks)
        if self.compile_blocks:
            compiled = self.__dict__.get("_compiled_blocks")
            if compiled is None or len(compiled) != len(blocks) or any(
                c._orig_mod is not b for c, b in zip(compiled, blocks)
            ):
                # torch writes precompiled C++ headers to the system temp folder whatever
                # TORCHINDUCTOR_CACHE_DIR says; keep compiled runs inside the chosen cache.
                options = {"cpp_cache_precompile_headers": False}
                compiled = [torch.compile(b, options=options) for b in blocks]
                self.__dict__["_compiled_blocks"] = compiled
            blocks = compiled
        for block in blocks:
            h = block(h)
        return h

    def _heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised load prediction and peak logits, both ``[B, horizon]``."""
        c = self.config
        cont, codes = self.embedding.split(features)
        steps = self.scaler.normalize(cont).reshape(-1, c.lookback, c.channels)
        calendar = self.embedding.embed(codes)
        if calendar.shape[-1] == 0:
            calendar = calendar.new_zeros((calendar.shape[0], 1))
        h = self.step_proj(steps) + self.pos + self.calendar_proj(calendar).unsqueeze(1)
        h = self.norm(self._run_blocks(h))
        pooled = h.mean(dim=1)
        return self.load_head(pooled), self.peak_head(pooled)

    def _outputs(self, load_norm: torch.Tensor, peak_logit: torch.Tensor) -> torch.Tensor:
        load = self.scaler.calibrate(self.scaler.denormalize(load_norm)).to(torch.float32)
        return torch.stack([load, torch.sigmoid(peak_logit)], dim=-1)

    def forward_export(self, features: torch.Tensor) -> torch.Tensor:
        """Raw ``[B, in_dim]`` float32 features -> ``[B, horizon, 2]`` (load, peak probability).

        Raises:
            InputMismatchError: wrong rank, ``in_dim`` or dtype (names expected and received).
        """
        check_features(features, in_dim=self.in_dim, feature_dtype=self.feature_dtype)
        return self._outputs(*self._heads(features))

    def forward(
        self, features: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Training entry: ``(pred [B, horizon, 2], loss or None)``.

        ``labels`` is ``[B, horizon, 2]``: load in data units and peak as 0/1. The loss is the MSE of
        the normalised load plus the BCE of the peak logits.
        """
        check_features(features, in_dim=self.in_dim, feature_dtype=self.feature_dtype)
        load_norm, peak_logit = self._heads(features)
        pred = self._outputs(load_norm, peak_logit)
        if labels is None:
            return pred, None
        target = self.scaler.normalize_target(labels[..., 0])
        loss = F.mse_loss(load_norm, target) + F.binary_cross_entropy_with_logits(peak_logit, labels[..., 1])
        return pred, loss
