"""A seeded synthetic spatio-temporal dataset: sensors x hourly time, daily/weekly cycles, calendar codes."""

from __future__ import annotations

import math

import torch

_DAY, _WEEK = 24, 24 * 7


def make_dataset(
    seed: int = 0,
    *,
    n_sensors: int = 8,
    n_steps: int = 24 * 7 * 3,
    lookback: int = 12,
    channels: int = 3,
    horizon: int = 4,
    categorical_cardinalities: tuple[int, ...] = (7, 24),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build ``(features [N, in_dim] float32, labels [N, horizon, 2] float32)``.

    Each sensor's hourly "load" has a daily and a weekly cycle (weekends lower), a sensor-specific
    level, amplitude and phase, a slow drift and noise. Channel 0 is load, channel 1 temperature
    (daily cycle plus noise, weakly coupled to load), channel 2 and beyond are noisy covariates.
    Features at time ``t`` are the previous ``lookback`` steps of every channel (time-major) and the
    calendar codes of ``t`` (day of week, hour of day) as floats. Labels are the next ``horizon``
    loads and whether each exceeds the sensor's 75th percentile (a "peak").

    Nothing global is touched: randomness comes from a local ``torch.Generator``.
    """
    gen = torch.Generator().manual_seed(int(seed))
    f64 = torch.float64
    t = torch.arange(n_steps, dtype=f64)
    level = 10.0 + 5.0 * torch.rand(n_sensors, 1, generator=gen, dtype=f64)
    amp = 2.0 + 2.0 * torch.rand(n_sensors, 1, generator=gen, dtype=f64)
    phase = 2 * math.pi * torch.rand(n_sensors, 1, generator=gen, dtype=f64)
    daily = torch.sin(2 * math.pi * t / _DAY + phase)
    weekday = ((t // _DAY) % 7 < 5).to(f64)  # 1 on weekdays
    weekly = 1.5 * weekday + 0.5 * torch.sin(2 * math.pi * t / _WEEK)
    drift = 0.002 * t * torch.randn(n_sensors, 1, generator=gen, dtype=f64)
    load = level + amp * daily + weekly + drift + 0.3 * torch.randn(n_sensors, n_steps, generator=gen, dtype=f64)
    temp = 15.0 + 6.0 * torch.sin(2 * math.pi * (t - 6) / _DAY) + 0.5 * torch.randn(
        n_sensors, n_steps, generator=gen, dtype=f64
    )
    series = [load, temp + 0.1 * load]
    for _ in range(2, channels):
        series.append(torch.randn(n_sensors, n_steps, generator=gen, dtype=f64) + 0.2 * daily)
    data = torch.stack(series[:channels], dim=-1)  # [S, T, C]
    threshold = torch.quantile(load, 0.75, dim=1, keepdim=True)
    peak = (load > threshold).to(f64)
    codes = _calendar_codes(t, categorical_cardinalities)  # [T, n_cat]

    starts = torch.arange(lookback, n_steps - horizon + 1)
    win = torch.arange(-lookback, 0)
    ahead = torch.arange(0, horizon)
    x = data[:, starts[:, None] + win]  # [S, N_t, lookback, C]
    x = x.reshape(n_sensors, len(starts), lookback * channels)
    cal = codes[starts].expand(n_sensors, -1, -1)
    features = torch.cat([x, cal], dim=-1).reshape(-1, lookback * channels + len(categorical_cardinalities))
    y_load = load[:, starts[:, None] + ahead]
    y_peak = peak[:, starts[:, None] + ahead]
    labels = torch.stack([y_load, y_peak], dim=-1).reshape(-1, horizon, 2)
    return features.to(torch.float32), labels.to(torch.float32)


def _calendar_codes(t: torch.Tensor, cardinalities: tuple[int, ...]) -> torch.Tensor:
    """Codes per time step: column 0 day of week, column 1 hour of day, further ones week of cycle."""
    periods = [_DAY, 1] + [_WEEK] * max(0, len(cardinalities) - 2)
    cols = [torch.div(t, p, rounding_mode="floor") % card for p, card in zip(periods, cardinalities)]
    if not cols:
        return t.new_zeros((t.shape[0], 0))
    return torch.stack(cols, dim=-1)


def sample_features(model: object, batch: int, *, seed: int = 0) -> torch.Tensor:
    """Raw ``[batch, in_dim]`` float32 features a trained reference model sees in practice.

    Continuous columns are drawn around the model's Scaler statistics and categorical columns hold
    valid codes, so exported artifacts are compared on realistic inputs rather than on noise that
    calibration and embeddings would clamp.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, model.in_dim, generator=gen, dtype=torch.float64)
    n = model.scaler.x_mean.shape[0]
    x[:, :n] = x[:, :n] * model.scaler.x_std + model.scaler.x_mean
    for col, card in zip(model.embedding.categorical_columns, model.embedding.cardinalities):
        x[:, col] = torch.randint(0, card, (batch,), generator=gen).double()
    return x.float()
