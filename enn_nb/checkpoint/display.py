"""Text and HTML renderings of a Manifest (terminal and notebook)."""

from __future__ import annotations

import html
import json
from typing import Any

from enn_nb._format import human_size
from enn_nb._safeio import escape
from enn_nb.model.signature import describe
from enn_nb.table import Cell, Table

from .hashing import short

# Manifests are typed `Any` here: manifest.py renders itself through this module, which therefore sits
# below it and does not import it (not even for type checking).

MAX_ROWS = 50  # tensor rows shown; the rest are summarised


def _sig_text(sigs: list[Any] | None) -> str:
    return describe(sigs) if sigs else "None"


def _summary(m: Any) -> list[tuple[str, str]]:
    spec = m.spec
    rows = [
        ("path", str(m.path or "")),
        ("format", m.format),
        ("schema", m.schema),
        ("created", m.created),
        ("builder", str(spec.builder)),
        ("in_dim", str(spec.in_dim)),
        ("out_shape", str(list(spec.out_shape)) if spec.out_shape is not None else "None"),
        *([("inputs", _sig_text(spec.inputs)), ("outputs", _sig_text(spec.outputs))] if spec.inputs is not None else []),
        ("tasks", ", ".join(str(t.get("name", "?")) for t in spec.tasks or []) or "None"),
        ("tensors", f"{len(m.tensors)} ({m.parameter_count:,} values, {human_size(m.tensor_bytes)})"),
        ("content_hash", m.content_hash),
        ("versions", ", ".join(f"{k} {v}" for k, v in m.versions.items() if v)),
    ]
    if m.optimizer:
        rows.append(("optimizer", f"{m.optimizer.get('class')} ({len(m.optimizer.get('tensors', []))} tensors)"))
    if m.files:
        rows.append(("files", f"{len(m.files)} ({human_size(sum(f.nbytes for f in m.files))})"))
    if m.source:
        rows.append(("source", json.dumps(m.source, sort_keys=True)))
    if m.self_check:
        rows.append(("self_check", f"batch {m.self_check['inputs'][0]['shape'][0]} recorded (`{m.self_check['call']}`)"))
    if m.metadata:
        rows.append(("metadata", _short_json(m.metadata)))
    if spec.config:
        rows.append(("config", _short_json(spec.config)))
    return rows


def _short_json(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tensor_rows(m: Any) -> list[tuple[str, str, str, str, str]]:
    return [
        (t.name, t.dtype, "[" + ", ".join(str(d) for d in t.shape) + "]", human_size(t.nbytes),
         short(t.hash))
        for t in m.tensors[:MAX_ROWS]
    ]


def _tables(m: Any) -> tuple[Table, Table]:
    more = len(m.tensors) - MAX_ROWS
    tensors = Table(
        ("name", "dtype", "shape", "bytes", "hash"),
        [[Cell(c, code=True) for c in row] for row in _tensor_rows(m)],
        footer=f"... {more} more tensors" if more > 0 else "",
        css_class="enn-nb-tensors",
    )
    summary = Table(("field", "value"), [[k, Cell(v, code=True)] for k, v in _summary(m)], css_class="enn-nb-summary")
    return summary, tensors


def manifest_text(m: Any) -> str:
    """A plain-text rendering for terminals (``print(manifest)``, ``enn-nb inspect``)."""
    summary, tensors = _tables(m)
    parts = [f"enn_nb checkpoint ({m.format})", str(summary)]
    if tensors.rows:
        parts += ["", str(tensors)]
    return "\n".join(parts)


def manifest_html(m: Any) -> str:
    """An HTML table for notebooks (``Manifest._repr_html_``)."""
    summary, tensors = _tables(m)
    return (
        f"<div class='enn-nb-manifest'><strong>enn_nb checkpoint ({html.escape(m.format)})</strong>"
        f"{summary._repr_html_()}{tensors._repr_html_()}</div>"
    )


def loaded_text(loaded: Any) -> str:
    lines = [f"Loaded {type(loaded.model).__name__} from {loaded.manifest.path} ({loaded.manifest.format}, "
             f"verified={loaded.verified})"]
    if loaded.missing_keys:
        lines.append(f"  missing keys ({len(loaded.missing_keys)}): {', '.join(loaded.missing_keys[:20])}")
    if loaded.unexpected_keys:
        lines.append(f"  unexpected keys ({len(loaded.unexpected_keys)}): {', '.join(loaded.unexpected_keys[:20])}")
    if loaded.shape_mismatches:
        lines.append(f"  shape mismatches: {loaded.shape_mismatches}")
    if loaded.optimizer_state is not None:
        lines.append("  optimizer state: present")
    lines.append(f"  restore check: {loaded.restore}")

    return "\n".join(escape(line) for line in lines)
