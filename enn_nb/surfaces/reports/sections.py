"""Building blocks of the ``export_report`` template: backends, latency and parity per batch size, tables, verdict."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import html
import json
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb._format import human_size
from enn_nb.engine import latency
from enn_nb.engine.latency import EAGER, SAFE
from enn_nb.engine.parity import DYNAMIC_BATCHES_WHY
from enn_nb.engine.quantize.modes import DEFAULT_RMSE_REL
from enn_nb.engine.settings import ExportSettings
from enn_nb.engine.timing import speedup
from enn_nb.errors import ReportError
from enn_nb.engine.verification import UNVERIFIED, Verification
from enn_nb.engine.verification import summary as summary_line
from enn_nb.model.spec import ModelSpec
from enn_nb.surfaces.factory import load_with_model
from enn_nb.surfaces.plots import latency_figure, parity_figure, size_figure, to_png
from enn_nb.surfaces.reports.progress import kernel_callback as progress_callback  # noqa: F401 - the template calls it
from enn_nb.table import Cell, Link, Table
from enn_nb.surfaces.reports.verdict import Pending, Verdict

if TYPE_CHECKING:
    from enn_nb.engine import ExportReport


# -- what to export ---------------------------------------------------------------------------------
def export_settings(backends: str | Sequence[str] | None, out_dir: str | os.PathLike[str], *,
                    batch_sizes: int | str | Sequence[int], atol: float | None = None, rtol: float | None = None,
                    options: Mapping[str, Any] | None = None, **quantize: Any) -> ExportSettings:
    """The report's :class:`ExportSettings`, through the engine's one ``from_call`` (creates ``out_dir``).

    ``backends``: ``"available"`` (the default when empty), ``"all"``, ``"onnx,pt2"`` or ``["onnx", "pt2"]``,
    meaning what they mean on every surface (``enn_nb.engine.registry.KEYWORDS``). ``quantize``: the
    template's ``quantize``, ``calibration``, ``eval_data``, ``accuracy_budget`` and ``allow_degraded``
    (empty values mean "not given").

    Raises:
        UnknownNameError: a backend name that is not registered (the closest name is suggested).
        SpecError: nothing is left to export, or a bad tolerance or option.
    """
    if backends is None or (isinstance(backends, str) and not backends.strip()):
        backends = "available"
    return ExportSettings.from_call(backends, out_dir, batch_range=batch_range(batch_sizes),
                                    tolerances=(atol, rtol),  # None keeps each backend's own bound
                                    options=options or None,
                                    **{k: v for k, v in quantize.items() if v not in (None, "", {}, [])})


def checkpoint_or_reference(checkpoint: str | os.PathLike[str] | None, out_dir: str | os.PathLike[str]) -> Path:
    """The checkpoint to report on; an empty value trains the reference model and saves it in ``out_dir``.

    Raises:
        ReportError: the path does not exist.
    """
    if checkpoint:
        from enn_nb.storage import existing

        found = existing(checkpoint)  # a URL (`s3://...`) too: its storage options come from the environment
        if found is None:
            raise ReportError(f"The checkpoint `{checkpoint}` does not exist (working directory: {Path.cwd()}).")
        return found  # type: ignore[return-value]
    from enn_nb.checkpoint import api as checkpoint_api
    from enn_nb.reference import train_reference

    target = Path(out_dir) / "reference.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    checkpoint_api.save(train_reference(seed=0), target, metadata={"made_by": "export_report (no checkpoint given)"})
    return target


def load_checkpoint(path: Path, model: str = "") -> Any:
    """``enn_nb.load(path)``; into the model ``"package.module:factory"`` builds when ``model`` is given
    (a checkpoint of your own model, which names no registered builder)."""

    return load_with_model(path, model or None)


# -- header -----------------------------------------------------------------------------------------
class Header:
    """Title, author, date and source of a report, shown above its verdict."""

    def __init__(self, title: str, author: str = "", subject: str = "") -> None:
        self.title = title or "Report"
        self.author = author
        self.subject = subject
        self.when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")

    def _line(self) -> str:
        return " · ".join(x for x in (self.author, self.when, self.subject) if x)

    def __repr__(self) -> str:
        return f"{self.title}\n{self._line()}"

    def _repr_html_(self) -> str:
        return (
            f"<h1 style='margin-bottom:2px'>{html.escape(self.title)}</h1>"
            f"<div style='color:#555;margin-bottom:8px'>{html.escape(self._line())}</div>"
        )


def pending(text: str = "Exporting and checking every backend...") -> Pending:
    """The placeholder the verdict replaces (``display(pending(), display_id=True).update(verdict)``)."""
    return Pending(text)


# -- latency and parity at the report's batch sizes ---------------------------------------------------
#: The export report's measurements are the engine's one timing result (the name is kept for callers).
Measurements = latency.Timings


def batch_list(batch_sizes: int | str | Sequence[int]) -> list[int]:
    """``[1, 8, 64]``, ``8`` or ``"1,8"`` -> a sorted list of distinct positive ints.

    Raises:
        ReportError: a value that is not a positive integer.
    """
    items = str(batch_sizes).split(",") if isinstance(batch_sizes, (str, int)) else list(batch_sizes)
    out: set[int] = set()
    for item in items:
        try:
            value = int(str(item).strip())
        except ValueError:
            value = 0
        if value < 1 or (isinstance(item, float) and not float(item).is_integer()):
            raise ReportError(f"`batch_sizes` holds {item!r}; give positive integers, e.g. [1, 8, 64].")
        out.add(value)
    if not out:
        raise ReportError("`batch_sizes` is empty; give at least one positive integer, e.g. [1, 8, 64].")
    return sorted(out)


def batch_range(batch_sizes: int | str | Sequence[int]) -> tuple[int, int, int]:
    """``(min, opt, max)`` for backends that need batch bounds, covering the report's batch sizes."""
    sizes = batch_list(batch_sizes)
    return (1, 8, max(64, sizes[-1]))


