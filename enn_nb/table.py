"""The one table of enn_nb: rows shown as HTML in a notebook and as aligned text in a terminal.

Export reports, the backends list, checkpoint manifests, report sections and the magics all render
through :class:`Table`, so every table escapes, aligns and truncates the same way. Core, not
notebook layer: it needs no IPython (a notebook calls ``_repr_html_``, a terminal ``str``).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any, NamedTuple

from enn_nb._safeio import escape


class Link(NamedTuple):
    """A cell shown as a link in HTML and as its text in a terminal."""

    text: str
    href: str


class Cell(NamedTuple):
    """A cell with HTML looks (a colour, code font); plain text in a terminal."""

    text: str
    style: str = ""
    code: bool = False


class Table:
    """Rows of values shown as an HTML table in a notebook and as aligned text in a terminal.

    A cell is any value (None shows empty, booleans as yes/no), a :class:`Link` or a :class:`Cell`.

    Args:
        columns: the header.
        rows: one sequence of cells per row.
        title: shown above the table (an HTML caption).
        footer: one line shown below the table.
        css_class: the HTML table's class (pages and tests find tables by it).
        max_width: text cells longer than this are cut with ``...`` in the terminal rendering.
    """

    def __init__(
        self,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        title: str = "",
        footer: str = "",
        css_class: str = "enn-nb-table",
        max_width: int | None = None,
    ) -> None:
        self.columns = list(columns)
        self.rows = [list(row) for row in rows]
        self.title = title
        self.footer = footer
        self.css_class = css_class
        self.max_width = max_width

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(_td(v) for v in row) + "</tr>" for row in self.rows)
        caption = f"<caption style='text-align:left'><b>{html.escape(self.title)}</b></caption>" if self.title else ""
        foot = f"<div style='font-size:small'>{html.escape(self.footer)}</div>" if self.footer else ""
        return (
            f"<table class='{html.escape(self.css_class)}'>{caption}<thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>{foot}"
        )

    def __str__(self) -> str:
        # Cells may hold strings from someone else's file (manifests, sidecars): no ANSI escape,
        # carriage return or newline of theirs reaches the terminal.
        cells = [self.columns, *[[self._cut(escape(text(v))) for v in row] for row in self.rows]]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        extra = [escape(self.title)] if self.title else []
        return "\n".join(extra + lines + ([escape(self.footer)] if self.footer else []))

    __repr__ = __str__

    def __len__(self) -> int:
        return len(self.rows)

    def _cut(self, value: str) -> str:
        if self.max_width is None or len(value) <= self.max_width:
            return value
        return value[: self.max_width - 3] + "..."


def _td(value: Any) -> str:
    if isinstance(value, Link):
        inner = f"<a href='{html.escape(str(value.href))}'>{html.escape(str(value.text))}</a>"
    elif isinstance(value, Cell):
        inner = html.escape(value.text)
        if value.code:
            inner = f"<code>{inner}</code>"
        if value.style:
            return f"<td style='text-align:left;{html.escape(value.style)}'>{inner}</td>"
    else:
        inner = html.escape(text(value))
    return f"<td style='text-align:left'>{inner}</td>"


def text(value: Any) -> str:
    """A cell's terminal text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (Link, Cell)):
        return str(value.text)
    return str(value)
