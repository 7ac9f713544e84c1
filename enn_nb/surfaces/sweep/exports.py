"""``export_many``: export every checkpoint matching a glob to the same backends, one task per checkpoint.

Each checkpoint gets its own folder ``<out_dir>/<checkpoint name>/`` (its artifacts, sidecars and
vectors, exactly as ``enn_nb.export`` writes them), and the sweep writes ``index.json`` and
``index.html`` with one row per checkpoint and backend. A checkpoint's backends stay in one task: they
share one capture and one ONNX export, and one vectors file per folder.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import glob
import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from enn_nb._fs import write_text
from enn_nb.engine.pipeline import export
from enn_nb.engine.settings import ExportSettings
from enn_nb.engine.vocabulary import fails
from enn_nb.errors import ExportError
from enn_nb.surfaces.factory import load_with_model
from enn_nb.surfaces.sweep.cluster import open_runner
from enn_nb.surfaces.sweep.engine import Outcome, Task, run_tasks
from enn_nb.surfaces.sweep.naming import slug, unique


@dataclasses.dataclass
class SweepExport:
    """One checkpoint of the sweep: its export's report as a dict (``ExportReport.to_dict()``), or why there is none."""

    source: Path
    folder: Path
    state: str  # done | failed (the task never returned: its cause says why)
    report: dict[str, Any] | None = None
    cause: str | None = None
    retries: int = 0

    @property
    def results(self) -> list[dict[str, Any]]:
        return list(self.report["results"]) if self.report else []

    def failing(self, named: bool) -> list[str]:
        """``backend status: error`` for each result that fails the request; the cause when the task failed."""
        if self.state != "done":
            return [f"export did not finish: {self.cause}"]
        return [f"{r['backend']} {r['status']}" + (f": {r['error']}" if r.get("error") else "")
                for r in self.results if fails(r["status"], named=named)]