def measure(
    model: Any,
    export: ExportReport,
    batch_sizes: int | str | Sequence[int],
    *,
    spec: Any = None,
    seconds: float = 0.2,
    max_calls: int = 200,
    threads: int | None = None,
) -> Measurements:
    """Time every exported artifact in its runtime next to eager PyTorch, and compare their outputs.

    Each runtime is loaded with its backend's ``load`` (the same runner the export's parity used) and
    called on the same inputs as the eager model at every batch size its artifact accepts. Each time
    is the median (with its IQR) over calls made for about ``seconds`` after two warm-up calls, longer
    while the median moves, on a fixed thread count (:func:`enn_nb.engine.latency.measure`, which the
    wizard uses too).

    Args:
        model: the eager model (its fast paths on, as trained).
        export: what ``enn_nb.export`` returned for it.
        batch_sizes: batch sizes to measure.
        spec: the model's ModelSpec (realistic inputs); read from the model when None.
        threads: intra-op threads; default 1 up to batch 8, else up to 4.
    """

    sizes = batch_list(batch_sizes)
    if spec is None:
        spec = ModelSpec.from_model(model)
    inputs = latency.spec_inputs(spec) if spec.input_signature() is not None else latency.vector_inputs(export)
    t = latency.measure(model, export, sizes, inputs, compare=True, budget_s=seconds,
                        min_calls=5, max_calls=max_calls, threads=threads)  # fmt: skip
    errors: dict[str, dict[int, float]] = {}
    mismatches: dict[str, list[str]] = {}
    for r in export.results:
        # the export's own parity cases count too, at their batch sizes
        engine = {int(c["batch_size"]): float(c["max_abs_err"]) for c in r.parity.get("cases", [])}
        merged = {**engine, **t.errors.get(r.backend, {})}
        if merged:
            errors[r.backend] = merged
        if r.backend in t.mismatches:
            mismatches[r.backend] = [f"{line} (report's check)" for line in t.mismatches[r.backend]]
        if r.backend in t.skipped:
            t.notes[r.backend] = f"not measured: {t.skipped[r.backend]}"
        elif r.backend in t.static:
            fixed = t.static[r.backend]
            note = f"static batch {fixed}: timed and compared at that batch size only"
            if fixed not in sizes:
                ms, eager = t.latency_ms[r.backend][fixed], t.eager_ms[fixed]
                note += f" ({ms:.3g} ms per call at batch {fixed}; eager as trained {eager:.3g} ms there)"
            t.notes[r.backend] = note
    t.errors, t.mismatches = errors, mismatches
    return t


