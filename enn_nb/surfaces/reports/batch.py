"""Run one report per file matching a glob and write an index linking each report with its verdict."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from enn_nb._fs import write_text
from enn_nb._safeio import escape
from enn_nb.errors import ReportError, SpecError, UnknownNameError
from enn_nb.surfaces.factory import model_path as resolve_model_path
from enn_nb.surfaces.reports.catalog import (
    check_parameters,
    declared_parameters,
    paths_as_text,
    resolve_template,
    template_metadata,
    templates,
)
from enn_nb.surfaces.reports.runner import ReportResult, _absolute_paths, report
from enn_nb.surfaces.reports.verdict import Verdict
from enn_nb.surfaces.sweep.cluster import open_runner
from enn_nb.surfaces.sweep.engine import Outcome, Task, run_tasks
from enn_nb.surfaces.sweep.naming import slug, unique


@dataclasses.dataclass
class BatchEntry:
    """One matched file and the report run on it; ``retries``: how often a cluster worker died under it."""

    source: Path | str  # a URL stays a string
    result: ReportResult
    retries: int = 0


@dataclasses.dataclass
class BatchResult:
    """Every report of a batch run and the index written for them."""

    entries: list[BatchEntry]
    index: Path
    runner: str = "this process"

    @property
    def ok(self) -> bool:
        return all(e.result.ok for e in self.entries)

    @property
    def failures(self) -> list[str]:
        return [f"{escape(e.source)}: {escape(line)}" for e in self.entries for line in e.result.failures]

    def __repr__(self) -> str:
        passed = sum(e.result.ok for e in self.entries)
        # names come from the files the glob matched: a name may hold terminal escapes
        lines = [f"{passed} of {len(self.entries)} reports passed; index: {escape(self.index)}"]
        lines += [f"  {e.result.status.upper():5} {escape(e.source)} -> {escape(e.result.notebook.name)}"
                  f"{_retried(e.retries)}"
                  for e in self.entries]
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
    timeout: float | None = None,
    cluster: Any = None,
    parameters: Mapping[str, Any] | None = None,
    model_path: Sequence[str | os.PathLike[str]] = (),
    **params: Any,
) -> BatchResult:
    """Run ``template`` once per path matching ``pattern``, then write ``<out_dir>/index.html``.

    A report whose cell fails is recorded as ``error`` and the batch goes on with the next file. The
    index is rewritten after each report; an interrupted batch (Ctrl-C) cancels the reports not
    finished, writes the index of those that did, and raises ``KeyboardInterrupt``.

    Args:
        template: template name or path.
        pattern: a glob (``ckpts/*.safetensors``; ``**`` recurses, not into symlinked folders), relative to
            the working directory; at most :data:`~enn_nb.surfaces.reports.matching.MAX_MATCHES` matches.
        out_dir: folder for every report and the index.
        parameter: the template parameter each match is given to; defaults to the template's
            ``each_parameter`` metadata, else ``checkpoint``.
        html, no_input, timeout, parameters, model_path, **params: as for :func:`enn_nb.report`, for every run.
        progress: one bar over the batch (reports done, running, failed).
        cluster: where the reports run: None (one after another in this process), ``"local:N"``,
            ``"tcp://host:8786"`` or a ``distributed.Client``; each report is one Dask task in a worker
            process (see :mod:`enn_nb.surfaces.sweep.cluster`). The index and verdicts do not depend on it.

    Raises:
        ReportError: the glob matches nothing, or too much.
        UnknownNameError: the template does not declare ``parameter`` or a parameter given.
        ClusterError: the cluster cannot be used (nothing ran).
    """
    path = resolve_template(template)
    from enn_nb.storage import is_url

    if is_url(pattern):  # `s3://bucket/ckpts/*`: listed through fsspec (options from the environment)
        from enn_nb import storage

        try:
            matches = storage.glob(pattern)
        except SpecError:
            matches = []
    else:
        from enn_nb.surfaces.reports.matching import expand

        matches = expand(pattern)  # `**` does not follow symlinked folders; capped
    if not matches:
        where = "on the store" if is_url(pattern) else f"relative to {Path.cwd()}"
        raise ReportError(f"No file matches `{escape(pattern)}` ({where}); nothing to report on.")
    target = parameter or template_metadata(path).get("each_parameter") or "checkpoint"
    declared = declared_parameters(path)
    if target not in declared:
        raise UnknownNameError(
            f"The template `{path.stem}` declares no parameter `{target}` to receive each match; "
            f"declared: {', '.join(f'`{k}`' for k in declared)}. Pass --each-param NAME.",
            name=target,
            known=list(declared),
        )
    values = paths_as_text({**dict(parameters or {}), **params})
    check_parameters(path, {**values, target: matches[0]}, declared=declared)  # a typo fails before any run
    # paths as the caller meant them: a worker runs elsewhere (another working directory, another machine)
    path_parameters = [*template_metadata(path).get("path_parameters", []), target]
    absolute = [_absolute_paths({**values, target: match}, path_parameters) for match in matches]
    out = Path(out_dir).expanduser().resolve()
    # absolute, with PYTHONPATH's relative entries resolved here: a worker imports the model elsewhere
    import_path = resolve_model_path(model_path)
    used: set[str] = set()
    # a built-in template goes by name: a worker on another machine finds it in its own enn_nb
    by_name = str(template) if str(template) in templates() else str(path)
    tasks = [
        Task(stem, _report_task, (by_name, str(out), stem, html, no_input, timeout, given, import_path))
        for match, given in zip(matches, absolute)
        for stem in [unique(f"{path.stem}-{slug(Path(match).name)}", used)]
    ]
    sources = {task.name: match if is_url(match) else Path(match) for task, match in zip(tasks, matches)}

    def entries_of(outcomes: list[Outcome]) -> list[BatchEntry]:
        return [BatchEntry(sources[o.task.name], _result_of(o, str(template)), o.retries)
                for o in outcomes if o.state != "cancelled"]

    def write(outcomes: list[Outcome]) -> None:  # after each report: a partial batch has an index
        _write_index(out, entries_of(outcomes), path.stem,
                     not_run=[str(sources[o.task.name]) for o in outcomes if o.state == "cancelled"])

    with open_runner(cluster, out_dir=out, sources=matches) as runner:
        out.mkdir(parents=True, exist_ok=True)  # once the cluster is known to work: a refused batch leaves nothing
        outcomes = run_tasks(tasks, runner, desc=path.stem, progress=progress, on_change=write)
    return BatchResult(entries_of(outcomes), out / "index.html", runner.label)


def _report_task(template: str, out: str, stem: str, html: bool, no_input: bool, timeout: float | None,
                 values: dict[str, Any], model_path: list[str]) -> ReportResult:
    """One report of a batch, where it runs (this process or a Dask worker); a failed cell is a result."""
    try:
        return report(template, out, name=stem, html=html, no_input=no_input, progress=False, timeout=timeout,
                      parameters=values, model_path=model_path)
    except ReportError as exc:
        nb = Path(getattr(exc, "output_path", None) or Path(out) / f"{stem}.ipynb")
        page = nb.with_suffix(".html")
        return ReportResult(Path(template).stem, nb, page if html and page.exists() else None, values,
                            _verdict_of(nb), 0.0, error=exc)


def _result_of(outcome: Outcome, template: str) -> ReportResult:
    """The task's report, or for a task that never returned one (its workers died) an ``error`` result."""
    if outcome.state == "done":
        result: ReportResult = outcome.value
        result.template = template
        return result
    _, out, stem, html, _, _, values, _ = outcome.task.args
    nb = Path(out) / f"{stem}.ipynb"
    return ReportResult(template, nb, None, values, None, 0.0,
                        error=ReportError(f"The report `{stem}` did not finish: {outcome.cause}."))


def _retried(retries: int) -> str:
    return f" (retried {retries}x after its worker died)" if retries else ""


def _verdict_of(nb_path: Path) -> Any:
    try:
        meta = json.loads(nb_path.read_text(encoding="utf-8")).get("metadata", {}).get("enn_nb", {})
    except (OSError, ValueError):
        return None
    return Verdict.from_dict(meta["verdict"]) if meta.get("verdict") else None


def _write_index(out: Path, entries: list[BatchEntry], template: str, *, not_run: list[str] | None = None) -> None:
    page = _index_html(entries, title=f"{template}: {len(entries)} reports", base=out, not_run=not_run)
    write_text(out / "index.html", page)
    doc = [
        {
            "source": str(e.source),
            "status": e.result.status,
            "notebook": os.path.relpath(e.result.notebook, out),
            "html": os.path.relpath(e.result.html, out) if e.result.html else None,
            "failures": e.result.failures,
            "headline": e.result.verdict.headline if e.result.verdict else None,
            "retries": e.retries,
        }
        for e in entries
    ]
    index: dict[str, Any] = {"template": template, "reports": doc}
    if not_run:
        index["interrupted"] = True
        index["not_run"] = not_run
    write_text(out / "index.json", json.dumps(index, indent=2))


_STATUS_STYLE = {"pass": "#188038", "fail": "#c5221f", "error": "#8a1111"}


def _index_html(entries: list[BatchEntry], *, title: str, base: Path, not_run: list[str] | None = None) -> str:
    rows = []
    for e in entries:
        r = e.result
        target = r.html or r.notebook
        link = f"<a href='{html.escape(os.path.relpath(target, base))}'>{html.escape(target.name)}</a>"
        if r.html:
            link += f" (<a href='{html.escape(os.path.relpath(r.notebook, base))}'>ipynb</a>)"
        detail = html.escape(r.verdict.headline) if r.verdict else ""
        if e.retries:
            detail += f" <i>{html.escape(_retried(e.retries).strip(' ()'))}</i>"
        if r.failures:
            detail += "<ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in r.failures) + "</ul>"
        rows.append(
            f"<tr data-status='{r.status}'><td>{html.escape(str(e.source))}</td>"
            f"<td style='color:white;background:{_STATUS_STYLE[r.status]};font-weight:bold;text-align:center'>"
            f"{r.status.upper()}</td><td>{link}</td><td>{detail}</td></tr>"
        )
    passed = sum(e.result.ok for e in entries)
    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    if not_run:
        stamp += f" · interrupted: {len(not_run)} not run ({', '.join(not_run)})"
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;"
        "text-align:left}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{passed} of {len(entries)} passed · {html.escape(stamp)}</p>"
        "<table><thead><tr><th>checkpoint</th><th>verdict</th><th>report</th><th>details</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></body></html>"
    )
