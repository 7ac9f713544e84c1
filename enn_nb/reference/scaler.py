"""Scaler: float64 input/output normalisation and a piecewise-linear output calibration."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from enn_nb.errors import SpecError
from enn_nb.model.fastpaths import FastPath

from .config import CALIBRATION_IMPLS

COMPUTE_DTYPES = ("float64", "float32")


class Scaler(nn.Module):
    """Normalises continuous inputs, de-normalises the regression output and calibrates it.

    The float64 buffers are the truth. ``calibration`` selects how the piecewise-linear map is
    evaluated: ``"bucketize"`` finds each value's segment with ``torch.bucketize`` (fast, but a
    data-dependent op that some exporters cannot represent); ``"static"`` finds it with one-hot
    comparisons against every knot. Both pick the same segment and then run the very same
    arithmetic, so they agree to the last bit away from ties and within float64 rounding on knots.

    ``compute_dtype`` (``"float64"`` default, or ``"float32"``) is the arithmetic precision of the
    normalisation and calibration; float32 exists for runtimes that cannot run float64 ``Sub``
    (onnx2tf). It is not a fast path: switching it changes the numbers slightly (~1e-7 relative).
    """

    def __init__(self, n_continuous: int, horizon: int, n_knots: int, calibration: str = "bucketize") -> None:
        super().__init__()
        f64 = torch.float64
        self.register_buffer("x_mean", torch.zeros(n_continuous, dtype=f64))
        self.register_buffer("x_std", torch.ones(n_continuous, dtype=f64))
        self.register_buffer("y_mean", torch.zeros(horizon, dtype=f64))
        self.register_buffer("y_std", torch.ones(horizon, dtype=f64))
        # Identity calibration until fitted: knots on the diagonal, end segments extrapolate.
        self.register_buffer("knots_x", torch.linspace(-1.0, 1.0, n_knots, dtype=f64))
        self.register_buffer("knots_y", torch.linspace(-1.0, 1.0, n_knots, dtype=f64))
        self.calibration = calibration
        self.compute_dtype = "float64"
        self._path_name = ""

    # -- fast paths ------------------------------------------------------------------------------
    def enn_fast_paths(self) -> Iterator[FastPath]:
        yield FastPath(
            f"{self._path_name}.calibration" if self._path_name else "calibration",
            self,
            "calibration",
            "static",
            reason="torch.bucketize/searchsorted have no ONNX (and most edge runtime) equivalent",
            kind="calibration",
            markers=("searchsorted", "bucketize"),
        )

    # -- arithmetic ----------------------------------------------------------------------------------
    def _dtype(self) -> torch.dtype:
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise SpecError(
                f"`Scaler.compute_dtype` is {self.compute_dtype!r}; allowed values: {', '.join(COMPUTE_DTYPES)}."
            )
        return getattr(torch, self.compute_dtype)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - x_mean) / x_std`` computed in ``compute_dtype``, returned as float32."""
        dt = self._dtype()
        return ((x.to(dt) - self.x_mean.to(dt)) / self.x_std.to(dt)).to(torch.float32)

    def normalize_target(self, y: torch.Tensor) -> torch.Tensor:
        """Regression targets ``[B, horizon]`` in data units -> normalised float32 (training loss)."""
        dt = self._dtype()
        return ((y.to(dt) - self.y_mean.to(dt)) / self.y_std.to(dt)).to(torch.float32)

    def denormalize(self, y: torch.Tensor) -> torch.Tensor:
        """Regression output ``[B, horizon]`` back to data units, in ``compute_dtype``."""
        dt = self._dtype()
        return y.to(dt) * self.y_std.to(dt) + self.y_mean.to(dt)

    def calibrate(self, y: torch.Tensor, impl: str | None = None) -> torch.Tensor:
        """Apply the piecewise-linear calibration (end segments extrapolate linearly)."""
        impl = impl or self.calibration
        if impl not in CALIBRATION_IMPLS:
            raise SpecError(
                f"`Scaler.calibration` is {impl!r}; allowed values: {', '.join(repr(c) for c in CALIBRATION_IMPLS)}."
            )
        dt = self._dtype()
        y = y.to(dt)
        kx, ky = self.knots_x.to(dt), self.knots_y.to(dt)
        x0, y0 = kx[:-1], ky[:-1]
        slope = (ky[1:] - y0) / (kx[1:] - x0)
        inner = kx[1:-1]
        if impl == "bucketize":
            seg = torch.bucketize(y, inner)  # segment index in [0, n_knots - 2]
            xs, ys, ss = x0[seg], y0[seg], slope[seg]
        else:
            # Same segment as bucketize(right=False): count the inner knots strictly below y.
            seg = (y.unsqueeze(-1) > inner).sum(-1, keepdim=True)
            onehot = (seg == torch.arange(x0.shape[0], device=y.device)).to(dt)
            # Multiplying by an exact 0/1 mask and summing is exact: the picked value comes out unchanged.
            xs, ys, ss = (onehot * x0).sum(-1), (onehot * y0).sum(-1), (onehot * slope).sum(-1)
        return ys + ss * (y - xs)

    # -- fitting -------------------------------------------------------------------------------------
    @torch.no_grad()
    def fit_stats(self, x_cont: torch.Tensor, y: torch.Tensor) -> None:
        """Set x/y statistics from training data (continuous columns ``[N, C]``, targets ``[N, horizon]``)."""
        x = x_cont.to(torch.float64)
        y = y.to(torch.float64)
        self.x_mean.copy_(x.mean(0))
        self.x_std.copy_(x.std(0).clamp_min(1e-6))
        self.y_mean.copy_(y.mean(0))
        self.y_std.copy_(y.std(0).clamp_min(1e-6))

    @torch.no_grad()
    def fit_calibration(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Fit the knots on held-out data: binned means, made monotone by pool-adjacent-violators.

        Args:
            pred: de-normalised, uncalibrated predictions (any shape).
            target: true values of the same shape.
        """
        p = pred.reshape(-1).to(torch.float64)
        t = target.reshape(-1).to(torch.float64)
        n_knots = self.knots_x.shape[0]
        order = torch.argsort(p, stable=True)
        groups = torch.tensor_split(order, n_knots)
        xs = torch.stack([p[g].mean() for g in groups])
        ys = torch.stack([t[g].mean() for g in groups])
        ys = _pava(ys)
        # Knots must be strictly increasing for the segment search; spread ties by a tiny step.
        for i in range(1, n_knots):
            if xs[i] <= xs[i - 1]:
                xs[i] = xs[i - 1] + 1e-9 * max(1.0, abs(float(xs[i - 1])))
        self.knots_x.copy_(xs)
        self.knots_y.copy_(ys)

    def state_json(self) -> dict[str, Any]:
        """The statistics as plain JSON numbers (the exact values live in the buffers)."""
        return {
            "x_mean": self.x_mean.tolist(),
            "x_std": self.x_std.tolist(),
            "y_mean": self.y_mean.tolist(),
            "y_std": self.y_std.tolist(),
            "knots": {"x": self.knots_x.tolist(), "y": self.knots_y.tolist()},
            "calibration": self.calibration,
            "compute_dtype": self.compute_dtype,
        }


def _pava(values: torch.Tensor) -> torch.Tensor:
    """Isotonic (non-decreasing) fit of equally weighted values, pool-adjacent-violators."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in values.tolist():
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    out: list[float] = []
    for s, c in blocks:
        out.extend([s / c] * int(c))
    return torch.tensor(out, dtype=torch.float64)