# -- verdict ------------------------------------------------------------------------------------------
def verdict(export: ExportReport, measurements: Measurements | None, requested: ExportSettings) -> Verdict:
    """Pass when every requested backend is ``ok`` (or ``deferred``) and matches eager at every batch size;
    a backend that cannot convert here fails only when it was named (``requested.fails``)."""
    backends: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    notes = [f"{name}: skipped, not available here ({why})" for name, why in requested.skipped.items()]
    sidecars: dict[str, str] = {}
    for r in export.results:
        status = r.status
        extra = (measurements.mismatches.get(r.backend) if measurements else None) or []
        if status == "ok" and extra:
            status = "mismatch"
        reason = _reason(r, extra)
        check = r.verification if status == r.status else Verification(status, reason)
        backends[r.backend] = {"status": status, "reason": reason, "max_abs_err": r.max_abs_err, "cached": r.cached,
                               "verification": check.kind, "verification_reason": check.reason}
        if check.kind == UNVERIFIED:
            notes.append(f"{r.backend}: converted but not verified ({check.reason})")
        if status == "degraded" and not requested.fails(status):
            notes.append(f"{r.backend}: degraded, allowed ({reason})")
        elif requested.fails(status):
            failures.append(f"{r.backend}: {status}" + (f" ({reason})" if reason else ""))
        elif status in ("deferred", "unavailable"):
            notes.append(f"{r.backend}: {status}" + (f" ({reason})" if reason else ""))
        if r.sidecar and Path(r.sidecar).is_file():
            sidecars[r.backend] = str(Path(r.sidecar).resolve())
    headline = _headline(export, backends)
    if failures:
        headline += f"; {len(failures)} failed the check"
    return Verdict(ok=not failures, headline=headline + ".", backends=backends, failures=failures, notes=notes,
                   sidecars=sidecars)


def _headline(export: ExportReport, backends: dict[str, dict[str, Any]]) -> str:
    """``7 verified, 1 converted but not verified (why), 1 deferred`` over the verdict's own statuses."""
    return summary_line(dataclasses.replace(r, status=backends[r.backend]["status"]) for r in export.results)


def _reason(r: Any, extra: list[str]) -> str:
    if r.status == "mismatch":
        tol = r.parity.get("tolerance") or {}
        worst = max(r.parity.get("cases", []), key=lambda c: c.get("max_abs_err", 0.0), default=None)
        where = f" at batch {worst['batch_size']}" if worst else ""
        err = r.max_abs_err if r.max_abs_err is not None else float("nan")
        atol, rtol = tol.get("atol", float("nan")), tol.get("rtol", float("nan"))
        return f"max abs error {err:.3g}{where} beyond atol={atol:g}, rtol={rtol:g}"
    if r.status == "failed":
        return f"stage `{r.stage}`: {r.error_type + ': ' if r.error_type else ''}{r.error or ''}".strip()
    if r.status == "timeout":
        return f"stage `{r.stage}`: {r.error or ''}".strip()
    if r.status == "crashed":
        how = f"signal {r.signal}" if r.signal else f"exit code {r.exit_code}"
        return f"the isolated converter died ({how}){': ' + r.error if r.error else ''}"
    if r.status in ("deferred", "unavailable"):
        return str(r.deferred or r.error or "")
    if r.status == "degraded":
        return "; ".join(((r.quantization or {}).get("accuracy") or {}).get("over_budget") or [])
    return "; ".join(extra)


# -- tables and sections ------------------------------------------------------------------------------
def link(path: str | os.PathLike[str] | None) -> str:
    """A path as a link relative to the working directory (the folder the executed notebook is written to)."""
    if not path:
        return ""
    try:
        return os.path.relpath(Path(path).resolve(), Path.cwd())
    except ValueError:  # another drive on Windows
        return str(Path(path).resolve())


