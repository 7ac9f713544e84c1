"""The export wizard's state: what is chosen, which step is shown, progress and results, as traitlets."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traitlets import Any as AnyTrait
from traitlets import Bool, Dict, Enum, HasTraits, Int, List, Unicode, validate

from enn_nb._paths import CHECKPOINT_SUFFIXES, did_you_mean
from enn_nb.errors import SpecError
from enn_nb.model.signature import draw, parse

if TYPE_CHECKING:
    from enn_nb.engine.registry import BackendInfo
    from enn_nb.engine.settings import ExportSettings

#: the wizard's steps, in order; ``WizardState.step`` indexes this tuple
STEPS = ("model", "targets", "run", "results")
STEP_TITLES = {"model": "Model", "targets": "Targets and options", "run": "Run", "results": "Results"}

#: Backends preselected when ``wizard()`` is opened without ``backends``: they convert in seconds.
FAST_BACKENDS = ("onnx", "ort", "pt2")

#: ``wizard(**defaults)`` keys that are not trait names
_DEFAULT_ALIASES = {"model": "variable", "batch_range": None, "tolerances": None, "backend": "backends"}


class WizardState(HasTraits):
    """Everything the wizard's widgets show, and nothing about widgets.

    The view observes these traits and writes user input back into them; the run controller
    (:mod:`enn_nb.surfaces.notebook.wizard_run`) writes progress and results. Mutated on the kernel's main
    thread only (the controller marshals its worker's events there), so observers never race.
    """

    # -- navigation -------------------------------------------------------------------------
    step = Int(0, help="Index of the shown step in STEPS: 0 model, 1 targets and options, 2 run, 3 results.")
    messages = Dict(
        help="Inline validation message per step name ('' when the step's input is valid)."
    )

    # -- step 1: model ------------------------------------------------------------------------
    source = Enum(
        ("variable", "checkpoint"),
        default_value="variable",
        help="Export an nn.Module variable of the namespace ('variable') or a checkpoint file ('checkpoint').",
    )
    variable = Unicode("", help="Name of the nn.Module variable in the namespace to export.")
    checkpoint = Unicode("", help="Path of the checkpoint (.pt, .safetensors or DCP directory) to export.")

    example_inputs = AnyTrait(
        None, allow_none=True,
        help="Example inputs for a model that declares no `in_dim` (a tensor or tuple); None draws them from its spec.",
    )
    signature = Unicode(
        "",
        help="The model's inputs, one `name:dtype[dims]` per line (e.g. `values:float32[B, 24, 6]`, `mask:bool[B, 24]`,"
        " `ids:int64[B, 16]{1000}`); example inputs are drawn from it. '' keeps the model's declared signature.",
    )

    # -- step 2: targets and options ----------------------------------------------------------
    backends = List(Unicode(), help="Names of the backends to export to (a subset of the available ones).")
    dynamic_batch = Bool(True, help="Give the artifacts a dynamic batch dimension (min <= opt <= max).")
    batch_min = Int(1, help="Smallest batch size the artifact must accept (and is checked for parity).")
    batch_opt = Int(8, help="Batch size the runtimes optimise for; latency is measured at it.")
    batch_max = Int(64, help="Largest batch size the artifact must accept (and is checked for parity).")
    opset = Int(20, help="ONNX opset version for the `onnx` backend and the ONNX-based ones.")
    fp16 = Bool(False, help="Ask the backends that support it (see `fp16_backends`) for fp16 artifacts.")
    atol = Unicode("", help="Absolute parity tolerance for every backend; '' keeps each backend's default.")
    rtol = Unicode("", help="Relative parity tolerance for every backend; '' keeps each backend's default.")
    quantize = List(Unicode(), help="Quantize modes (fp16, int8-weights, int8): each chosen backend that supports a "
                    "mode also writes that quantized artifact; a mode no chosen backend supports is refused.")
    calibration = Unicode("", help="Calibration inputs for int8: a variable of the notebook (tensor, batches, "
                          "DataLoader) or a .safetensors path; '' draws inputs from the signature (labelled).")
    accuracy_budget = Unicode("", help="Largest RMSE / float std per output of a quantized artifact; '' keeps 0.03.")
    out_dir = Unicode("enn_exports", help="Directory the artifacts and their sidecars are written into.")
    isolate = Bool(True, help="Run each backend's conversion in a child process (a crash loses nothing).")
    verify = Bool(True, help="Run each artifact on its runtime and compare with the eager model (parity).")
    cache = Bool(True, help="Reuse the artifacts of an identical earlier export instead of converting again.")

    # -- step 3: run ---------------------------------------------------------------------------
    running = Bool(False, help="True while an export runs in the background.")
    cancel_requested = Bool(False, help="Cancel was pressed: the export stops after the current backend.")
    progress = Dict(
        help="Per backend: {'stage': str, 'status': str, 'fraction': float} from the export's progress callback."
    )
    overall = Int(0, help="Backends finished so far in the current run (out of len(backends)).")
    log = List(Unicode(), help="Lines of the live log of the current run.")
    run_error = Unicode("", help="Why the run failed as a whole ('' when it did not), shown on the run step.")

    # -- step 4: results -----------------------------------------------------------------------
    report = AnyTrait(None, allow_none=True, help="The ExportReport of the last finished run.")
    skipped = List(Unicode(), help="Backends the last run skipped because Cancel was pressed.")
    latency = Dict(
        help="Measured latency in ms: {backend: float, 'eager': as-is model, 'eager_safe': in export_safe}; "
        "eager at batch `batch_opt`."
    )
    latency_batches = Dict(help="Batch each backend's latency was measured at (static artifacts: their own).")
    report_path = Unicode("", help="Path of the report produced by 'Save as report' ('' until then).")

    def __init__(self, namespace: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The user's namespace is not a trait: it is theirs, we only read nn.Module variables from it.
        self.namespace: Mapping[str, Any] = namespace if namespace is not None else {}
        self._backend_rows: list[BackendInfo] | None = None

    # -- defaults --------------------------------------------------------------------------------
    def apply_defaults(self, defaults: Mapping[str, Any]) -> None:
        """Set initial choices from ``wizard(**defaults)``.

        Accepts trait names plus ``model`` (a variable name or the module object itself),
        ``batch_range=(min, opt, max)`` and ``tolerances=(atol, rtol)``.

        Raises:
            TypeError: an unknown key (the message lists the known ones).
        """
        known = sorted(set(self.user_choices()) | set(_DEFAULT_ALIASES))
        for key, value in defaults.items():
            if key == "batch_range":
                self.batch_min, self.batch_opt, self.batch_max = (int(v) for v in value)
            elif key == "tolerances":
                atol, rtol = value
                self.atol = "" if atol is None else repr(float(atol))
                self.rtol = "" if rtol is None else repr(float(rtol))
            elif key == "model" and not isinstance(value, str):
                self.variable = self._name_of(value)
            elif key in ("atol", "rtol"):
                setattr(self, key, "" if value is None else repr(float(value)))
            elif key in ("checkpoint", "out_dir"):
                setattr(self, key, os.fspath(value))
                if key == "checkpoint":
                    self.source = "checkpoint"
            elif key in ("backend", "backends"):
                if isinstance(value, str):  # "onnx,pt2", or "all" / "available" for every available one
                    names = [v.strip() for v in value.split(",") if v.strip()]
                    value = self.available_backends() if names in (["all"], ["available"]) else names
                self._preselect_backends(list(value))
            elif key in _DEFAULT_ALIASES or key in self.user_choices():
                setattr(self, _DEFAULT_ALIASES.get(key) or key, value)
            else:
                raise TypeError(
                    f"`wizard()` got an unknown option `{key}`={value!r}. Known options: {', '.join(known)}."
                )
        if "backends" not in defaults and "backend" not in defaults:
            available = set(self.available_backends())
            self.backends = [name for name in FAST_BACKENDS if name in available]

    def _preselect_backends(self, names: list[str]) -> None:
        # A ticked box of an unavailable backend would be disabled, so the user could not untick it:
        # preselect only available ones and say on the targets step what was left out and why.
        rows = {row.name: row for row in self.backend_rows()}
        chosen, dropped = [], []
        for name in names:
            row = rows.get(name)
            if row is not None and row.available:
                chosen.append(name)
            elif row is None:
                dropped.append(f"`{name}` is not a registered backend (known: {', '.join(rows)})")
            else:
                dropped.append(f"`{name}` is unavailable here: {row.reason}")
        self.backends = chosen
        if dropped:
            self.messages = {**self.messages, "targets": "Not preselected: " + "; ".join(dropped)}

    @classmethod
    def user_choices(cls) -> list[str]:
        """Names of the traits the user chooses (steps 1 and 2)."""
        return [
            "source", "variable", "checkpoint", "example_inputs", "signature", "backends", "dynamic_batch", "batch_min",
            "batch_opt",
            "batch_max", "opset", "fp16", "quantize", "calibration", "accuracy_budget", "atol", "rtol", "out_dir", "isolate",
            "verify", "cache",
        ]  # fmt: skip

    def _name_of(self, module: Any) -> str:
        for name, value in self.namespace.items():
            if value is module and not name.startswith("_"):
                return name
        # Not in the namespace: keep it under a private name so the dropdown can still offer it.
        if not isinstance(self.namespace, dict):
            self.namespace = dict(self.namespace)
        self.namespace["model"] = module  # type: ignore[index]
        return "model"

    # -- step 1 helpers --------------------------------------------------------------------------
    def module_names(self) -> list[str]:
        """Names of the ``nn.Module`` variables in the namespace (private ``_names`` left out)."""
        torch = sys.modules.get("torch")
        if torch is None:  # no torch imported means no module can exist yet; do not import it
            return []
        module_type = torch.nn.Module
        return sorted(
            name
            for name, value in list(self.namespace.items())
            if not name.startswith("_") and isinstance(value, module_type)
        )

    def selected_model(self) -> Any:
        """The chosen ``nn.Module``, or the checkpoint path, or None."""
        if self.source == "checkpoint":
            return Path(self.checkpoint).expanduser() if self.checkpoint.strip() else None
        return self.namespace.get(self.variable) if self.variable else None

    # -- step 2 helpers --------------------------------------------------------------------------
    def backend_rows(self, *, refresh: bool = False) -> list[BackendInfo]:
        """The registry's backends: name, suffix, available, reason, install (cached)."""
        if self._backend_rows is None or refresh:
            from enn_nb.engine.registry import backends

            self._backend_rows = list(backends())
        return self._backend_rows

    def available_backends(self) -> list[str]:
        return [row.name for row in self.backend_rows() if row.available]

    def batch_range(self) -> tuple[int, int, int]:
        return (self.batch_min, self.batch_opt, self.batch_max)

    def tolerances(self) -> tuple[float | None, float | None]:
        """``(atol, rtol)`` parsed from the text fields; None keeps the backends' defaults.

        Raises:
            ValueError: a field is not a positive finite number (the message names it).
        """
        from enn_nb.engine.tolerance import parse_tolerances

        given = parse_tolerances((self.atol.strip() or None, self.rtol.strip() or None), "tolerance").given("*")
        return given.atol, given.rtol

    # -- validation ------------------------------------------------------------------------------
    @validate("step")
    def _valid_step(self, proposal: Any) -> int:
        return max(0, min(len(STEPS) - 1, int(proposal["value"])))

    def check(self, step: int | str) -> str:
        """Why the input of ``step`` is invalid ('' when it is valid); does not change any trait."""
        name = step if isinstance(step, str) else STEPS[step]
        if name == "model":
            return self._check_model()
        if name == "targets":
            return self._check_targets()
        if name == "run":
            if self.running:
                return "The export is still running; wait for it or press Cancel."
            if self.report is None:
                return "Run the export first (press Run)."
        return ""

    def validate_step(self, step: int | str | None = None) -> bool:
        """Check a step (the shown one by default), record the inline message, return whether valid."""
        index = self.step if step is None else (STEPS.index(step) if isinstance(step, str) else step)
        message = self.check(index)
        self.messages = {**self.messages, STEPS[index]: message}
        return not message

    def _check_model(self) -> str:
        if self.source == "checkpoint":
            text = self.checkpoint.strip()
            if not text:
                return "No checkpoint chosen: type the path of a .pt, .safetensors or DCP checkpoint."
            path = Path(text).expanduser()
            if not path.exists():
                hint = did_you_mean(path, CHECKPOINT_SUFFIXES)
                return f"Checkpoint `{text}` does not exist{hint}. Check the path (relative to {os.getcwd()})."
            return ""
        names = self.module_names()
        if not self.variable:
            if not names:
                return (
                    "No model chosen: the namespace has no `nn.Module` variable. Create or load one "
                    "(e.g. `model = enn_nb.load(path).model`) and press Refresh, or choose a checkpoint."
                )
            return "No model chosen: pick an `nn.Module` variable from the list."
        if self.variable not in names:
            return (
                f"`{self.variable}` is not an `nn.Module` variable of the namespace (any more). "
                f"Pick one of: {', '.join(names) or '(none)'}."
            )
        try:
            typed = self.signature_inputs()
        except SpecError as exc:
            return f"Inputs: {exc}"
        model = self.namespace[self.variable]
        declared = getattr(model, "input_signature", None) is not None or getattr(model, "in_dim", None) is not None
        if self.example_inputs is None and typed is None and not declared:
            return (
                f"`{self.variable}` ({type(model).__name__}) declares no input signature and no `in_dim`, so no "
                "example input can be drawn for it. Type its inputs below, one per line, e.g. "
                "`values:float32[B, 24, 6]` and `mask:bool[B, 24]` (B = batch), or open the wizard with "
                f"`enn_nb.wizard(model=\"{self.variable}\", example_inputs=(...))`."
            )
        return ""

    def signature_inputs(self) -> list[Any] | None:
        """The typed signature as TensorSig rows (None when the field is empty).

        Raises:
            SpecError: a line that is not ``name:dtype[dims]`` (the message shows the form).
        """

        lines = [line.strip() for line in self.signature.replace(";", "\n").splitlines() if line.strip()]
        return [parse(line) for line in lines] or None

    def _check_targets(self) -> str:
        problems: list[str] = []
        if not self.backends:
            problems.append("No backend chosen: tick at least one target.")
        else:
            rows = {row.name: row for row in self.backend_rows()}
            for name in self.backends:
                row = rows.get(name)
                if row is None:
                    problems.append(f"Backend `{name}` is not registered. Known: {', '.join(rows)}.")
                elif not row.available:
                    problems.append(f"Backend `{name}` is unavailable here: {row.reason}")
        from enn_nb.engine.settings import check_batch_range, out_dir_problem

        try:
            check_batch_range(self.batch_range(), "batch range")
        except ValueError as exc:
            problems.append(str(exc))
        opset = _onnx_option("opset")
        if opset is not None and opset.problem(self.opset):  # the onnx backend's own declaration
            problems.append(f"ONNX opset {self.opset} is not allowed: the opset takes {opset.allowed()}.")
        try:
            self.tolerances()
        except ValueError as exc:
            problems.append(str(exc))
        problems += self._quantize_problems()
        out_problem = out_dir_problem(self.out_dir)
        if out_problem:
            problems.append(out_problem)
        return "\n".join(problems)

    def quantize_plan(self) -> dict[str, list[str]]:
        """``{backend: [modes]}``: each chosen mode on the chosen backends that support it."""
        plan: dict[str, list[str]] = {}
        for name in self.backends:
            modes = [m for m in self.quantize if m in _quantize_modes(name)]
            if modes:
                plan[name] = modes
        return plan

    def _quantize_problems(self) -> list[str]:
        from enn_nb.engine.quantize.modes import parse_budget

        problems = []
        plan = self.quantize_plan()
        for mode in self.quantize:
            if not any(mode in modes for modes in plan.values()):
                support = "; ".join(f"{name}: {', '.join(_quantize_modes(name)) or 'none'}" for name in self.backends)
                problems.append(f"No chosen backend supports quantize mode `{mode}` ({support}). "
                                "Untick it or choose a backend that supports it.")
        given = self.calibration.strip()
        if given and not given.endswith(".safetensors") and given not in self.namespace:
            problems.append(f"Calibration `{given}` is neither a .safetensors file nor a variable of this notebook.")
        try:
            parse_budget(float(self.accuracy_budget) if self.accuracy_budget.strip() else None)
        except ValueError as exc:
            problems.append(f"Accuracy budget `{self.accuracy_budget}`: {exc}")
        return problems

    # -- navigation ------------------------------------------------------------------------------
    def next(self) -> bool:
        """Move to the next step if the shown one is valid; otherwise record why and stay."""
        if self.step >= len(STEPS) - 1:
            return False
        if not self.validate_step():
            return False
        self.step += 1
        return True

    def back(self) -> bool:
        """Move to the previous step (choices are kept); refused while an export runs."""
        if self.step == 0:
            return False
        if self.running:
            self.messages = {**self.messages, "run": "The export is running; press Cancel to stop it first."}
            return False
        self.step -= 1
        return True

    # -- the export call -----------------------------------------------------------------------
    def export_options(self) -> dict[str, dict[str, Any]]:
        """Per-backend options for ``enn_nb.export(options=...)`` from the chosen settings.

        The opset goes to the ``onnx`` entry whenever a chosen backend is built from ONNX (``ort``,
        ``tensorflow``, ``tensorrt``...): that entry shapes the one ONNX file they all share.
        """
        options: dict[str, dict[str, Any]] = {}
        if any(name == "onnx" or self.backend_attr(name, "consumes") == "onnx" for name in self.backends):
            options["onnx"] = {"opset": self.opset}
        if self.fp16:
            for name in self.backends:
                fp16 = _fp16_option(self.backend_defaults(name))
                if fp16:
                    options.setdefault(name, {}).update(fp16)
        return options

    def backend_attr(self, name: str, attr: str) -> Any:
        try:
            from enn_nb.engine.registry import get_backend

            return getattr(get_backend(name), attr, None)
        except Exception:  # a broken plugin: validation reports it, options just skip it
            return None

    def backend_defaults(self, name: str) -> dict[str, Any]:
        """A backend's documented default options ({} if it cannot be resolved)."""
        return dict(self.backend_attr(name, "default_options") or {})

    def fp16_backends(self) -> list[str]:
        """Available backends that have an fp16 option (``fp16`` or an fp16 ``compute_precision``)."""
        return [n for n in self.available_backends() if _fp16_option(self.backend_defaults(n))]

    def export_settings(self) -> ExportSettings:
        """The :class:`ExportSettings` of the chosen settings, through the engine's one ``from_call``
        (creates the output folder)."""
        from enn_nb.engine.settings import ExportSettings  # the engine loads on the first run, not at import

        atol, rtol = self.tolerances()
        # passed through as given: the engine keeps each backend's own bound for what is left empty
        tolerances = (atol, rtol) if atol is not None or rtol is not None else None
        return ExportSettings.from_call(
            list(self.backends),
            Path(self.out_dir).expanduser(),
            dynamic_batch=self.dynamic_batch,
            batch_range=self.batch_range(),
            verify=self.verify,
            tolerances=tolerances,
            isolate=self.isolate,
            cache=self.cache,
            options=self.export_options() or None,
            **self._quantize_kwargs(),
        )

    def export_example_inputs(self) -> Any:
        """The example inputs chosen (a variable, or drawn from the declared signature), else None."""
        example_inputs = self.example_inputs
        typed = self.signature_inputs() if example_inputs is None else None
        return draw(typed) if typed is not None else example_inputs

    def _quantize_kwargs(self) -> dict[str, Any]:
        plan = self.quantize_plan()
        if not plan:
            return {}
        given = self.calibration.strip()
        calibration = (Path(given).expanduser() if given.endswith(".safetensors") else self.namespace.get(given)) \
            if given else None
        budget = float(self.accuracy_budget) if self.accuracy_budget.strip() else None
        return {"quantize": plan, "calibration": calibration, "accuracy_budget": budget}

    def reset_run(self) -> None:
        """Clear progress, log and results before a new run."""
        self.progress = {
            name: {"stage": "waiting", "status": "", "fraction": 0.0} for name in self.backends
        }
        self.overall = 0
        self.log = []
        self.run_error = ""
        self.report = None
        self.skipped = []
        self.latency = {}
        self.latency_batches = {}
        self.report_path = ""
        self.cancel_requested = False
        self.messages = {**self.messages, "run": ""}


def _onnx_option(name: str) -> Any:
    """The ``onnx`` backend's declared option ``name`` (None when the backend cannot be resolved)."""
    try:
        from enn_nb.engine.registry import get_backend

        return next((o for o in get_backend("onnx").options or () if o.name == name), None)
    except Exception:  # a broken registry: the export itself will say why
        return None


def _fp16_option(defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The option that asks a backend for fp16, judged from its documented defaults ({} if none)."""
    if "fp16" in defaults:  # TensorRT
        return {"fp16": True}
    if "compute_precision" in defaults:  # CoreML
        return {"compute_precision": "float16"}
    return {}




def result_rows(
    report: Any, latency: Mapping[str, float] | None = None, batches: Mapping[str, int] | None = None,
    batch: int | None = None,
) -> list[dict[str, Any]]:
    """One plain dict per backend of an ExportReport, what the results table and plots show.

    Keys: backend, status, cached, artifact, sidecar (paths as str or ''), size (bytes of all the
    artifact's files, or None), max_abs_err (or None), parity ``{batch_size: max_abs_err}`` (the
    worst case of each batch size), atol (the tolerance parity used, or None), latency_ms (or
    None), latency_batch (the batch size it was measured at: ``batches[backend]``, else ``batch``),
    speedup (export-safe eager ms / its ms when measured at ``batch``, the references' batch; else None),
    verification (``verified``, ``unverified``, ``deferred`` or the failing status), message (the error or
    deferral reason, or why an ``ok`` artifact is not verified and which declared dynamic dims it keeps
    static; '' when verified and as declared).
    """
    from enn_nb.engine.timing import speedup

    latency = latency or {}
    batches = batches or {}
    rows = []
    for result in report.results:
        parity: dict[int, float] = {}
        for case in result.parity.get("cases") or []:
            size = int(case["batch_size"])
            parity[size] = max(parity.get(size, 0.0), float(case["max_abs_err"]))
        tolerance = result.parity.get("tolerance") or {}
        rows.append(
            {
                "backend": result.backend,
                "status": result.status,
                "cached": bool(result.cached),
                "artifact": str(result.artifact) if result.artifact else "",
                "sidecar": str(result.sidecar) if result.sidecar and Path(result.sidecar).exists() else "",
                "size": result.size_bytes if result.files else None,
                "max_abs_err": result.max_abs_err,
                "parity": parity,
                "atol": tolerance.get("atol"),
                "latency_ms": latency.get(result.backend),
                "latency_batch": batches.get(result.backend, batch) if result.backend in latency else None,
                # a static artifact timed at another batch has no comparable reference
                "speedup": speedup(latency.get("eager_safe"), latency.get(result.backend))
                if batches.get(result.backend, batch) == batch else None,
                "verification": result.verification.kind,
                "message": result.note,
            }
        )
    return rows


def _quantize_modes(name: str) -> dict[str, str]:
    """The quantize modes a backend declares ({} for an unknown or broken one: the backends check reports it)."""
    from enn_nb.engine.registry import get_backend

    try:
        return dict(get_backend(name).quantize_modes or {})
    except Exception:
        return {}
