"""The wizard's widgets: built from a WizardState, they only show it and wire user events back."""

from __future__ import annotations

import html
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb._format import count_text, human_size, model_counts
from enn_nb.engine.vocabulary import STATUS_COLORS
from enn_nb.errors import SpecError
from enn_nb.engine.quantize.modes import MODE_MEANING, MODES
from enn_nb.engine.quantize.table import rows as quantization_rows
from enn_nb.model.signature import describe
from enn_nb.model.spec import ModelSpec
from enn_nb.surfaces import plots
from enn_nb.surfaces.notebook.wizard_state import STEP_TITLES, STEPS, WizardState, result_rows

if TYPE_CHECKING:
    import ipywidgets

    from enn_nb.surfaces.notebook.wizard_run import ExportRun

_ERROR_STYLE = "color:#b00020;font-weight:600"
_BAR_STYLES = {"ok": "success", "mismatch": "warning", "deferred": "info", "failed": "danger", "crashed": "danger",
               "timeout": "danger"}


class WizardView:
    """Widgets for one :class:`WizardState`; ``.widget`` is the root to display.

    Args:
        state: the state shown and edited.
        run: the run controller its Run / Cancel buttons drive.
        save_report: called by "Save as report"; None hides that button (reports not installed).
    """

    def __init__(
        self,
        state: WizardState,
        run: ExportRun,
        *,
        save_report: Callable[[], Any] | None = None,
    ) -> None:
        import ipywidgets as w

        self.w = w
        self.state = state
        self.run = run
        self._save_report = save_report
        self.header = w.HTML()
        self.pages = [self._model_page(), self._targets_page(), self._run_page(), self._results_page()]
        self.body = w.Box(layout=w.Layout(min_height="240px"))
        self.back_button = w.Button(description="Back", icon="arrow-left", layout=w.Layout(width="110px"))
        self.next_button = w.Button(description="Next", icon="arrow-right", button_style="primary",
                                    layout=w.Layout(width="110px"))  # fmt: skip
        self.back_button.add_class("enn-wizard-back")
        self.next_button.add_class("enn-wizard-next")
        self.back_button.on_click(lambda _: state.back())
        self.next_button.on_click(lambda _: state.next())
        self.widget = w.VBox(
            [self.header, self.body, w.HBox([self.back_button, self.next_button])],
            layout=w.Layout(border="1px solid #ddd", padding="8px", width="100%"),
        )
        self.widget.add_class("enn-wizard")
        state.observe(self._on_step, "step")
        state.observe(self._on_messages, "messages")
        state.observe(self._on_running, "running")
        self._on_step()
        self._on_messages()

    # -- shared ------------------------------------------------------------------------------------
    def _message(self) -> ipywidgets.HTML:
        return self.w.HTML(layout=self.w.Layout(min_height="1.5em"))

    def _on_step(self, change: Any = None) -> None:
        step = self.state.step
        crumbs = []
        for i, name in enumerate(STEPS):
            label = f"{i + 1}. {STEP_TITLES[name]}"
            crumbs.append(f"<b>{label}</b>" if i == step else f"<span style='color:#888'>{label}</span>")
        self.header.value = (
            "<div style='font-size:1.1em'><b>enn_nb export wizard</b> &nbsp; "
            + " &rsaquo; ".join(crumbs) + "</div>"
        )
        self.body.children = [self.pages[step]]
        if STEPS[step] == "targets":
            self._sync_backend_boxes()
        self._update_nav()

    def _update_nav(self) -> None:
        state = self.state
        self.back_button.disabled = state.step == 0 or state.running
        last = state.step == len(STEPS) - 1
        self.next_button.disabled = last or (STEPS[state.step] == "run" and (state.running or state.report is None))

    def _on_messages(self, change: Any = None) -> None:
        for name, widget in self.step_messages.items():
            text = self.state.messages.get(name, "")
            lines = "<br>".join(html.escape(line) for line in text.splitlines())
            widget.value = f"<div class='enn-wizard-message' style='{_ERROR_STYLE}'>{lines}</div>" if text else ""

    def _on_running(self, change: Any = None) -> None:
        running = self.state.running
        self.run_button.disabled = running
        self.cancel_button.disabled = not running
        self._update_nav()

    # -- step 1: model -----------------------------------------------------------------------------
    def _model_page(self) -> ipywidgets.Widget:
        w, state = self.w, self.state
        self.source = w.ToggleButtons(
            options=[("nn.Module variable", "variable"), ("Checkpoint file", "checkpoint")],
            value=state.source,
        )
        self.variable = w.Dropdown(description="Variable", layout=w.Layout(width="340px"))
        self.refresh_button = w.Button(description="Refresh", icon="refresh", layout=w.Layout(width="100px"),
                                       tooltip="Look for nn.Module variables again")  # fmt: skip
        self.checkpoint = w.Text(
            value=state.checkpoint, description="Path", placeholder="path/to/model.pt or .safetensors or DCP dir",
            continuous_update=False, layout=w.Layout(width="520px"),
        )  # fmt: skip
        self.variable_row = w.HBox([self.variable, self.refresh_button])
        self.signature = w.Textarea(
            value=state.signature, description="Inputs", continuous_update=False,
            placeholder="one per line, e.g.\nvalues:float32[B, 24, 6]\nmask:bool[B, 24]\n(empty: the model's own signature)",
            layout=w.Layout(width="520px", height="80px"),
        )  # fmt: skip
        self.model_info = w.HTML()
        self.step_messages = {name: self._message() for name in STEPS}

        self._refresh_variables()
        self.source.observe(lambda c: setattr(state, "source", c["new"]), "value")
        self.variable.observe(self._on_variable_widget, "value")
        self.checkpoint.observe(lambda c: setattr(state, "checkpoint", c["new"]), "value")
        self.signature.observe(lambda c: setattr(state, "signature", c["new"]), "value")
        state.observe(lambda c: setattr(self.signature, "value", c["new"]), "signature")
        self.refresh_button.on_click(lambda _: self._refresh_variables())
        state.observe(lambda c: setattr(self.source, "value", c["new"]), "source")
        state.observe(lambda c: setattr(self.checkpoint, "value", c["new"]), "checkpoint")
        state.observe(self._on_variable_state, "variable")
        state.observe(self._show_model, ["source", "variable", "checkpoint", "signature"])
        self._show_model()
        return w.VBox([
            w.HTML("<b>Which model?</b> An <code>nn.Module</code> of this notebook, or a checkpoint file."),
            self.source, self.variable_row, self.checkpoint, self.signature, self.step_messages["model"],
            self.model_info,
        ])  # fmt: skip

    def _refresh_variables(self) -> None:
        names = self.state.module_names()
        current = self.state.variable
        self.variable.options = names
        if current in names:
            self.variable.value = current
        elif names and not current:
            self.variable.value = names[0]
            self.state.variable = names[0]
        else:
            # A default naming no module stays in the state so that Next explains what is wrong.
            self.variable.value = None
        self._show_model()

    def _on_variable_widget(self, change: Any) -> None:
        if change["new"] is not None:
            self.state.variable = change["new"]

    def _on_variable_state(self, change: Any) -> None:
        if change["new"] in self.variable.options:
            self.variable.value = change["new"]
        elif change["new"]:
            self._refresh_variables()

    def _show_model(self, change: Any = None) -> None:
        state = self.state
        is_checkpoint = state.source == "checkpoint"
        self.variable_row.layout.display = "none" if is_checkpoint else None
        self.checkpoint.layout.display = None if is_checkpoint else "none"
        if self.state.messages.get("model"):  # re-check so the message disappears once fixed
            state.validate_step("model")
        self.model_info.value = model_summary_html(state)

    # -- step 2: targets and options -----------------------------------------------------------------
    def _targets_page(self) -> ipywidgets.Widget:
        w, state = self.w, self.state
        self.backend_boxes: dict[str, ipywidgets.Checkbox] = {}
        self._syncing = False
        rows = []
        try:
            backend_rows = state.backend_rows()
        except Exception as exc:  # the registry failed: say so on the step instead of breaking
            backend_rows = []
            rows.append(w.HTML(f"<span style='{_ERROR_STYLE}'>Could not list backends: "
                               f"{html.escape(str(exc))}</span>"))  # fmt: skip
        for row in backend_rows:
            box = w.Checkbox(value=row.name in state.backends, description=row.name, indent=False,
                             disabled=not row.available, layout=w.Layout(width="130px"))  # fmt: skip
            box.observe(self._on_backend_box, "value")
            self.backend_boxes[row.name] = box
            if row.available:
                note = f"<code>{html.escape(row.suffix)}</code> {html.escape(row.description)}"
                slow = state.backend_attr(row.name, "slow")  # the backend's own fact (Backend.slow)
                if slow:
                    note += (f" <span class='enn-wizard-slow' style='color:#b36b00'>"
                             f"({html.escape(slow)})</span>")  # fmt: skip
            else:
                note = (
                    f"<span style='color:#777'>unavailable: {html.escape(row.reason or '')}</span>"
                    + (f" &nbsp;<code>{html.escape(row.install)}</code>" if row.install else "")
                )
            rows.append(w.HBox([box, w.HTML(note)]))
        state.observe(lambda c: self._sync_backend_boxes(), "backends")
        # Once a message shows, re-check on every edit so it goes away as soon as the input is fixed.
        state.observe(self._recheck_targets, [
            "backends", "dynamic_batch", "batch_min", "batch_opt", "batch_max", "opset", "fp16", "atol", "rtol",
            "out_dir", "quantize", "calibration", "accuracy_budget",
        ])  # fmt: skip

        def linked(widget: Any, trait: str) -> Any:
            self.w.link((state, trait), (widget, "value"))
            return widget

        short = w.Layout(width="130px")
        tight = {"description_width": "initial"}
        self.dynamic_batch = linked(w.Checkbox(description="dynamic batch", indent=False,
                                               layout=w.Layout(width="140px")), "dynamic_batch")  # fmt: skip
        self.batch_min = linked(w.IntText(description="min", layout=short, style=tight), "batch_min")
        self.batch_opt = linked(w.IntText(description="opt", layout=short, style=tight), "batch_opt")
        self.batch_max = linked(w.IntText(description="max", layout=short, style=tight), "batch_max")
        self.opset = linked(w.IntText(description="ONNX opset", layout=w.Layout(width="200px"),
                                      style={"description_width": "90px"}), "opset")  # fmt: skip
        fp16_names = ", ".join(state.fp16_backends()) or "none available here"
        self.fp16 = linked(w.Checkbox(description=f"fp16 where supported ({fp16_names})", indent=False,
                                      layout=w.Layout(width="auto")), "fp16")  # fmt: skip
        self.quantize_boxes = {}
        for mode in MODES:
            box = w.Checkbox(description=mode, indent=False, layout=w.Layout(width="120px"),
                             value=mode in state.quantize, tooltip=MODE_MEANING[mode])
            box.observe(self._on_quantize_box, "value")
            self.quantize_boxes[mode] = box
        state.observe(lambda c: self._sync_quantize_boxes(), "quantize")
        self.calibration = linked(w.Text(description="calibration", placeholder="variable or .safetensors (else drawn)",
                                         layout=w.Layout(width="340px"), style=tight), "calibration")  # fmt: skip
        self.accuracy_budget = linked(w.Text(description="budget", placeholder="0.03", layout=short, style=tight),
                                      "accuracy_budget")  # fmt: skip
        self.atol = linked(w.Text(description="atol", placeholder="default", layout=short, style=tight), "atol")
        self.rtol = linked(w.Text(description="rtol", placeholder="default", layout=short, style=tight), "rtol")
        self.out_dir = linked(w.Text(description="Output dir", layout=w.Layout(width="520px")), "out_dir")
        self.isolate = linked(w.Checkbox(description="isolate each backend in a child process", indent=False,
                                         layout=w.Layout(width="auto")), "isolate")  # fmt: skip
        self.verify = linked(w.Checkbox(description="verify parity on each runtime", indent=False,
                                        layout=w.Layout(width="auto")), "verify")  # fmt: skip
        self.cache = linked(w.Checkbox(description="reuse identical earlier exports (cache)", indent=False,
                                       layout=w.Layout(width="auto")), "cache")  # fmt: skip
        return w.VBox([
            w.HTML("<b>Targets</b>"), *rows,
            w.HTML("<b>Options</b>"),
            w.HBox([self.dynamic_batch, self.batch_min, self.batch_opt, self.batch_max]),
            w.HBox([self.opset, self.fp16]),
            w.HBox([w.HTML("quantize:", layout=w.Layout(width="80px")), *self.quantize_boxes.values(),
                    self.calibration, self.accuracy_budget]),
            w.HBox([w.HTML("tolerances:", layout=w.Layout(width="80px")), self.atol, self.rtol]),
            self.out_dir, w.HBox([self.isolate, self.verify, self.cache]),
            self.step_messages["targets"],
        ])  # fmt: skip

    def _on_quantize_box(self, change: Any) -> None:
        self.state.quantize = [mode for mode, box in self.quantize_boxes.items() if box.value]

    def _sync_quantize_boxes(self) -> None:
        for mode, box in self.quantize_boxes.items():
            if box.value != (mode in self.state.quantize):
                box.value = mode in self.state.quantize

    def _recheck_targets(self, change: Any) -> None:
        if self.state.messages.get("targets"):
            self.state.validate_step("targets")

    def _on_backend_box(self, change: Any) -> None:
        if not self._syncing:
            self.state.backends = [name for name, box in self.backend_boxes.items() if box.value]

    def _sync_backend_boxes(self) -> None:
        # Ticking boxes one by one must not write a half-synced list back into the state.
        self._syncing = True
        try:
            for name, box in self.backend_boxes.items():
                box.value = name in self.state.backends
        finally:
            self._syncing = False

    # -- step 3: run -----------------------------------------------------------------------------------
    def _run_page(self) -> ipywidgets.Widget:
        w, state = self.w, self.state
        self.run_button = w.Button(description="Run export", icon="play", button_style="success")
        self.cancel_button = w.Button(description="Cancel", icon="stop", button_style="warning", disabled=True,
                                      tooltip="Stop after the backend being converted now")  # fmt: skip
        self.run_button.add_class("enn-wizard-run")
        self.cancel_button.add_class("enn-wizard-cancel")
        self.run_button.on_click(lambda _: self.run.start())
        self.cancel_button.on_click(lambda _: self.run.cancel())
        self.overall = w.IntProgress(min=0, max=1, value=0, description="overall",
                                     layout=w.Layout(width="420px"))  # fmt: skip
        self.overall_label = w.Label()
        self.backend_bars = w.VBox()
        self._bars: dict[str, tuple[ipywidgets.FloatProgress, ipywidgets.Label]] = {}
        self.log = w.HTML(layout=w.Layout(max_height="220px", overflow="auto", border="1px solid #eee"))
        self.run_error = w.HTML()
        state.observe(self._on_progress, ["progress", "overall", "backends"])
        state.observe(self._on_log, "log")
        state.observe(self._on_run_error, "run_error")
        self._on_progress()
        return w.VBox([
            w.HBox([self.run_button, self.cancel_button]),
            w.HBox([self.overall, self.overall_label]), self.backend_bars,
            w.HTML("<b>Log</b>"), self.log, self.run_error, self.step_messages["run"],
        ])  # fmt: skip

    def _on_progress(self, change: Any = None) -> None:
        w, state = self.w, self.state
        names = list(state.progress) or list(state.backends)
        if list(self._bars) != names:
            self._bars = {}
            rows = []
            for name in names:
                bar = w.FloatProgress(min=0.0, max=1.0, value=0.0, layout=w.Layout(width="300px"))
                label = w.Label()
                self._bars[name] = (bar, label)
                rows.append(w.HBox([w.Label(name, layout=w.Layout(width="110px")), bar, label]))
            self.backend_bars.children = rows
        for name, (bar, label) in self._bars.items():
            entry = state.progress.get(name, {})
            bar.value = float(entry.get("fraction", 0.0))
            status = entry.get("status", "")
            bar.bar_style = _BAR_STYLES.get(status, "")
            label.value = status or entry.get("stage", "")
        total = max(1, len(names))
        self.overall.max = total
        self.overall.value = min(state.overall, total)
        if not state.progress:  # nothing ran yet: say what Run will do, not "0/0 backends"
            chosen = ", ".join(state.backends)
            self.overall_label.value = f"ready: {chosen} (press Run)" if chosen else "no backend chosen (step 2)"
            return
        self.overall_label.value = f"{state.overall}/{len(names)} backends" + (
            " (cancel requested)" if state.cancel_requested and state.running else ""
        )

    def _on_log(self, change: Any = None) -> None:
        lines = self.state.log[-400:]  # the page stays light even for a chatty export
        self.log.value = (
            "<pre style='margin:0;font-size:0.85em;line-height:1.35;white-space:pre-wrap'>"
            + html.escape("\n".join(lines)) + "</pre>"
        )

    def _on_run_error(self, change: Any = None) -> None:
        text = self.state.run_error
        self.run_error.value = f"<div style='{_ERROR_STYLE}'>{html.escape(text)}</div>" if text else ""

    # -- step 4: results ---------------------------------------------------------------------------------
    def _results_page(self) -> ipywidgets.Widget:
        w, state = self.w, self.state
        self.results_table = w.HTML()
        self.quantization_table = w.HTML()
        self.skipped_note = w.HTML()
        # align_items: without it flexbox stretches every plot to the tallest one's height
        self.plots = w.HBox(layout=w.Layout(flex_flow="row wrap", align_items="flex-start"))
        self.links = w.Output()
        self.save_report_button = w.Button(description="Save as report", icon="file", button_style="info")
        self.save_report_button.add_class("enn-wizard-save-report")
        self.save_report_status = w.HTML()
        self.save_report_button.on_click(lambda _: self._on_save_report())
        if self._save_report is None:  # the reports extra is missing: hidden, not broken
            self.save_report_button.layout.display = "none"
        state.observe(self._show_results, ["report", "latency"])
        state.observe(self._on_report_path, "report_path")
        return w.VBox([
            w.HTML("<b>Results</b>"), self.results_table, self.quantization_table, self.skipped_note, self.plots,
            w.HTML("<b>Files</b>"), self.links,
            w.HBox([self.save_report_button, self.save_report_status]),
        ])  # fmt: skip

    def _show_results(self, change: Any = None) -> None:
        state = self.state
        rows = (
            result_rows(state.report, state.latency, state.latency_batches, state.batch_opt)
            if state.report is not None else []
        )  # fmt: skip
        summary = state.report.summary if state.report is not None else ""
        self.results_table.value = (
            f"<div class='enn-wizard-summary' style='margin:4px 0'>{html.escape(summary)}</div>" if summary else ""
        ) + results_table_html(rows)
        self.quantization_table.value = (
            state.report.quantization_table(state.latency)._repr_html_()
            if state.report is not None and any(r.quantize for r in state.report.results) else ""
        )
        self.skipped_note.value = (
            f"<i>Skipped after Cancel: {html.escape(', '.join(state.skipped))}</i>" if state.skipped else ""
        )
        self.links.clear_output()
        self.links.outputs = ()
        if rows:
            from IPython.display import HTML

            # Through an Output (not an HTML widget) so JupyterLab's renderer resolves the relative
            # links to its /files/ URLs, the way IPython's FileLink is resolved.
            self.links.append_display_data(HTML(file_links_html(rows)))
        images = []
        if rows:
            figures = [
                plots.parity_figure({r["backend"]: r["parity"] for r in rows},
                                    tolerances={r["backend"]: r["atol"] for r in rows if r["atol"]}),
                plots.latency_figure({r["backend"]: r["latency_ms"] for r in rows},
                                     eager_ms=state.latency.get("eager"), safe_ms=state.latency.get("eager_safe"),
                                     batch_size=state.batch_opt, batches=state.latency_batches),
                plots.size_figure({r["backend"]: r["size"] for r in rows}),
            ]  # fmt: skip
            quantized = quantization_rows(state.report.results, state.latency) if state.report is not None else []
            if quantized:
                figures.append(plots.quantization_figure(quantized))
            images = [self.w.Image(value=plots.to_png(fig), format="png",
                                   layout=self.w.Layout(max_width="480px", height="auto"))
                      for fig in figures]  # fmt: skip
        self.plots.children = images
        self.save_report_status.value = ""

    def _on_save_report(self) -> None:
        if self._save_report is None:
            return
        self.save_report_button.disabled = True
        self.save_report_status.value = "<i>writing the report and its HTML (a fresh kernel runs the export again)…</i>"
        self.run.background(self._save_report, done=self._report_done, failed=self._report_failed)

    def _report_done(self, result: Any) -> None:
        self.save_report_button.disabled = False
        self._saved_report = result
        self.state.report_path = str(getattr(result, "notebook", result))
        self._on_report_path()

    def _report_failed(self, exc: BaseException) -> None:
        self.save_report_button.disabled = False
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        self.save_report_status.value = (  # shown inline, never a traceback in the wizard
            f"<span style='{_ERROR_STYLE}'>{html.escape(type(exc).__name__)}: {html.escape(first)}</span>"
        )

    def _on_report_path(self, change: Any = None) -> None:
        path = self.state.report_path
        if not path:
            return
        text = "report written: " + _link(Path(path))
        saved = getattr(self, "_saved_report", None)
        html_path = getattr(saved, "html", None)
        if html_path:
            text += " · HTML: " + _link(Path(html_path))
        note = getattr(saved, "model_note", "")
        if note:
            text += f"<br><small>{html.escape(note)}</small>"
        self.save_report_status.value = text


