"""ModelConfig: the reference model's hyper-parameters, validated and JSON round-trippable."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from enn_nb.errors import SpecError

ATTENTION_IMPLS = ("flex", "sdpa", "math")
CALIBRATION_IMPLS = ("bucketize", "static")


@dataclasses.dataclass
class ModelConfig:
    """Hyper-parameters of :class:`enn_nb.reference.ReferenceModel`.

    Attributes:
        lookback: time steps in the input window.
        channels: continuous features per time step.
        categorical_cardinalities: number of codes of each categorical column (day of week, hour),
            given as float columns after the continuous ones.
        embed_dim: embedding width of each categorical column.
        d_model, heads, depth, dropout: transformer encoder size.
        attention: ``"flex"`` (FlexAttention), ``"sdpa"`` (fused SDPA) or ``"math"`` (explicit).
        fused_kernel: use the custom op ``enn_nb::fused_gelu_linear`` (no fake impl) in the MLPs.
        calibration: ``"bucketize"`` (data-dependent fast path) or ``"static"`` (export-friendly).
        n_knots: knots of the piecewise-linear output calibration.
        horizon: predicted future steps.
        compile_blocks: run the encoder blocks through ``torch.compile``.
    """

    lookback: int = 12
    channels: int = 3
    categorical_cardinalities: tuple[int, ...] = (7, 24)
    embed_dim: int = 4
    d_model: int = 32
    heads: int = 4
    depth: int = 2
    dropout: float = 0.1
    attention: str = "flex"
    fused_kernel: bool = True
    calibration: str = "bucketize"
    n_knots: int = 16
    horizon: int = 4
    compile_blocks: bool = False

    def __post_init__(self) -> None:
        for name in ("lookback", "channels", "embed_dim", "d_model", "heads", "depth", "horizon"):
            _positive_int(name, getattr(self, name))
        _positive_int("n_knots", self.n_knots, minimum=2)
        cards = self.categorical_cardinalities
        if isinstance(cards, (str, bytes)) or not isinstance(cards, (tuple, list)):
            raise SpecError(
                f"`ModelConfig.categorical_cardinalities` is {cards!r}; expected a tuple of positive ints, e.g. (7, 24)."
            )
        self.categorical_cardinalities = tuple(cards)
        for i, card in enumerate(self.categorical_cardinalities):
            _positive_int(f"categorical_cardinalities[{i}]", card)
        if self.d_model % self.heads:
            raise SpecError(
                f"`ModelConfig.d_model` ({self.d_model}) must be divisible by `heads` ({self.heads}); "
                f"allowed heads for d_model={self.d_model}: "
                f"{[h for h in range(1, self.d_model + 1) if self.d_model % h == 0]}."
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise SpecError(f"`ModelConfig.dropout` is {self.dropout!r}; allowed values: a float in [0, 1).")
        self.dropout = float(self.dropout)
        _choice("attention", self.attention, ATTENTION_IMPLS)
        _choice("calibration", self.calibration, CALIBRATION_IMPLS)
        for name in ("fused_kernel", "compile_blocks"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(
                    f"`ModelConfig.{name}` is {getattr(self, name)!r}; allowed values: True, False."
                )

    @property
    def in_dim(self) -> int:
        return self.lookback * self.channels + len(self.categorical_cardinalities)

    @property
    def out_shape(self) -> tuple[int, int]:
        return (self.horizon, 2)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["categorical_cardinalities"] = list(self.categorical_cardinalities)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise SpecError naming them."""
        if not isinstance(data, Mapping):
            raise SpecError(f"`ModelConfig.from_dict` needs a dict, got {type(data).__name__}.")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise SpecError(f"`ModelConfig` has no field(s) {unknown}; known fields: {', '.join(known)}.")
        kwargs = dict(data)
        if "categorical_cardinalities" in kwargs and isinstance(kwargs["categorical_cardinalities"], list):
            kwargs["categorical_cardinalities"] = tuple(kwargs["categorical_cardinalities"])
        return cls(**kwargs)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(f"`ModelConfig.{name}` is {value!r}; allowed values: an int >= {minimum}.")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SpecError(
            f"`ModelConfig.{name}` is {value!r}; allowed values: {', '.join(repr(a) for a in allowed)}."
        )
