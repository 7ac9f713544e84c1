"""``ExportSettings``: everything one ``export()`` call was asked for, validated once, before any work.

:meth:`ExportSettings.from_call` is the one way to make them: ``export()`` calls it, and so does every
surface (the magics, the wizard, the CLI, the report templates) to turn what a user typed into the
settings it then hands to ``export(model, settings=...)``, so the same request gives equal settings
everywhere. Backend names are resolved there once (``"all"`` and ``"available"`` mean what
:data:`~enn_nb.engine.registry.KEYWORDS` says), each backend is built there once, and tolerances are
parsed there once. The surfaces may call :func:`check_batch_range`, :func:`out_dir_problem` and
:func:`~enn_nb.engine.tolerance.parse_tolerances` earlier to tell a user while they type.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from enn_nb.engine.backends.base import Backend
from enn_nb.engine.options import check_options
from enn_nb.engine.registry import get_backend, resolve_request
from enn_nb.engine.tolerance import Tolerances, parse_tolerances
from enn_nb.engine.vocabulary import fails
from enn_nb.errors import OutputDirError, SpecError

#: How the shared ONNX is made unless ``options["onnx"]`` says otherwise.
DEFAULT_ONNX_OPTIONS: Mapping[str, Any] = {"opset": None, "optimize": True}


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """What one ``enn_nb.export`` call asked for (see its docstring for each field), checked.

    ``names`` are registry names in request order; ``out`` exists and is writable; ``options``
    holds only backends being exported (and ``"onnx"``, the shared ONNX's options, merged over the
    defaults in ``onnx_options``). ``named``: the backends were asked for by name (not ``"all"`` or
    ``"available"``), so an unavailable one fails the request (:meth:`fails`); ``skipped``: for
    ``"available"``, the backends left out and why. ``instances`` are the backends built for this
    export, one per name (not compared: two equal requests build their own).
    """

    names: tuple[str, ...]
    out: Path
    stem: str = "model"
    dynamic_batch: bool = True
    batch_range: tuple[int, int, int] = (1, 8, 64)
    verify: bool = True
    tolerances: Tolerances = dataclasses.field(default_factory=Tolerances)
    isolate: bool = True
    cache: bool = True
    strict: bool = False
    safe: bool = True
    workers: int | None = None
    options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    provenance: Mapping[str, Any] | None = None
    named: bool = True
    skipped: Mapping[str, str] = dataclasses.field(default_factory=dict)
    instances: tuple[Backend, ...] = dataclasses.field(default=(), compare=False, repr=False)
    #: an ``out_dir`` URL: ``out`` is then the local staging folder, uploaded after the export
    upload_to: str | None = None
    #: fsspec options for the URLs (never written anywhere, never shown)
    storage_options: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)
    #: ``{backend: (mode, ...)}``: quantized artifacts to make beside each float one (``engine/quantize``)
    quantize: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    calibration: Any = None  # the user's calibration data, as given (checked once the signature is known)
    eval_data: Any = None
    accuracy_budget: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    accuracy_metric: Any = None
    allow_degraded: bool = False  # a quantized artifact over its budget does not fail the request (`fails`)

    @classmethod
    def from_call(cls, backends: str | Sequence[str], out_dir: str | os.PathLike[str], **given: Any) -> ExportSettings:
        """Check ``export()``'s arguments (all but the model, its spec and inputs) and create ``out_dir``.

        Raises:
            UnknownNameError: an unknown backend.
            ValueError (SpecError, OptionError): a bad stem, batch range, options or tolerances; options are
                checked against each backend's declaration (``enn_nb.engine.options``).
            QuantizeModeError: a ``quantize`` mode a backend does not support (lists what it does).
            OutputDirError: ``out_dir`` cannot be written.
        """
        from enn_nb.engine.quantize.modes import check_metric, parse_budget, parse_quantize

        resolved, named, skipped = resolve_request(backends)
        names = tuple(resolved)
        quantize = parse_quantize(given.get("quantize"), names)  # refused before out_dir is created
        budget, metric = parse_budget(given.get("accuracy_budget")), check_metric(given.get("accuracy_metric"))
        workers = given.get("workers")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise SpecError(f"`workers` is {workers!r}; give a positive number of child processes, or None.")
        from enn_nb.storage import resolve

        storage_options = dict(given.get("storage_options") or {})
        where = resolve(out_dir, storage_options)  # a bad URL fails here, before any work
        upload_to = None
        if not isinstance(where, Path):  # never a local folder named `s3:`: staged, then uploaded
            from enn_nb.engine.remote import stage_dir

            upload_to, out_dir = where.url, stage_dir(where)
        return cls(
            upload_to=upload_to,
            storage_options=storage_options,
            names=names,
            stem=check_stem(given.get("stem", "model")),
            batch_range=check_batch_range(given.get("batch_range", (1, 8, 64))),
            options=check_options(given.get("options"), names),
            tolerances=parse_tolerances(given.get("tolerances")),
            metadata=dict(given.get("metadata") or {}),
            out=prepare_out_dir(out_dir),
            **{k: given[k] for k in ("dynamic_batch", "verify", "isolate", "cache", "strict", "safe", "provenance")
               if k in given},
            workers=workers,
            named=named,
            skipped=skipped,
            instances=tuple(get_backend(name) for name in names),
            quantize=quantize,
            calibration=given.get("calibration"),
            eval_data=given.get("eval_data"),
            accuracy_budget=budget,
            accuracy_metric=metric,
            allow_degraded=bool(given.get("allow_degraded", False)),
        )

    def backend(self, index: int) -> Backend:
        """The backend built for ``names[index]`` (built now for settings made without :meth:`from_call`)."""
        return self.instances[index] if len(self.instances) == len(self.names) else get_backend(self.names[index])

    def fails(self, status: str) -> bool:
        """Whether a backend result's ``status`` fails this request (``unavailable`` only for a named backend,
        ``degraded`` unless ``allow_degraded``)."""
        return fails(status, named=self.named, allow_degraded=self.allow_degraded)

    @property
    def onnx_options(self) -> dict[str, Any]:
        return {**DEFAULT_ONNX_OPTIONS, **dict(self.options.get("onnx", {}))}


def check_stem(stem: Any) -> str:
    """``stem`` if it is a plain file name stem (no folder, no leading dot); else SpecError."""
    if not isinstance(stem, str) or not stem or any(c in stem for c in "/\\\0") or stem.startswith("."):
        raise SpecError(f"`stem` is {stem!r}; give a plain file name stem such as 'model' (no folders, no leading dot).")
    return stem


def check_batch_range(value: Any, what: str = "batch_range") -> tuple[int, int, int]:
    """``(min, opt, max)`` as ints with ``1 <= min <= opt <= max``; else SpecError naming ``what``."""
    try:
        if isinstance(value, (str, bytes)) or any(isinstance(v, bool) or int(v) != v for v in value):
            raise TypeError
        lo, opt, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        raise SpecError(f"`{what}` is {value!r}; give (min, opt, max) batch sizes, e.g. (1, 8, 64).") from None
    if not 1 <= lo <= opt <= hi:
        raise SpecError(f"`{what}` is {(lo, opt, hi)!r}; it needs 1 <= min <= opt <= max, e.g. (1, 8, 64).")
    return lo, opt, hi


def out_dir_problem(out_dir: str | os.PathLike[str]) -> str:
    """Why ``out_dir`` cannot be used as an output folder ('' when it can); creates nothing."""
    text = str(out_dir).strip()
    if not text:
        return "No output folder: give a folder to write into (it is created if missing)."
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        return f"`{text}` is a file, not a folder. Choose a folder you can write to."
    probe = path
    while not probe.exists() and probe.parent != probe:  # the nearest existing ancestor decides
        probe = probe.parent
    if not probe.is_dir():
        return f"`{text}` cannot be created: `{probe}` is a file. Choose a folder you can write to."
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"`{text}` cannot be written (no write permission on `{probe}`). Choose a folder you can write to."
    if probe == path:
        try:  # permission bits can lie (root, read-only mounts): really write a file
            with tempfile.NamedTemporaryFile(dir=path, prefix=".enn-write-probe-"):
                pass
        except OSError as exc:
            return f"`{text}` cannot be written: {exc.strerror or exc}. Choose a folder you can write to."
    return ""


def prepare_out_dir(out_dir: str | os.PathLike[str], what: str = "out_dir") -> Path:
    """Create ``out_dir`` if needed and prove it writable, before any work; its resolved path.

    Raises:
        OutputDirError: it cannot be created or written (names the path, the reason and the fix).
    """
    from enn_nb._safeio import check_path

    path = check_path(out_dir, what=f"`{what}`", error=OutputDirError).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".enn-write-probe-"):
            pass
    except OSError as exc:
        problem = out_dir_problem(path) or f"`{path}` cannot be written: {exc.strerror or exc}."
        raise OutputDirError(f"`{what}` {str(path)!r} cannot be used: {problem} (It is created if missing.)") from None
    return path.resolve()