# -- HTML helpers (pure) ------------------------------------------------------------------------------
def model_summary_html(state: WizardState) -> str:
    """The chosen model's spec (in_dim, out_shape, tasks, size, parameters) or checkpoint manifest."""
    try:
        if state.source == "checkpoint":
            text = state.checkpoint.strip()
            if not text or not Path(text).expanduser().exists():
                return ""
            from enn_nb.checkpoint import inspect

            manifest = inspect(Path(text).expanduser())
            body = manifest._repr_html_() if hasattr(manifest, "_repr_html_") else html.escape(repr(manifest))
            return f"<div class='enn-wizard-manifest'>{body}</div>"
        model = state.namespace.get(state.variable) if state.variable else None
        if model is None:
            return ""
        return module_summary_html(model, typed=_typed_signature(state))
    except Exception as exc:  # a summary that cannot be built must not break the step
        return f"<span style='{_ERROR_STYLE}'>{html.escape(type(exc).__name__)}: {html.escape(str(exc))}</span>"


def _typed_signature(state: WizardState) -> list[Any] | None:
    try:
        return state.signature_inputs()
    except SpecError:  # the step's message says what is wrong with the text
        return None


def module_summary_html(model: Any, typed: list[Any] | None = None) -> str:
    spec = ModelSpec.from_model(model)
    if typed is not None:
        spec = spec.replace(inputs=typed)
    inputs = spec.input_signature()
    params, values = model_counts(model)
    size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    tasks = ", ".join(str(t.get("name", t)) if isinstance(t, dict) else str(t) for t in spec.tasks or []) or "—"
    items = [
        ("class", type(model).__name__),
        ("builder", spec.builder or "—"),
        ("in_dim", spec.in_dim if spec.in_dim is not None else "—"),
        ("out_shape", list(spec.out_shape) if spec.out_shape is not None else "—"),
        ("inputs", describe(inputs) if inputs else "— (type them above)"),
        ("tasks", tasks),
        ("parameters", count_text(params, values)),
        ("size", human_size(size)),
        ("feature dtype", spec.feature_dtype or "—"),
    ]
    cells = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in items
    )
    return f"<table class='enn-wizard-spec'>{cells}</table>"


