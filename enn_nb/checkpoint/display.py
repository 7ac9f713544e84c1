"""Text and HTML renderings of a Manifest (terminal and notebook)."""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any

from .hashing import short

if TYPE_CHECKING:
    from .manifest import Manifest

MAX_ROWS = 50  # tensor rows shown; the rest are summarised


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _summary(m: Manifest) -> list[tuple[str, str]]:
    spec = m.spec
    rows = [
        ("path", str(m.path or "")),
        ("format", m.format),
        ("schema", m.schema),
        ("created", m.created),
        ("builder", str(spec.builder)),
        ("in_dim", str(spec.in_dim)),
        ("out_shape", str(list(spec.out_shape)) if spec.out_shape is not None else "None"),
        ("tasks", ", ".join(str(t.get("name", "?")) for t in spec.tasks or []) or "None"),
        ("tensors", f"{len(m.tensors)} ({m.parameter_count:,} values, {human_bytes(m.tensor_bytes)})"),
        ("content_hash", m.content_hash),
        ("versions", ", ".join(f"{k} {v}" for k, v in m.versions.items() if v)),
    ]
    if m.optimizer:
        rows.append(("optimizer", f"{m.optimizer.get('class')} ({len(m.optimizer.get('tensors', []))} tensors)"))
    if m.files:
        rows.append(("files", f"{len(m.files)} ({human_bytes(sum(f.nbytes for f in m.files))})"))
    if m.source:
        rows.append(("source", json.dumps(m.source, sort_keys=True)))
    if m.metadata:
        rows.append(("metadata", _short_json(m.metadata)))
    if spec.config:
        rows.append(("config", _short_json(spec.config)))
    return rows


def _short_json(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tensor_rows(m: Manifest) -> list[tuple[str, str, str, str, str]]:
    return [
        (t.name, t.dtype, "[" + ", ".join(str(d) for d in t.shape) + "]", human_bytes(t.nbytes),
         short(t.hash))
        for t in m.tensors[:MAX_ROWS]
    ]


def manifest_text(m: Manifest) -> str:
    """A plain-text rendering for terminals (``print(manifest)``, ``enn-nb inspect``)."""
    summary = _summary(m)
    width = max(len(k) for k, _ in summary)
    lines = [f"enn_nb checkpoint ({m.format})"]
    lines += [f"  {k.ljust(width)}  {v}" for k, v in summary]
    rows = _tensor_rows(m)
    if rows:
        header = ("name", "dtype", "shape", "bytes", "hash")
        widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(5)]
        lines.append("")
        lines.append("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths)))
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        if len(m.tensors) > MAX_ROWS:
            lines.append(f"  ... {len(m.tensors) - MAX_ROWS} more tensors")
    return "\n".join(line.rstrip() for line in lines)


def manifest_html(m: Manifest) -> str:
    """An HTML table for notebooks (``Manifest._repr_html_``)."""
    esc = html.escape
    head = "".join(
        f"<tr><th style='text-align:left'>{esc(k)}</th><td style='text-align:left'><code>{esc(v)}</code></td></tr>"
        for k, v in _summary(m)
    )
    body = "".join(
        "<tr>" + "".join(f"<td style='text-align:left'><code>{esc(c)}</code></td>" for c in row) + "</tr>"
        for row in _tensor_rows(m)
    )
    more = (
        f"<tr><td colspan='5'>... {len(m.tensors) - MAX_ROWS} more tensors</td></tr>" if len(m.tensors) > MAX_ROWS else ""
    )
    return (
        "<div class='enn-nb-manifest'>"
        f"<strong>enn_nb checkpoint ({esc(m.format)})</strong>"
        f"<table class='enn-nb-summary'>{head}</table>"
        "<table class='enn-nb-tensors'><thead><tr><th>name</th><th>dtype</th><th>shape</th><th>bytes</th>"
        f"<th>hash</th></tr></thead><tbody>{body}{more}</tbody></table></div>"
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
    return "\n".join(lines)