def artifact_table(export: ExportReport, measurements: Measurements | None = None) -> Table:
    """Backend, status, artifact (a link), size, max error and tolerance, and latency vs eager per batch size."""

    sizes = measurements.batch_sizes if measurements else []
    columns = ["backend", "status", "verified", "artifact", "size", "max abs err", "tolerance (atol, rtol)"]
    columns += [f"latency, batch {b}" for b in sizes]
    rows = []
    for r in export.results:
        tol = r.parity.get("tolerance") or {}
        errs = [r.max_abs_err] + list(((measurements.errors if measurements else {}).get(r.backend) or {}).values())
        errs = [e for e in errs if e is not None]
        status = r.status + (" (cached)" if r.cached else "")
        if measurements and r.status == "ok" and measurements.mismatches.get(r.backend):
            status = "mismatch (report's check)"
        # the reason of a failure is in the verdict box (folded) and the sidecar: the cell names the outcome
        check = r.verification.describe() if r.status == "ok" and not status.startswith("mismatch") else \
            r.verification.label if not status.startswith("mismatch") else "mismatch"
        row: list[Any] = [
            r.backend,
            status,
            check,
            Link(Path(r.artifact).name, link(r.artifact)) if r.artifact else "-",
            human_size(r.size_bytes) if r.files else "-",
            f"{max(errs):.2e}" if errs else "-",
            f"{tol['atol']:g}, {tol['rtol']:g}" if tol else "-",
        ]
        for b in sizes:
            stat = measurements.stats.get(r.backend, {}).get(b) if measurements else None
            row.append(_latency_cell(stat, measurements.speedup(r.backend, b)) if stat and measurements else "-")
        rows.append(row)
    if measurements:
        def cells(label: str, ratio: Any) -> list[str]:
            out = []
            for b in sizes:
                stat = measurements.stats.get(label, {}).get(b)
                out.append(_latency_cell(stat, ratio(b)) if stat else "-")
            return out

        rows.append(["eager PyTorch, export-safe", "headline reference (what the artifacts compute)", "-", "-", "-",
                     "-", "-", *cells(SAFE, lambda b: None)])
        rows.append(["eager PyTorch, as trained", "second reference (fast paths on)", "-", "-", "-", "-", "-",
                     *cells(EAGER, lambda b: _ratio(measurements.safe_ms.get(b), measurements.eager_ms.get(b)))])
        return Table(columns, rows, footer=latency_footnote(measurements))
    return Table(columns, rows)


def _latency_cell(stat: Any, ratio: float | None) -> Cell:
    """A compact latency (``0.037 ms · 9.5x``, or ``—`` when too noisy) with the full detail as its tooltip."""
    detail = stat.cell(ratio)
    if stat.noisy:
        detail = f"not measured: machine busy ({detail}, {stat.rounds} round{'s' if stat.rounds != 1 else ''})"
    return Cell(stat.compact(ratio), title=detail)


def latency_footnote(measurements: Measurements) -> str:
    """One footnote under the artifact table: how to read a latency cell, the threads and host, the noise note."""
    parts = [LATENCY_LEGEND, measurements.host_line() + "."]
    if measurements.warnings:
        parts += [*measurements.warnings, "Those cells show — (hover one for the figure that could not be trusted)."]
    return " ".join(parts)


def _ratio(reference: float | None, ms: float | None) -> float | None:
    return speedup(reference, ms)


def _parity_legend() -> str:
    return (f"Parity cases: the export's own ({DYNAMIC_BATCHES_WHY}), plus this report's batch sizes, each "
            "compared with eager PyTorch as trained.")


PARITY_LEGEND = _parity_legend()

LATENCY_LEGEND = (
    "Latency cells: median ms per call · speed-up = export-safe eager ms / runtime ms (above 1x the runtime is "
    "faster); hover a cell for its interquartile range (IQR), batch size and intra-op thread count. The headline "
    "reference is eager PyTorch inside export_safe, the computation the artifacts hold; eager as trained (fast "
    "paths on) is the second reference row."
)


def notes_table(measurements: Measurements, export: ExportReport) -> Table | None:
    """What could not be measured and the notes of the backends, or None (noise: the artifact table's footnote)."""
    rows = [[name, text] for name, text in measurements.notes.items()]
    rows += [[r.backend, n] for r in export.results for n in r.notes]
    return Table(["backend", "note"], rows) if rows else None


