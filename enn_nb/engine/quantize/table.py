"""The quantization trade-off of one export: one row per backend x mode (size, accuracy change, what it holds)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from enn_nb._format import human_size
from enn_nb.engine.vocabulary import STATUS_COLORS
from enn_nb.table import Cell, Table

COLUMNS = ("backend", "mode", "status", "size", "size vs float", "latency vs float", "int8 / fp16 weights",
           "activations", "RMSE / std (worst output)", "max abs err", "metric", "evaluated on")



def rows(results: Sequence[Any], latency: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """One dict per quantized result (and its float row), with ratios to the float artifact of the same backend.

    ``latency``: ``{row label: ms}`` from the latency measurement, when it ran.
    """
    floats = {r.backend: r for r in results if not r.quantize}
    out = []
    for r in results:
        mode = r.quantize
        if not mode:
            continue
        base_name = r.backend.partition(":")[0]
        base = floats.get(base_name)
        q = r.quantization or {}
        held = q.get("artifact") or {}
        acc = q.get("accuracy") or {}
        worst = max(acc.get("outputs") or [], key=lambda o: o.get("rmse_rel") or 0.0, default={})
        lat = (latency or {}).get(r.backend)
        base_lat = (latency or {}).get(base_name)
        out.append({
            "backend": base_name,
            "mode": mode,
            "status": r.status,
            "size": r.size_bytes if r.files else None,
            "size_ratio": (r.size_bytes / base.size_bytes) if base is not None and base.size_bytes and r.files else None,
            "latency_ms": lat,
            "latency_ratio": (lat / base_lat) if lat and base_lat else None,
            "int8_fraction": held.get("int8_weight_fraction"),
            "fp16_fraction": held.get("fp16_weight_fraction"),
            "activation_dtype": held.get("activation_dtype"),
            "rmse_rel": worst.get("rmse_rel"),
            "worst_output": worst.get("name"),
            "max_abs": max((o.get("max_abs") or 0.0 for o in acc.get("outputs") or []), default=None),
            "metric": acc.get("metric"),
            "evaluated_on": acc.get("evaluated_on") or (acc.get("reason") and f"not measured: {acc['reason']}"),
            "drawn": bool(q.get("drawn_inputs")),
            "error": r.error,
        })
    return out


def table(results: Sequence[Any], latency: Mapping[str, float] | None = None, *, title: str = "") -> Table:
    """The rows of :func:`rows` as a :class:`~enn_nb.table.Table`."""
    shown = []
    drawn = False
    for row in rows(results, latency):
        drawn = drawn or row["drawn"]
        shown.append([
            Cell(row["backend"], code=True),
            row["mode"],
            Cell(row["status"], style=f"color:{STATUS_COLORS.get(row['status'], '#555')};font-weight:bold"),
            human_size(row["size"]) if row["size"] is not None else "-",
            _ratio(row["size_ratio"]),
            _ratio(row["latency_ratio"]),
            "-" if row["int8_fraction"] is None else f"{row['int8_fraction']:.0%} / {row['fp16_fraction']:.0%}",
            row["activation_dtype"] or "-",
            "-" if row["rmse_rel"] is None else f"{row['rmse_rel']:.2%}",
            "-" if row["max_abs"] is None else f"{row['max_abs']:.3g}",
            "-" if row["metric"] is None else f"{row['metric']:.4g}",
            row["evaluated_on"] or (row["error"] or "-"),
        ])
    footer = ("accuracy change against the float model on the evaluation set; weights and activations read back "
              "from each artifact")
    if drawn:
        footer = ("WARNING: calibrated and evaluated on inputs drawn from the signature (no calibration data given): "
                  "these errors predict nothing about real data. " + footer)
    return Table(COLUMNS, shown, title=title or "Quantized artifacts", footer=footer, css_class="enn-quantization",
                 max_width=60)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"
