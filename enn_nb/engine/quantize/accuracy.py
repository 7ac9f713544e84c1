"""A quantized artifact against the float model: per-output errors on the evaluation set, and the budget."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any


def measure(expected: Sequence[Sequence[Any]], got: Sequence[Sequence[Any]], names: Sequence[str],
            metric: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Errors of ``got`` against ``expected`` (both: per batch, per output arrays), per output.

    Returns:
        ``{"outputs": [{name, max_abs, mean_abs, rmse, std, rmse_rel, max_rel_std}], "rows": n,
        "metric": value|None}``; ``rmse_rel`` is the RMSE of the difference over the float output's std.
    """
    import numpy as np

    per = []
    for i in range(len(expected[0]) if expected else 0):
        e = np.concatenate([np.asarray(b[i], dtype=np.float64).reshape(len(b[i]), -1) for b in expected])
        g = np.concatenate([np.asarray(b[i], dtype=np.float64).reshape(len(b[i]), -1) for b in got])
        if e.shape != g.shape:
            raise ValueError(f"output `{_name(names, i)}` has shape {list(g.shape)} from the artifact, "
                             f"{list(e.shape)} from the float model")
        diff = g - e
        std = float(e.std())
        rmse = float(np.sqrt(np.mean(diff * diff)))
        max_abs = float(np.abs(diff).max()) if diff.size else 0.0
        per.append({
            "name": _name(names, i),
            "max_abs": max_abs,
            "mean_abs": float(np.abs(diff).mean()) if diff.size else 0.0,
            "rmse": rmse,
            "std": std,
            "rmse_rel": rmse / std if std > 0 else (0.0 if rmse == 0 else math.inf),
            "max_rel_std": max_abs / std if std > 0 else (0.0 if max_abs == 0 else math.inf),
        })
    out: dict[str, Any] = {"outputs": per, "rows": int(sum(len(b[0]) for b in expected)) if expected else 0,
                           "metric": None}
    if metric is not None:
        flat_e = [np.concatenate([np.asarray(b[i]) for b in expected]) for i in range(len(per))]
        flat_g = [np.concatenate([np.asarray(b[i]) for b in got]) for i in range(len(per))]
        try:
            value = float(metric(flat_e, flat_g))
        except Exception as exc:
            out["metric_error"] = f"{type(exc).__name__}: {exc}"
        else:
            out["metric"] = value
            out["metric_name"] = getattr(metric, "__name__", type(metric).__name__)
    return out


def _name(names: Sequence[str], i: int) -> str:
    return str(names[i]) if i < len(names) else f"output_{i}"


def over_budget(figures: dict[str, Any], budget: dict[str, Any]) -> list[str]:
    """The budget lines ``figures`` break, in words with the numbers (empty: within budget)."""
    broken = []
    for out in figures.get("outputs", []):
        name = out["name"]
        if budget.get("rmse_rel") is not None and not out["rmse_rel"] <= budget["rmse_rel"]:
            broken.append(f"`{name}`: RMSE {out['rmse']:.4g} is {out['rmse_rel']:.2%} of the float output's std "
                          f"{out['std']:.4g} (budget {budget['rmse_rel']:.2%})")
        if budget.get("max_abs") is not None and not out["max_abs"] <= budget["max_abs"]:
            broken.append(f"`{name}`: max abs error {out['max_abs']:.4g} (budget {budget['max_abs']:.4g})")
        if budget.get("mean_abs") is not None and not out["mean_abs"] <= budget["mean_abs"]:
            broken.append(f"`{name}`: mean abs error {out['mean_abs']:.4g} (budget {budget['mean_abs']:.4g})")
    value = figures.get("metric")
    if budget.get("metric") is not None and value is not None and not value <= budget["metric"]:
        broken.append(f"{figures.get('metric_name', 'metric')} {value:.4g} (budget {budget['metric']:.4g})")
    return broken


def worst(figures: dict[str, Any]) -> dict[str, Any]:
    """The output with the largest ``rmse_rel`` (the one a table row shows)."""
    outputs = figures.get("outputs") or []
    return max(outputs, key=lambda o: o["rmse_rel"], default={})


def finite(value: Any) -> Any:
    """JSON has no inf/nan: nested floats that are not finite become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value