class Image:
    """A matplotlib figure as a PNG output (``image/png``): it survives papermill, nbconvert and git."""

    def __init__(self, figure: Any, *, dpi: int = 100) -> None:
        self.png = to_png(figure, dpi=dpi)

    def _repr_png_(self) -> bytes:
        return self.png

    def __repr__(self) -> str:
        return f"<figure: {len(self.png)} bytes of PNG>"


def plots(export: ExportReport, measurements: Measurements) -> list[Image]:
    """Parity error per backend and batch size, latency vs eager at each batch size, artifact size."""

    atol = {r.backend: float((r.parity.get("tolerance") or {}).get("atol", 0.0)) for r in export.results}
    images = [Image(parity_figure(measurements.errors, tolerances=atol))]
    for b in measurements.batch_sizes:
        from enn_nb.engine.latency import EAGER, SAFE

        def steady(label: str, value: float | None) -> float | None:  # a timing too noisy to trust is not drawn
            stat = measurements.stats.get(label, {}).get(b)
            return None if stat is not None and stat.noisy else value

        per = {name: steady(name, ms[b]) for name, ms in measurements.latency_ms.items() if b in ms}
        threads = measurements.threads.get(b)
        images.append(Image(latency_figure(per, eager_ms=steady(EAGER, measurements.eager_ms.get(b)),
                                           safe_ms=steady(SAFE, measurements.safe_ms.get(b)), batch_size=b,
                                           title=f"Latency per runtime, batch {b}"
                                           + (f", {threads} thread{'s' if threads != 1 else ''}" if threads else ""))))
    images.append(Image(size_figure({r.backend: r.size_bytes for r in export.results if r.files})))
    return images