def results_table_html(rows: list[dict[str, Any]]) -> str:
    """The results table: backend, status, artifact, size, max abs error, latency."""
    from enn_nb.engine.timing import ratio_text

    if not rows:
        return "<i>No results yet.</i>"
    head = "".join(
        f"<th style='text-align:left;padding:2px 10px'>{h}</th>"
        for h in ("backend", "status", "artifact", "size", "max abs error", "latency (batch)")
    )
    body = []
    for r in rows:
        color = STATUS_COLORS.get(r["status"], "#555")
        err = "" if r["max_abs_err"] is None else f"{r['max_abs_err']:.2e}"
        latency = "" if r["latency_ms"] is None else f"{r['latency_ms']:.3g} ms"
        if latency and r.get("latency_batch"):
            latency += f" (batch {r['latency_batch']})"
        if r.get("speedup"):
            latency += f" ({ratio_text(r['speedup'])} vs export-safe eager)"
        artifact = html.escape(_display_path(r["artifact"])) if r["artifact"] else ""
        status = html.escape(r["status"])
        if r["status"] == "ok":  # an artifact whose outputs were not checked must not read like one that was
            verified = r.get("verification") == "verified"
            status += " · verified" if verified else " · <span style='color:#b06000'>not verified</span>"
        status += " <small>(cached)</small>" if r.get("cached") else ""
        title = f" title='{html.escape(r['message'], quote=True)}'" if r.get("message") else ""
        body.append(
            f"<tr class='enn-wizard-row' data-backend='{html.escape(r['backend'])}'>"
            f"<td style='padding:2px 10px'>{html.escape(r['backend'])}</td>"
            f"<td style='padding:2px 10px;color:{color};font-weight:600'{title}>{status}</td>"
            f"<td style='padding:2px 10px'><code>{artifact}</code></td>"
            f"<td style='padding:2px 10px'>{human_size(r['size'])}</td>"
            f"<td style='padding:2px 10px'>{err}</td>"
            f"<td style='padding:2px 10px'>{latency}</td></tr>"
        )
    messages = "".join(
        f"<li><b>{html.escape(r['backend'])}</b>: {html.escape(r['message'])}</li>"
        for r in rows if r.get("message")  # a verified row's message: a declared dynamic dim it keeps static
    )  # fmt: skip
    notes = f"<ul style='margin:4px 0'>{messages}</ul>" if messages else ""
    return (
        f"<table class='enn-wizard-results' style='border-collapse:collapse'><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>{notes}"
    )


def file_links_html(rows: list[dict[str, Any]]) -> str:
    """FileLink-like links to each artifact and its sidecar (relative to the working directory)."""
    items = []
    for r in rows:
        parts = [_link(Path(p)) for p in (r["artifact"], r["sidecar"]) if p]
        if parts:
            items.append(f"<li>{html.escape(r['backend'])}: {' &nbsp; '.join(parts)}</li>")
    return f"<ul class='enn-wizard-links'>{''.join(items)}</ul>" if items else "<i>no files written</i>"


def _display_path(path: str | os.PathLike[str]) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
    return str(path) if rel.startswith("..") else rel


def _link(path: Path) -> str:
    shown = _display_path(path)
    if Path(shown).is_absolute():  # outside the notebook's folder: no URL can reach it, show the path
        return f"<code>{html.escape(shown)}</code>"
    href = html.escape(Path(shown).as_posix(), quote=True)
    return f"<a href='{href}' target='_blank'>{html.escape(shown)}</a>"
