"""The ``quantize`` setting: its three modes, and which backend supports which, checked before any work."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from enn_nb._registry import closest
from enn_nb.errors import QuantizeModeError, SpecError

#: Each mode, named by what it does.
MODE_MEANING: dict[str, str] = {
    "fp16": "weights (and compute where the runtime does it) in half precision",
    "int8-weights": "dynamic-range: int8 weights, float activations (no calibration)",
    "int8": "static full-integer: int8 weights and activations, calibrated",
}
MODES: tuple[str, ...] = tuple(MODE_MEANING)

#: The default accuracy budget: per output, RMSE(quantized - float) <= 3% of the float output's std on the
#: evaluation set. An int8 MLP lands at ~1.2-1.5% here, while its max error is ~19% of the std: a budget
#: on the max error would flag every model.
DEFAULT_RMSE_REL = 0.03
BUDGET_KEYS = ("rmse_rel", "max_abs", "mean_abs", "metric")


def parse_quantize(value: Any, names: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``{backend: (mode, ...)}`` for the backends being exported; refuses unsupported pairs.

    ``value`` is None (float only), a mode (``"int8"``), a list of modes, a comma-separated string
    (``"fp16,int8"``), or a mapping ``{backend: mode(s)}`` for per-backend modes.

    Raises:
        QuantizeModeError: an unknown mode, a mapping key not being exported, or a mode a backend does not
            support (the message lists what it supports, and which backends support the mode).
    """
    from enn_nb.engine.registry import get_backend

    if value is None or value == "" or value == ():
        return {}
    if isinstance(value, Mapping):
        per = {str(k): parse_modes(v, f"quantize[{k!r}]") for k, v in value.items()}
        for key in per:
            if key not in names:
                raise QuantizeModeError(
                    f"`quantize` has an entry for `{key}`, which is not being exported.{closest(key, list(names))} "
                    f"Backends here: {', '.join(names)}.", backend=key, option="quantize", value=value, known=list(names))
    else:
        modes = parse_modes(value, "quantize")
        per = {name: modes for name in names}
    out: dict[str, tuple[str, ...]] = {}
    for name, modes in per.items():
        supported = supported_modes(get_backend(name))
        for mode in modes:
            if mode not in supported:
                able = [n for n in names if mode in supported_modes(get_backend(n))]
                raise QuantizeModeError(
                    f"`{name}` cannot export quantize={mode!r}: it supports "
                    f"{', '.join(repr(m) for m in supported) or 'no quantization'}"
                    f"{'' if not supported else ' (' + '; '.join(f'{m}: {q}' for m, q in supported.items()) + ')'}. "
                    + (f"Backends here that do: {', '.join(able)}. " if able else "")
                    + "Give per-backend modes, e.g. quantize={" + f"'{able[0] if able else 'onnx'}': '{mode}'" + "}.",
                    backend=name, option="quantize", value=mode, known=list(supported),
                )
        if modes:
            out[name] = modes
    return out


def parse_modes(value: Any, where: str) -> tuple[str, ...]:
    """Modes from a string (``"fp16,int8"``) or a list; QuantizeModeError naming an unknown one."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    elif value is None:
        items = []
    else:
        raise QuantizeModeError(f"`{where}` is {value!r}; give a mode ({', '.join(MODES)}), a list of them, or None.",
                                option="quantize", value=value, known=list(MODES))
    for item in items:
        if item not in MODES:
            raise QuantizeModeError(
                f"`{where}` mode {item!r} is unknown.{closest(item, list(MODES))} Modes: "
                + "; ".join(f"{m}: {why}" for m, why in MODE_MEANING.items()) + ".",
                option="quantize", value=item, known=list(MODES),
            )
    return tuple(dict.fromkeys(items))


def supported_modes(backend: Any) -> dict[str, str]:
    """``{mode: the quantizer that does it}`` a backend declares (``Backend.quantize_modes``)."""
    return dict(getattr(backend, "quantize_modes", None) or {})


def parse_budget(value: Any) -> dict[str, Any]:
    """The accuracy budget as ``{"rmse_rel": r, "max_abs": a|None, "mean_abs": m|None, "metric": t|None}``.

    ``value`` is None (the default, RMSE <= 3% of the float output's std per output), a number (that
    ratio), or a mapping of some of :data:`BUDGET_KEYS` (``metric`` bounds the user metric's value).

    Raises:
        SpecError: a negative / non-finite number or an unknown key.
    """
    budget: dict[str, Any] = {"rmse_rel": DEFAULT_RMSE_REL, "max_abs": None, "mean_abs": None, "metric": None}
    if value is None:
        return budget
    given = {"rmse_rel": value} if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if not isinstance(given, Mapping):
        raise SpecError(f"`accuracy_budget` is {value!r}; give a number (RMSE as a fraction of the float output's "
                        f"std, default {DEFAULT_RMSE_REL}) or a dict with keys {', '.join(BUDGET_KEYS)}.")
    for key, limit in given.items():
        if key not in BUDGET_KEYS:
            raise SpecError(f"`accuracy_budget` has key {key!r}.{closest(str(key), list(BUDGET_KEYS))} Keys: "
                            f"{', '.join(BUDGET_KEYS)}.")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float))
                                  or not math.isfinite(limit) or limit < 0):
            raise SpecError(f"`accuracy_budget[{key!r}]` is {limit!r}; give a finite number >= 0 or None.")
        budget[key] = None if limit is None else float(limit)
    return budget


def check_metric(metric: Any) -> Callable[..., Any] | None:
    """``accuracy_metric``: None or a callable ``metric(float_outputs, quantized_outputs) -> float``."""
    if metric is not None and not callable(metric):
        raise SpecError(f"`accuracy_metric` is a {type(metric).__name__}; give a callable "
                        "`metric(float_outputs, quantized_outputs) -> float` (lists of numpy arrays), e.g. the MAE "
                        "of the forecast.")
    return metric


def label(backend: str, mode: str | None) -> str:
    """``onnx`` for the float artifact, ``onnx:int8`` for a quantized one (plan names, rows)."""
    return f"{backend}:{mode}" if mode else backend


def split_label(name: str) -> tuple[str, str | None]:
    """``("onnx", "int8")`` from ``onnx:int8``; ``("onnx", None)`` from ``onnx``."""
    backend, _, mode = name.partition(":")
    return backend, (mode or None)
