"""A report's verdict: shown at the top of the executed notebook and read back by the runner (the CI gate)."""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Mapping
from typing import Any

from enn_nb.engine.vocabulary import STATUS_COLORS, UNVERIFIED_COLOR

#: The mime type under which a verdict travels inside the executed notebook's outputs.
VERDICT_MIME = "application/vnd.enn-nb.verdict+json"

_COLORS = {"pass": ("#0a5d1f", "#e6f4ea"), "fail": ("#8a1111", "#fdecea"), "running": ("#444", "#f2f2f2")}


@dataclasses.dataclass
class Verdict:
    """Pass/fail of a report, with one line per backend and the reasons of every failure.

    Attributes:
        ok: the gate: False when a requested backend failed, crashed, mismatched, or was named
            explicitly and is unavailable here.
        headline: one sentence for the top of the report.
        backends: ``{backend: {"status", "reason", "max_abs_err", "cached"}}``.
        failures: one line per failing backend: ``"onnx: mismatch (max abs error 3e-07 > atol 0 at batch 1)"``.
        notes: lines that do not fail the gate (deferred builds, backends skipped as unavailable).
        sidecars: ``{backend: sidecar path}`` for every sidecar written (the runner attaches them).
    """

    ok: bool
    headline: str
    backends: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    failures: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    sidecars: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})

    @property
    def word(self) -> str:
        return "PASS" if self.ok else "FAIL"

    def __repr__(self) -> str:
        lines = [f"{self.word}: {self.headline}"]
        lines += [f"  - {line}" for line in self.failures]
        lines += [f"  . {line}" for line in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        fg, bg = _COLORS["pass" if self.ok else "fail"]
        items = "".join(f"<li>{html.escape(line)}</li>" for line in self.failures)
        notes = "".join(f"<li style='color:#555'>{html.escape(line)}</li>" for line in self.notes)
        chips = " ".join(
            f"<span style='display:inline-block;margin:2px 4px 2px 0;padding:1px 8px;border-radius:9px;"
            f"background:{_chip(info)};color:white;font-size:85%'>"
            f"{html.escape(name)}: {html.escape(badge(info))}</span>"
            for name, info in self.backends.items()
        )
        return (
            f"<div class='enn-nb-verdict' data-verdict='{self.word.lower()}' style='border:2px solid {fg};"
            f"background:{bg};padding:10px 14px;border-radius:6px;margin:6px 0'>"
            f"<div style='font-size:140%;font-weight:bold;color:{fg}'>{self.word}</div>"
            f"<div style='margin:4px 0'>{html.escape(self.headline)}</div><div>{chips}</div>"
            + (f"<ul style='margin:6px 0'>{items}</ul>" if items else "")
            + (f"<ul style='margin:6px 0'>{notes}</ul>" if notes else "")
            + "</div>"
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return {"text/plain": repr(self), "text/html": self._repr_html_(), VERDICT_MIME: self.to_dict()}


def badge(info: Mapping[str, Any]) -> str:
    """A backend's badge text: its status, and for an ``ok`` whether it was verified (``ok, not verified``)."""
    status = str(info.get("status", ""))
    kind = info.get("verification")
    if status == "ok" and kind:
        return "ok, verified" if kind == "verified" else "ok, not verified"
    return status


def _chip(info: Mapping[str, Any]) -> str:
    status = str(info.get("status", ""))
    if status == "ok" and info.get("verification") == "unverified":
        return UNVERIFIED_COLOR
    return STATUS_COLORS.get(status, "#555")


class Pending:
    """What the verdict cell shows while the report still runs; ``update`` swaps in the verdict."""

    def __init__(self, text: str = "Running the report...") -> None:
        self.text = text

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        fg, bg = _COLORS["running"]
        return {
            "text/plain": self.text,
            "text/html": f"<div class='enn-nb-verdict' data-verdict='running' style='border:2px dashed {fg};"
            f"background:{bg};padding:10px 14px;border-radius:6px'>{html.escape(self.text)}</div>",
        }


def find_verdict(nb: Any) -> dict[str, Any] | None:
    """The verdict document in an executed notebook's outputs (the last one if several), or None."""
    found = None
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            data = output.get("data") or {}
            if VERDICT_MIME in data:
                found = data[VERDICT_MIME]
    return dict(found) if found is not None else None
