"""``enn_nb.wizard()``: an ipywidgets export wizard (model, targets and options, run, results)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from enn_nb._optional import require
from enn_nb.surfaces.notebook.wizard_run import ExportRun
from enn_nb.surfaces.notebook.wizard_state import STEPS, WizardState
from enn_nb.surfaces.notebook.wizard_view import WizardView
from enn_nb.surfaces.reports import report


class Wizard:
    """The export wizard: a :class:`WizardState`, its widgets and the run controller.

    Display it (last expression of a cell, or ``display(w)``) to click through it; drive it from
    code with the same verbs the buttons use (``next``, ``back``, ``run``, ``cancel``, ``wait``).

    Attributes:
        state: every choice, the step, progress and results, as traitlets.
        view: the widgets (``view.widget`` is the root).
        controller: the run controller (background thread, event marshalling).
    """

    def __init__(self, namespace: Mapping[str, Any] | None = None, **defaults: Any) -> None:
        require("ipywidgets", purpose="the export wizard")

        self.state = WizardState(namespace)
        self.state.apply_defaults(defaults)
        self.controller = ExportRun(self.state)
        self.view = WizardView(
            self.state, self.controller, save_report=self._make_report if reports_available() else None
        )

    # -- the verbs the buttons use ------------------------------------------------------------
    def next(self) -> bool:
        """Go to the next step if the shown one is valid (else its inline message says why)."""
        return self.state.next()

    def back(self) -> bool:
        """Go back one step; every choice is kept."""
        return self.state.back()

    def run(self, *, wait: bool = False, timeout: float | None = None) -> bool:
        """Start the export in the background (what the Run button does); ``wait=True`` blocks."""
        started = self.controller.start()
        if started and wait:
            self.controller.wait(timeout)
        return started

    def cancel(self) -> None:
        """Stop after the backend being converted now (what the Cancel button does)."""
        self.controller.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the running export; True once it finished."""
        return self.controller.wait(timeout)

    @property
    def step(self) -> str:
        return STEPS[self.state.step]

    @property
    def report(self) -> Any:
        """The last run's ExportReport, or None."""
        return self.state.report

    # -- save as report --------------------------------------------------------------------------
    def save_report(self) -> Any:
        """Produce the papermill export report for the same model and settings; blocks until done.

        The "Save as report" button does the same in a background thread. Both write
        ``<out_dir>/report/export_report.ipynb`` and ``.html``. A model chosen from a checkpoint is
        reported from that file; one chosen from a variable is first saved as
        ``<out_dir>/report/<variable>.safetensors``, since a report runs in a fresh kernel that can
        only read files (``result.model_note`` says so, and the wizard shows it).

        Returns:
            The ``enn_nb.surfaces.reports.ReportResult`` (``.notebook`` is the executed report, ``.html`` its HTML).
        """
        result = self._make_report()
        self.view._saved_report = result
        self.state.report_path = str(getattr(result, "notebook", result))
        return result

    def _make_report(self) -> Any:
        # Runs in a worker thread for the button: reads the state, writes no trait.
        from enn_nb.checkpoint import save

        state = self.state
        if state.report is None:
            raise RuntimeError("Run the export before saving it as a report.")
        report_dir = Path(state.out_dir).expanduser() / "report"
        checkpoint = state.selected_model()
        note = ""
        if not isinstance(checkpoint, Path):
            checkpoint = report_dir / f"{state.variable}.safetensors"
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            save(state.namespace[state.variable], checkpoint, metadata={"made_by": "enn_nb wizard, Save as report"})
            note = (
                f"`{state.variable}` was saved as {checkpoint} for the report: a report runs in a fresh "
                "kernel, which can only read a checkpoint file (choose a checkpoint on step 1 to report on it instead)."
            )
        atol, rtol = state.tolerances()
        quantized = state._quantize_kwargs()
        calibration = quantized.get("calibration")
        if quantized and calibration is not None and not isinstance(calibration, Path):
            note += (" The report calibrates on drawn inputs: a fresh kernel cannot read the notebook variable "
                     f"`{state.calibration}`; save it with `enn_nb.engine.quantize.save_inputs` and give the path.")
            calibration = None
        result = report(
            "export_report",
            report_dir,
            html=True,
            checkpoint=str(checkpoint.resolve()),
            backends=list(state.backends),
            batch_sizes=sorted(set(state.batch_range())),
            atol=atol,
            rtol=rtol,
            progress=False,
            **({"quantize": quantized["quantize"], "calibration": str(calibration or ""),
                "accuracy_budget": quantized["accuracy_budget"]} if quantized else {}),
        )
        result.model_note = note  # type: ignore[attr-defined]
        return result

    # -- display -------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = self.view.widget._repr_mimebundle_(**kwargs)
        if isinstance(bundle, dict):  # a static rendering (nbconvert, GitHub) shows this, not VBox(children=...)
            bundle["text/plain"] = self._static_text()
        return bundle

    def _static_text(self) -> str:
        state = self.state
        step = STEPS.index(self.step) + 1
        backends = ", ".join(state.backends) or "none chosen"
        text = f"enn_nb export wizard, step {step} of {len(STEPS)} ({self.step}); backends: {backends}"
        if state.report is not None:
            text += "; last run: " + ", ".join(f"{r.backend}={r.status}" for r in state.report.results)
        return text + " (an interactive widget: run the notebook in Jupyter to use it)"

    def __repr__(self) -> str:
        state = self.state
        return (
            f"<enn_nb Wizard step={self.step!r} model={state.variable or state.checkpoint or None!r} "
            f"backends={list(state.backends)} running={state.running}>"
        )


def reports_available() -> bool:
    """Whether ``enn_nb.report`` can run here (its module and papermill import)."""
    try:
        from enn_nb._optional import is_installed
        from enn_nb.surfaces.reports import report  # noqa: F401
    except Exception:
        return False
    return is_installed("papermill")


def wizard(namespace: Mapping[str, Any] | None = None, **defaults: Any) -> Wizard:
    """Open the export wizard on the ``nn.Module`` variables of ``namespace``.

    Args:
        namespace: where to look for models; defaults to the IPython user namespace, or the
            caller's globals outside IPython.
        **defaults: initial choices, e.g. ``model="net"`` (or the module itself),
            ``checkpoint="model.pt"``, ``backends=["onnx"]``, ``out_dir="exports"``,
            ``batch_range=(1, 8, 64)``, ``dynamic_batch``, ``opset``, ``fp16``,
            ``tolerances=(atol, rtol)``, ``isolate``, ``verify``.

    Returns:
        The :class:`Wizard`; it displays itself as the last expression of a cell.

    Raises:
        TypeError: an unknown option in ``defaults``.
        MissingDependencyError: ipywidgets is not installed (names the ``notebook`` extra).
    """
    if namespace is None:
        namespace = _user_namespace(sys._getframe(1).f_globals)
    return Wizard(namespace, **defaults)


def _user_namespace(fallback: Mapping[str, Any]) -> Mapping[str, Any]:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell.user_ns if shell is not None else fallback