@dataclasses.dataclass
class ExportSweep:
    """Every checkpoint's export and the index written for them."""

    exports: list[SweepExport]
    index: Path
    runner: str = "this process"
    not_run: list[str] = dataclasses.field(default_factory=list)
    named: bool = True  # the backends were asked for by name (not `all`): `unavailable` fails them

    def failures(self) -> list[str]:
        """``source: backend status`` for each result that fails the request (the rule of ``enn-nb export``)."""
        return [f"{e.source}: {line}" for e in self.exports for line in e.failing(self.named)]

    @property
    def ok(self) -> bool:
        return not self.failures()

    def __repr__(self) -> str:
        rows = sum(len(e.results) for e in self.exports)
        lines = [f"{len(self.exports)} checkpoints, {rows} exports on {self.runner}; index: {self.index}"]
        for e in self.exports:
            retried = f" (retried {e.retries}x after its worker died)" if e.retries else ""
            if e.state != "done":
                lines.append(f"  FAILED {e.source}{retried}: {e.cause}")
                continue
            lines.append(f"  {e.source} -> {e.folder}{retried}: {e.report['summary'] if e.report else ''}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return _index_html(self, base=Path.cwd())


def export_many(
    pattern: str | Sequence[str | os.PathLike[str]],
    backends: str | Sequence[str],
    *,
    out_dir: str | os.PathLike[str],
    cluster: Any = None,
    progress: bool = True,
    model: str | None = None,
    inputs: Sequence[str] | None = None,
    **export_options: Any,
) -> ExportSweep:
    """Export each checkpoint matching ``pattern`` to ``backends`` and write ``<out_dir>/index.html``.

    Args:
        pattern: a glob (``ckpts/*.safetensors``; ``**`` recurses) or a list of checkpoint paths.
        backends: as for :func:`enn_nb.export`.
        out_dir: each checkpoint's export goes to ``<out_dir>/<its file name>/``; the index beside them.
        cluster: None (one after another in this process), ``"local:N"``, ``"tcp://host:8786"`` or a
            ``distributed.Client``: each checkpoint is one Dask task in a worker process.
        progress: one bar over the sweep (checkpoints done, running, failed).
        model: ``"pkg.module:factory"`` building the model each checkpoint is loaded into.
        inputs: the model's inputs (``"values:float32[B,24,6]"``), replacing each checkpoint's signature.
        **export_options: passed to every :func:`enn_nb.export` (``verify``, ``isolate``, ``cache``,
            ``options``, ``stem``, ``dynamic_batch``...); per-backend ``timeout_s`` applies in each task.

    Returns:
        The sweep; a checkpoint whose task never returned (its worker died twice) is ``failed`` with the
        cause. Ctrl-C cancels the checkpoints not finished, writes the index of those that did and
        raises ``KeyboardInterrupt``.

    Raises:
        ExportError: the glob matches nothing.
        ClusterError: the cluster cannot be used (nothing ran).
    """
    if isinstance(pattern, (str, os.PathLike)):
        matches = sorted(glob.glob(os.path.expanduser(str(pattern)), recursive=True))
    else:
        matches = [str(p) for p in pattern]
    if not matches:
        raise ExportError(f"No checkpoint matches `{pattern}` (relative to {Path.cwd()}); nothing to export.")
    names = backends if isinstance(backends, str) else ",".join(backends)
    # every argument checked here, before a cluster starts (the same call checks them again in each task)
    settings = ExportSettings.from_call(names, out_dir, **export_options)
    out = settings.out
    used: set[str] = set()
    sources = [Path(m).resolve() for m in matches]
    tasks = [
        Task(f"export-{folder}", _export_task,
             (str(src), str(out / folder), names, model, list(inputs or []), dict(export_options)))
        for src in sources
        for folder in [unique(slug(src.name), used)]
    ]
    shown = dict(zip((t.name for t in tasks), matches))

    def sweep_of(outcomes: list[Outcome], label: str) -> ExportSweep:
        done = [_export_of(o, shown[o.task.name]) for o in outcomes if o.state != "cancelled"]
        skipped = [shown[o.task.name] for o in outcomes if o.state == "cancelled"]
        return ExportSweep(done, out / "index.html", label, skipped, settings.named)

    with open_runner(cluster, out_dir=out, sources=[str(s) for s in sources]) as runner:
        outcomes = run_tasks(tasks, runner, desc="export", progress=progress,
                             on_change=lambda o: _write_index(sweep_of(o, runner.label), out))
    return sweep_of(outcomes, runner.label)


def _export_task(src: str, folder: str, backends: str, model: str | None, inputs: list[str],
                 options: dict[str, Any]) -> dict[str, Any]:
    """One checkpoint's export, where it runs (this process or a Dask worker): its report as plain data."""
    source: Any = load_with_model(src, model) if model else src
    spec = None
    if inputs:
        from enn_nb.checkpoint import inspect
        from enn_nb.model.signature import parse

        base = source.spec if model else inspect(src).spec
        spec = base.replace(inputs=[parse(text) for text in inputs])
    report = export(source, spec=spec, settings=ExportSettings.from_call(backends, folder, **options))
    return json.loads(report.to_json())


def _export_of(outcome: Outcome, shown: str) -> SweepExport:
    """The task's export under the path ``shown`` as the user typed it (the task got the absolute one)."""
    folder = outcome.task.args[1]
    if outcome.state == "done":
        return SweepExport(Path(shown), Path(folder), "done", outcome.value, retries=outcome.retries)
    return SweepExport(Path(shown), Path(folder), "failed", cause=outcome.cause, retries=outcome.retries)


def _rows(sweep: ExportSweep, base: Path) -> list[dict[str, Any]]:
    rows = []
    for e in sweep.exports:
        common = {"source": str(e.source), "folder": os.path.relpath(e.folder, base), "retries": e.retries}
        if e.state != "done":
            rows.append({**common, "backend": None, "status": "failed", "verified": False, "artifact": None,
                         "sidecar": None, "error": e.cause})
            continue
        for r in e.results:
            rows.append({
                **common,
                "backend": r["backend"],
                "status": r["status"],
                "verified": r.get("verification", {}).get("kind") == "verified",
                "artifact": os.path.relpath(r["artifact"], base) if r.get("artifact") else None,
                "sidecar": os.path.relpath(r["sidecar"], base) if r.get("sidecar") else None,
                "error": r.get("error"),
            })
    return rows


def _write_index(sweep: ExportSweep, out: Path) -> None:
    doc: dict[str, Any] = {"runner": sweep.runner, "exports": _rows(sweep, out)}
    if sweep.not_run:
        doc["interrupted"] = True
        doc["not_run"] = sweep.not_run
    write_text(out / "index.json", json.dumps(doc, indent=2))
    write_text(out / "index.html", _index_html(sweep, base=out))


_STATUS_STYLE = {"ok": "#188038", "deferred": "#6e7781", "cancelled": "#6e7781"}


def _index_html(sweep: ExportSweep, *, base: Path) -> str:
    cells = []
    for row in _rows(sweep, base):
        status = row["status"]
        link = row["sidecar"] or row["artifact"]
        target = f"<a href='{html.escape(link)}'>{html.escape(Path(link).name)}</a>" if link else ""
        note = html.escape(str(row["error"] or ""))
        if row["retries"]:
            note += f" <i>retried {row['retries']}x after its worker died</i>"
        cells.append(
            f"<tr data-status='{html.escape(status)}'><td>{html.escape(row['source'])}</td>"
            f"<td>{html.escape(row['backend'] or '')}</td>"
            f"<td style='color:white;background:{_STATUS_STYLE.get(status, '#c5221f')};font-weight:bold'>"
            f"{html.escape(status.upper())}{' ✓' if row['verified'] else ''}</td><td>{target}</td><td>{note}</td></tr>"
        )
    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    if sweep.not_run:
        stamp += f" · interrupted: {len(sweep.not_run)} not run ({', '.join(sweep.not_run)})"
    title = f"export sweep: {len(sweep.exports)} checkpoints"
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;"
        "text-align:left}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(sweep.runner)} · {html.escape(stamp)} · ✓ = outputs verified</p>"
        "<table><thead><tr><th>checkpoint</th><th>backend</th><th>status</th><th>sidecar</th><th>details</th></tr>"
        f"</thead><tbody>{''.join(cells)}</tbody></table></body></html>"
    )
