"""The ``%enn_*`` IPython magics: thin shells over ``enn_nb.save/load/inspect/export/backends``.

``%load_ext enn_nb`` registers them. This module imports IPython and traitlets only; torch and the
API load on a magic's first use. Parsing and validation live in :mod:`enn_nb.surfaces.notebook._magic_logic`;
user errors become one-line ``UsageError``s here, at the boundary, and nowhere else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, Dict, Int, List, TraitError, Unicode, validate

from enn_nb.engine.registry import backends
from enn_nb.model import provenance
from enn_nb.engine.vocabulary import PROGRESS_STAGES
from enn_nb.surfaces.notebook import _magic_logic as logic
from enn_nb.surfaces.notebook.display import TqdmProgress

# A backend's stages as the export engine reports them; the shared capture is one more bar.


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a user error into a one-line UsageError (no traceback); let anything else through."""
    try:
        yield
    except UsageError:
        raise
    except Exception as exc:
        if logic.is_user_error(exc):
            raise UsageError(logic.one_line(exc)) from exc
        raise


def _parse(magic: Any, line: str) -> Any:
    # magic_arguments' own parse_argstring keeps quotes inside tokens; split like a shell instead.
    return magic.parser.parse_args(logic.split_args(line))


@magics_class
class EnnMagics(Magics):
    """Settings of the ``%enn_*`` magics; change them with ``%config EnnMagics.<name> = value``."""

    out_dir = Unicode(
        "enn_exports", help="Directory `%%enn_export` writes to when neither `--out` nor `out_dir:` is given."
    ).tag(config=True)
    default_backends = List(
        Unicode(),
        default_value=["onnx", "pt2"],
        help="Backends `%%enn_export` uses without `--backends` or `backends:`; `all` = every registered one (those "
        "that cannot convert here are reported `unavailable`, not failing), `available` = every one that converts here.",
    ).tag(config=True)
    tolerances = Dict(
        default_value={},
        help="Parity tolerances per backend, e.g. {'onnx': {'atol': 1e-5, 'rtol': 1e-4}}; a cell's `tolerances:` wins.",
    ).tag(config=True)
    isolate = Bool(
        True, help="Convert and verify each backend in a child process (a crash cannot kill the kernel)."
    ).tag(config=True)
    dynamic_batch = Bool(True, help="Export with a dynamic batch dimension.").tag(config=True)
    batch_range = List(
        Int(), default_value=[1, 8, 64], help="[min, opt, max] batch sizes for backends that need bounds."
    ).tag(config=True)
    verify = Bool(True, help="Check each artifact against the eager model (parity).").tag(config=True)
    cache = Bool(True, help="Reuse artifacts of an unchanged model instead of converting again.").tag(config=True)
    progress = Bool(True, help="Show a progress bar per backend while `%%enn_export` runs.").tag(config=True)
    record_provenance = Bool(
        True, help="Record the cell's source hash, execution count and notebook path in manifests and sidecars."
    ).tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self._bound_by_load: set[str] = set()

    @validate("tolerances")
    def _check_tolerances(self, proposal: Any) -> dict[str, Any]:
        try:
            logic.check_tolerances(proposal["value"])
        except Exception as exc:
            raise TraitError(logic.one_line(exc)) from None
        return proposal["value"]

    @validate("batch_range")
    def _check_batch_range(self, proposal: Any) -> list[int]:
        try:
            return list(logic.check_batch_range(proposal["value"], "EnnMagics.batch_range"))
        except Exception as exc:
            raise TraitError(logic.one_line(exc)) from None

    @property
    def _ns(self) -> dict[str, Any]:
        return self.shell.user_ns

    def _provenance(self, magic: str, line: str, cell: str | None = None) -> dict[str, Any] | None:
        if not self.record_provenance:
            return None
        return provenance.collect(self.shell, magic=magic, line=line, cell=cell)

    def _variable(self, name: str, *, what: str, cls_path: str, kind: str) -> Any:
        return logic.require_instance(logic.lookup(self._ns, name, what=what), name, cls_path, kind)

    def _spec(self, name: str | None) -> Any:
        if not name:
            return None
        return self._variable(name, what="--spec", cls_path="enn_nb.model.spec:ModelSpec", kind="an `enn_nb.ModelSpec`")

    def _settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.trait_names(config=True)}

    # -- %enn_save ----------------------------------------------------------------------------
    @magic_arguments()
    @argument("model", help="Name of the nn.Module variable to save.")
    @argument("path", help="Checkpoint path: .pt/.pth, .safetensors, or a directory (no suffix) for DCP; or a URL "
              "(s3://bucket/model.safetensors; storage options from the environment).")
    @argument("--format", choices=logic.SAVE_FORMATS, help="Checkpoint format; default: from the suffix.")
    @argument(
        "--meta", nargs="+", action="append", default=[], metavar="KEY=VALUE",
        help="User metadata; values are read as YAML (numbers, lists, strings).",
    )
    @argument("--optimizer", metavar="OPT", help="Name of a torch optimizer variable whose state is saved too.")
    @argument("--spec", metavar="SPEC", help="Name of an enn_nb.ModelSpec variable (for a plain nn.Module).")
    @line_magic
    def enn_save(self, line: str) -> Any:
        """Save a model from the namespace as a self-describing checkpoint; returns its Manifest.

        The manifest shows as one line (path, format, parameters, size, hash); ``print(_)`` or
        ``%enn_inspect PATH`` shows the whole table. The cell's provenance (source hash, execution count, notebook path) is stored in the
        manifest's metadata under ``provenance``.

        Example::

            %enn_save model checkpoints/model.safetensors --meta run=3 note="first try"
            %enn_save model checkpoints/model_dcp --format dcp
        """
        with user_errors():
            args = _parse(self.enn_save, line)
            value = logic.lookup(self._ns, args.model, what="the model to save")
            model = logic.require_module(value, args.model, self._ns)
            fmt = logic.save_format(args.path, args.format)
            metadata = logic.parse_meta(item for group in args.meta for item in group)
            optimizer = None
            if args.optimizer:
                optimizer = self._variable(
                    args.optimizer, what="--optimizer", cls_path="torch.optim.optimizer:Optimizer",
                    kind="a torch optimizer",
                )
            spec = self._spec(args.spec)
            record = self._provenance("%enn_save", line)
            if record is not None:
                metadata["provenance"] = record
            from enn_nb.storage import is_url

            path = args.path if is_url(args.path) else Path(args.path).expanduser()
            if isinstance(path, Path):
                path.parent.mkdir(parents=True, exist_ok=True)

            from enn_nb.checkpoint import save
            from enn_nb.surfaces.notebook.saved import SavedManifest

            manifest = save(model, path, format=fmt, spec=spec, metadata=metadata or None, optimizer=optimizer)
            return SavedManifest.of(manifest, model=model)

    # -- %enn_load ----------------------------------------------------------------------------
    @magic_arguments()
    @argument("path", help="A checkpoint: .pt/.pth, .safetensors or a DCP directory (enn_nb or ENN-PyTorch), or a URL.")
    @argument("--into", metavar="NAME", help="Variable to bind the model to; default: derived from the file name.")
    @argument("--model", metavar="VAR", help="Load the weights into this existing nn.Module instead of rebuilding it.")
    @argument("--no-verify", action="store_true", help="Skip the integrity hashes check.")
    @argument("--non-strict", action="store_true", help="Load what matches; report missing/unexpected keys.")
    @line_magic
    def enn_load(self, line: str) -> Any:
        """Load a checkpoint, bind its model to a variable and return the Loaded object.

        Without ``--into`` the name comes from the file (``runs/model.safetensors`` -> ``model``); a
        derived name never replaces a variable this magic did not bind itself (``model_loaded`` then).

        Example::

            %enn_load checkpoints/model.safetensors --into restored
            restored.eval()
        """
        with user_errors():
            args = _parse(self.enn_load, line)
            path = logic.check_checkpoint_path(args.path)
            target = None
            if args.model:
                value = logic.lookup(self._ns, args.model, what="--model")
                target = logic.require_module(value, args.model, self._ns)
            if args.into:
                name = logic.check_identifier(args.into, "--into")
            else:
                name = logic.derive_name(path, self._ns, self._bound_by_load)

            from enn_nb.checkpoint import load

            loaded = load(path, model=target, strict=not args.non_strict, verify=not args.no_verify)
            self._ns[name] = loaded.model
            if not args.into:
                self._bound_by_load.add(name)
            print(f"`{name}` = {type(loaded.model).__name__} loaded from {path}")
            return loaded

    # -- %enn_inspect -------------------------------------------------------------------------
    @magic_arguments()
    @argument("path", help="A checkpoint file or DCP directory, or a URL.")
    @line_magic
    def enn_inspect(self, line: str) -> Any:
        """Show a checkpoint's manifest without reading its tensors (fast on multi-GB files).

        Example::

            %enn_inspect checkpoints/model.safetensors
        """
        with user_errors():
            args = _parse(self.enn_inspect, line)
            path = logic.check_checkpoint_path(args.path)

            from enn_nb.checkpoint import inspect

            return inspect(path)

    # -- %%enn_export -------------------------------------------------------------------------
    @magic_arguments()
    @argument("model", help="Name of an nn.Module variable, or the path of a checkpoint.")
    @argument("--out", metavar="DIR", help="Output directory (default: `out_dir:`, else EnnMagics.out_dir).")
    @argument(
        "--backends", nargs="+", metavar="NAME",
        help="Backends, space- or comma-separated, or `all` (default: `backends:`, else EnnMagics.default_backends).",
    )
    @argument("--as", dest="as_name", metavar="NAME", help="Also bind the ExportReport to this variable.")
    @argument("--spec", metavar="SPEC", help="Name of an enn_nb.ModelSpec variable (for a plain nn.Module).")
    @line_cell_magic
    def enn_export(self, line: str, cell: str | None = None) -> Any:
        """Export a model to several runtimes, check parity and return the ExportReport (also bound to ``_``).

        The cell body holds options as YAML; every key is optional:
        backends, out_dir, dynamic_batch, batch_range, example_inputs (a variable or a shape),
        tolerances, options (per backend), verify, isolate, cache, strict, stem, metadata,
        quantize (fp16 / int8-weights / int8, or per backend), calibration and eval_data (a variable or a
        .safetensors path), accuracy_budget, accuracy_metric (a variable holding a callable).

        Example::

            %%enn_export model --out exports --as report
            backends: [onnx, pt2]
            dynamic_batch: true
            batch_range: [1, 8, 64]
            example_inputs: [2, 38]  # a shape, or the name of a tensor variable
            tolerances:
              onnx: {atol: 1.0e-5, rtol: 1.0e-4}
            options:
              onnx: {opset: 20}

        Quantized artifacts beside the float ones (``calib_loader`` a DataLoader of real inputs; without
        ``calibration`` the inputs are drawn from the signature, and every figure says so)::

            quantize: {onnx: int8, coreml: fp16}
            calibration: calib_loader
        """
        with user_errors():
            args = _parse(self.enn_export, line)
            body = logic.parse_export_body(cell or "")
            source = logic.model_or_checkpoint(self._ns, args.model)
            if args.as_name:
                logic.check_identifier(args.as_name, "--as")
            requested = logic.split_names(args.backends) or body.get("backends") or list(self.default_backends)
            spec = self._spec(args.spec)
            example = logic.example_inputs(body["example_inputs"], self._ns, spec) if "example_inputs" in body else None
            settings = logic.export_settings(  # last: it creates the output folder
                body, self._settings(), requested, out=args.out, namespace=self._ns,
                provenance=self._provenance("%%enn_export" if cell is not None else "%enn_export", line, cell),
            )

            from enn_nb.engine import export

            progress = None
            if self.progress:
                progress = TqdmProgress(stages=PROGRESS_STAGES, order=list(settings.names))
            with progress if progress is not None else contextlib.nullcontext():
                report = export(source, settings=settings, spec=spec, example_inputs=example, progress=progress)
            self._ns["_"] = report
            if args.as_name:
                self._ns[args.as_name] = report
            return report

    # -- %enn_backends ------------------------------------------------------------------------
    @magic_arguments()
    @line_magic
    def enn_backends(self, line: str) -> Any:
        """List the export backends: artifact suffix, whether each is available here, why not, the install line.

        Example::

            %enn_backends
        """
        with user_errors():
            _parse(self.enn_backends, line)

            return backends()

    # -- %enn_wizard --------------------------------------------------------------------------
    @magic_arguments()
    @argument("model", nargs="?", help="Name of an nn.Module variable or a checkpoint path to preselect.")
    @line_magic
    def enn_wizard(self, line: str) -> Any:
        """Open the export wizard (ipywidgets): pick a model, targets and options, run, look at results.

        The wizard starts from this extension's settings (out_dir, default_backends, isolate,
        verify, cache, dynamic_batch, batch_range, and tolerances given for every backend).

        Example::

            %enn_wizard model
        """
        with user_errors():
            args = _parse(self.enn_wizard, line)
            source = logic.model_or_checkpoint(self._ns, args.model) if args.model else None
            defaults = logic.wizard_defaults(self._settings(), source, args.model or "")
            from enn_nb.surfaces.notebook.wizard import wizard

            return wizard(self._ns, **defaults)


def load_ipython_extension(ipython: Any) -> None:
    """Register the ``%enn_*`` magics and their ``EnnMagics`` settings (``%load_ext enn_nb``)."""
    ipython.register_magics(EnnMagics(shell=ipython))


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the magics and their settings again (``%unload_ext enn_nb``)."""
    manager = ipython.magics_manager
    manager.registry.pop(EnnMagics.__name__, None)
    for kind, table in EnnMagics.magics.items():  # the class table: {"line": {name: method}, ...}
        for name in table:
            manager.magics[kind].pop(name, None)
    ipython.configurables[:] = [c for c in ipython.configurables if not isinstance(c, EnnMagics)]


__all__ = ["EnnMagics", "load_ipython_extension", "unload_ipython_extension"]
