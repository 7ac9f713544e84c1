"""Run one report per file matching a glob and write an index linking each report with its verdict."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import glob
import html
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from enn_nb._fs import write_text
from enn_nb.errors import ReportError, UnknownNameError
from enn_nb.surfaces.reports.catalog import declared_parameters, resolve_template, template_metadata
from enn_nb.surfaces.reports.runner import ReportResult, report
from enn_nb.surfaces.reports.verdict import Verdict


@dataclasses.dataclass
class BatchEntry:
    """One matched file and the report run on it."""

    source: Path
    result: ReportResult


@dataclasses.dataclass
class BatchResult:
    """Every report of a batch run and the index written for them."""

    entries: list[BatchEntry]
    index: Path

    @property
    def ok(self) -> bool:
        return all(e.result.ok for e in self.entries)

    @property
    def failures(self) -> list[str]:
        return [f"{e.source}: {line}" for e in self.entries for line in e.result.failures]

    def __repr__(self) -> str:
        passed = sum(e.result.ok for e in self.entries)
        lines = [f"{passed} of {len(self.entries)} reports passed; index: {self.index}"]
        lines += [f"  {e.result.status.upper():5} {e.source} -> {e.result.notebook.name}" for e in self.entries]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        # shown in a notebook: links relative to its folder (the working directory), not the index's
        return _index_html(self.entries, title=f"{len(self.entries)} reports", base=Path.cwd())


def run_batch(
    template: str | os.PathLike[str],
    pattern: str,
    out_dir: str | os.PathLike[str],
    /,
    *,
    parameter: str | None = None,
    html: bool = False,
    no_input: bool = True,
    progress: bool = True,
    parameters: Mapping[str, Any] | None = None,
    **params: Any,
) -> BatchResult:
    """Run ``template`` once per path matching ``pattern``, then write ``<out_dir>/index.html``.

    A report whose cell fails is recorded as ``error`` and the batch goes on with the next file.

    Args:
        template: template name or path.
        pattern: a glob (``ckpts/*.safetensors``; ``**`` recurses), relative to the working directory.
        out_dir: folder for every report and the index.
        parameter: the template parameter each match is given to; defaults to the template's
            ``each_parameter`` metadata, else ``checkpoint``.
        html, no_input, progress, parameters, **params: as for :func:`enn_nb.report`, for every run.

    Raises:
        ReportError: the glob matches nothing.
        UnknownNameError: the template does not declare ``parameter``.
    """
    path = resolve_template(template)
    target = parameter or template_metadata(path).get("each_parameter") or "checkpoint"
    declared = declared_parameters(path)
    if target not in declared:
        raise UnknownNameError(
            f"The template `{path.stem}` declares no parameter `{target}` to receive each match; "
            f"declared: {', '.join(f'`{k}`' for k in declared)}. Pass --each-param NAME.",
            name=target,
            known=list(declared),
        )
    matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    if not matches:
        raise ReportError(f"No file matches `{pattern}` (relative to {Path.cwd()}); nothing to report on.")
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    values = {**dict(parameters or {}), **params}
    entries: list[BatchEntry] = []
    used: set[str] = set()
    for match in matches:
        stem = _unique(f"{path.stem}-{_slug(Path(match).name)}", used)
        try:
            result = report(path, out, name=stem, html=html, no_input=no_input, progress=progress,
                            parameters={**values, target: match})
        except ReportError as exc:
            nb = Path(getattr(exc, "output_path", None) or out / f"{stem}.ipynb")
            page = nb.with_suffix(".html")
            result = ReportResult(str(template), nb, page if html and page.exists() else None,
                                  {**values, target: match}, _verdict_of(nb), 0.0, error=exc)
        entries.append(BatchEntry(Path(match), result))
        _write_index(out, entries, path.stem)  # rewritten after each report: a partial batch has an index
    return BatchResult(entries, out / "index.html")


def _verdict_of(nb_path: Path) -> Any:
    try:
        meta = json.loads(nb_path.read_text(encoding="utf-8")).get("metadata", {}).get("enn_nb", {})
    except (OSError, ValueError):
        return None
    return Verdict.from_dict(meta["verdict"]) if meta.get("verdict") else None


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).replace(".", "_").strip("_") or "file"


def _unique(stem: str, used: set[str]) -> str:
    candidate, n = stem, 2
    while candidate in used:
        candidate, n = f"{stem}-{n}", n + 1
    used.add(candidate)
    return candidate


def _write_index(out: Path, entries: list[BatchEntry], template: str) -> None:
    page = _index_html(entries, title=f"{template}: {len(entries)} reports", base=out)
    write_text(out / "index.html", page)
    doc = [
        {
            "source": str(e.source),
            "status": e.result.status,
            "notebook": os.path.relpath(e.result.notebook, out),
            "html": os.path.relpath(e.result.html, out) if e.result.html else None,
            "failures": e.result.failures,
            "headline": e.result.verdict.headline if e.result.verdict else None,
        }
        for e in entries
    ]
    write_text(out / "index.json", json.dumps({"template": template, "reports": doc}, indent=2))


_STATUS_STYLE = {"pass": "#188038", "fail": "#c5221f", "error": "#8a1111"}


def _index_html(entries: list[BatchEntry], *, title: str, base: Path) -> str:
    rows = []
    for e in entries:
        r = e.result
        target = r.html or r.notebook
        link = f"<a href='{html.escape(os.path.relpath(target, base))}'>{html.escape(target.name)}</a>"
        if r.html:
            link += f" (<a href='{html.escape(os.path.relpath(r.notebook, base))}'>ipynb</a>)"
        detail = html.escape(r.verdict.headline) if r.verdict else ""
        if r.failures:
            detail += "<ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in r.failures) + "</ul>"
        rows.append(
            f"<tr data-status='{r.status}'><td>{html.escape(str(e.source))}</td>"
            f"<td style='color:white;background:{_STATUS_STYLE[r.status]};font-weight:bold;text-align:center'>"
            f"{r.status.upper()}</td><td>{link}</td><td>{detail}</td></tr>"
        )
    passed = sum(e.result.ok for e in entries)
    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;"
        "text-align:left}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{passed} of {len(entries)} passed · {html.escape(stamp)}</p>"
        "<table><thead><tr><th>checkpoint</th><th>verdict</th><th>report</th><th>details</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></body></html>"
    )