def quantization(export: ExportReport, measurements: Measurements | None = None) -> list[Any]:
    """The quantization section: one row per backend x mode (size and latency against the float artifact of the
    same backend, what the artifact holds, accuracy change), then size and latency versus error plots.

    Empty when the export made no quantized artifact. Latency is the report's own, at its middle batch size.
    """
    from enn_nb.engine.quantize.table import rows, table
    from enn_nb.surfaces.plots import quantization_figure

    if not any(r.quantize for r in export.results):
        return []
    latency: dict[str, float] = {}
    batch = None
    if measurements is not None and measurements.batch_sizes:
        batch = measurements.batch_sizes[len(measurements.batch_sizes) // 2]
        latency = {name: ms[batch] for name, ms in measurements.latency_ms.items() if batch in ms}
    title = "Quantized artifacts" + (f" (latency at batch {batch})" if batch else "")
    shown: list[Any] = [table(export.results, latency, title=title)]
    data = rows(export.results, latency)
    shown.append(Image(quantization_figure(data, x="size_ratio")))
    if any(r["latency_ratio"] is not None for r in data):
        shown.append(Image(quantization_figure(data, x="latency_ratio",
                                               title="Quantization: latency vs accuracy change")))
    return shown


def deviations(export: ExportReport) -> list[dict[str, Any]]:
    """The export's deviations; from a sidecar when every backend came from the cache (nothing switched now)."""
    if export.deviations:
        return list(export.deviations)
    for r in export.results:
        if r.sidecar and Path(r.sidecar).is_file():
            try:
                found = json.loads(Path(r.sidecar).read_text(encoding="utf-8")).get("deviations")
            except (OSError, ValueError):
                continue
            if found:
                return list(found)
    return []


def deviations_table(export: ExportReport) -> Table:
    """The export-safe switches made for the export (what runs in the artifacts instead of the fast paths)."""
    rows = deviations(export)
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    if not rows:
        return Table(["deviation"], [["none: the model has no fast path the export had to switch"]])
    return Table(keys, [[_short(row.get(k)) for k in keys] for row in rows])


def _short(value: Any) -> Any:
    """A deviation's field: whole (the cell wraps); beyond 400 characters cut, the whole text in its tooltip."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 400 else Cell(text[:397] + "...", title=text)


class Prose:
    """A paragraph of a report (a legend, a note): wraps like text, in HTML and in a terminal."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        import textwrap

        return textwrap.fill(self.text, width=100)

    def _repr_html_(self) -> str:
        return (f"<p class='enn-nb-prose' style='white-space:normal;overflow-wrap:anywhere;font-size:90%;"
                f"color:#333;max-width:60em'>{html.escape(self.text)}</p>")


def _without_log_text(data: dict[str, Any]) -> dict[str, Any]:
    """The sidecar as shown in a report: the captured converter log is counted and linked, never shown."""
    log = data.get("log")
    if isinstance(log, dict) and log.get("warning_messages"):
        data["log"] = {k: v for k, v in log.items() if k != "warning_messages"}
    return data


class Sidecars:
    """Each sidecar as a link to its file and its JSON content collapsed in ``<details>``."""

    def __init__(self, export: ExportReport) -> None:
        self.items: list[tuple[str, Path, str]] = []
        for r in export.results:
            if r.sidecar and Path(r.sidecar).is_file():
                text = Path(r.sidecar).read_text(encoding="utf-8")
                try:
                    text = json.dumps(_without_log_text(json.loads(text)), indent=2)
                except ValueError:
                    pass
                self.items.append((r.backend, Path(r.sidecar), text))

    def __repr__(self) -> str:
        lines = [f"{name}: {link(path)} ({len(text)} characters)" for name, path, text in self.items]
        return "\n".join(lines) or "no sidecar written"

    def _repr_html_(self) -> str:
        if not self.items:
            return "<p>No sidecar was written.</p>"
        parts = []
        for name, path, text in self.items:
            parts.append(
                f"<details class='enn-nb-sidecar' data-backend='{html.escape(name)}'>"
                f"<summary><code>{html.escape(name)}</code>: "
                f"<a href='{html.escape(link(path))}'>{html.escape(path.name)}</a></summary>"
                f"<pre style='max-height:30em;overflow:auto;font-size:85%'>{html.escape(text)}</pre></details>"
            )
        return "".join(parts)


def reproduce(
    checkpoint: Path,
    requested: ExportSettings,
    batch_sizes: Sequence[int],
    atol: float | None,
    rtol: float | None,
    *,
    out: str | os.PathLike[str] | None = None,
    model: str = "",
) -> str:
    """The command line that re-runs this report (for a scheduler or a colleague), one option per line.

    ``out`` is the report folder; by default the working directory, which is where the report's
    kernel runs, so the command writes the same files again. ``model`` is the ``--model`` factory;
    the folder its module came from is given as ``--model-path`` when the PYTHONPATH brought it (an
    installed package needs none). Each option starts a line (``\`` continues it), so a narrow page
    wraps between options, never inside a path.
    """
    parts = ["enn-nb report export_report", f"-p checkpoint={_quote(str(Path(checkpoint).resolve()))}"]
    if model:
        from enn_nb.surfaces.factory import import_root, model_path

        root = import_root(model.partition(":")[0])
        if root is not None and root in model_path():
            parts.append(f"--model-path {_quote(root)}")
        parts.append(f"--model {_quote(model)}")
    if requested.named:
        parts.append(f"-p 'backends=[{', '.join(requested.names)}]'")
    parts.append(f"-p 'batch_sizes=[{', '.join(str(b) for b in batch_sizes)}]'")
    parts += [f"-p {k}={v:g}" for k, v in (("atol", atol), ("rtol", rtol)) if v is not None]
    if requested.quantize:  # as the per-backend mapping the template's `quantize` parameter takes
        modes = ", ".join(f"{name}: [{', '.join(m)}]" for name, m in requested.quantize.items())
        parts.append("-p " + _quote(f"quantize={{{modes}}}"))
        for key in ("calibration", "eval_data"):
            value = getattr(requested, key)
            if isinstance(value, (str, os.PathLike)) and str(value):
                parts.append(f"-p {key}={_quote(str(Path(value).resolve()))}")
        if requested.accuracy_budget.get("rmse_rel") != DEFAULT_RMSE_REL:
            parts.append(f"-p accuracy_budget={requested.accuracy_budget['rmse_rel']:g}")
        if requested.allow_degraded:
            parts.append("-p allow_degraded=true")
    folder = Path(out if out is not None else Path.cwd()).resolve()
    return " \\\n    ".join([*parts, f"--out {_quote(str(folder))}", "--html"])


def _quote(text: str) -> str:
    return shlex.quote(text)
