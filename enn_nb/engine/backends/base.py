"""The one protocol every export backend implements.

A backend converts and loads; that is all. The pipeline (``enn_nb.engine.pipeline``) owns
everything that must exist once: availability checks, the atomic write of the artifact, parity,
the sidecar, the cache, isolation in a child process, timings and error capture.

Lifecycle for one backend in one export::

    backend.unavailable_reason()          -> None, or why it cannot convert here (missing package...)
    backend.convert(job, out_path, opts)  -> Conversion        (writes under out_path, a temp path)
    backend.runtime_unavailable_reason()  -> None, or why it cannot run here (CoreML on Linux...)
    backend.load(artifact, opts)          -> Runner            (numpy in, numpy out)
    backend.read_metadata(artifact)       -> dict | None       (embedded essentials, round-trip test)

A backend that cannot finish here returns ``Conversion(deferred=reason)``; later, on a machine that
can, ``backend.complete(sidecar, folder, out_path, opts) -> Conversion`` builds the artifact and the
pipeline's usual verification and sidecar writing follow (``enn_nb.engine.complete``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from enn_nb._optional import PACKAGES, install_line, is_installed, pip_line
from enn_nb.engine.sidecar import dist_version

if TYPE_CHECKING:
    import numpy as np
    import torch

    from enn_nb.model.spec import ModelSpec


#: What a backend consumes from the shared capture.
SOURCES = ("exported_program", "onnx", "module")

Runner = Callable[[Sequence["np.ndarray"]], list["np.ndarray"]]


@dataclasses.dataclass
class TensorInfo:
    """Name, shape and dtype of one artifact input or output; dynamic dims are strings (``"batch"``)."""

    name: str
    shape: list[int | str]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorInfo:
        return cls(str(data["name"]), list(data["shape"]), str(data["dtype"]))


@dataclasses.dataclass
class ExportJob:
    """What every backend of one export shares: the export-safe module, its inputs, the one capture.

    Built by the pipeline; backends read it and never mutate it.

    Attributes:
        module: the export-safe module, in eval mode, whose ``forward(features)`` is the model's
            ``forward_export`` (raw ``[B, in_dim]`` -> ``[B, *out_shape]``).
        example_inputs: inputs used for capture (batch 2 by default, avoiding 0/1 specialisation).
        dynamic_batch: whether dim 0 is dynamic.
        batch_range: ``(min, opt, max)`` batch sizes for backends that need bounds (TensorRT, CoreML).
        input_names / output_names: names given to the artifact's inputs and outputs.
        spec: the model's spec, if known.
        essentials: small flat ``str -> str`` metadata to embed where a format has a slot.
        workdir: a scratch directory of this export (shared ONNX file, temporary files).
        get_exported_program: returns the one ``torch.export.ExportedProgram`` (captured on first call).
        get_onnx_path: returns the one shared ONNX file (exported on first call, single file).
        signature: the model's I/O signature as JSON (``ModelIO.to_dict()``: named inputs with symbolic
            dims, named outputs, output structure); None for jobs built by older callers.
    """

    module: torch.nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    dynamic_batch: bool
    batch_range: tuple[int, int, int]
    input_names: list[str]
    output_names: list[str]
    spec: ModelSpec | None
    essentials: dict[str, str]
    workdir: Path
    get_exported_program: Callable[[], Any]
    get_onnx_path: Callable[[], Path]
    signature: dict[str, Any] | None = None

    @property
    def exported_program(self) -> Any:
        return self.get_exported_program()

    @property
    def onnx_path(self) -> Path:
        return self.get_onnx_path()


@dataclasses.dataclass
class Conversion:
    """What a backend's ``convert`` produced.

    Attributes:
        artifact: the artifact's path (a file, or a directory for SavedModel / .mlpackage).
        extra_files: other files that belong to it (ONNX external data...), hashed in the sidecar.
        inputs / outputs: the artifact's I/O as the runtime sees it.
        format: format identity and versions, e.g. ``{"opset": 20, "ir_version": 10}``.
        dynamic_batch: whether the artifact really accepts any batch size in ``batch_range``.
        deferred: a reason when the artifact cannot be finished here (TensorRT without CUDA);
            the pipeline then records status ``deferred`` instead of running parity.
        notes: human-readable remarks that belong in the sidecar (e.g. why an artifact is static).
        details: backend-specific facts for the sidecar (delegation ratio, TRT profile, build command).
        embedded_metadata: whether ``job.essentials`` were written into the artifact.
        path: which conversion path made the artifact when it is not the shared one (a fallback):
            ``{"name": ..., "costs": [...]}`` - what the artifact gives up (static batch, a dtype cast).
    """

    artifact: Path
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    extra_files: list[Path] = dataclasses.field(default_factory=list)
    format: dict[str, Any] = dataclasses.field(default_factory=dict)
    dynamic_batch: bool = False
    deferred: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    embedded_metadata: bool = False
    path: dict[str, Any] | None = None


class Backend:
    """Base class of export backends. Subclass it, set the class attributes, implement ``convert``
    and ``load``; register it with ``enn_nb.engine.register_backend`` or the ``enn_nb.backends``
    entry-point group (value ``"package.module:ClassName"``).
    """

    #: registry name, e.g. ``"onnx"``
    name: ClassVar[str] = ""
    #: artifact suffix, e.g. ``".onnx"``; a directory artifact uses its own suffix or ``""``
    suffix: ClassVar[str] = ""
    #: one-line description shown by ``enn-nb backends``
    description: ClassVar[str] = ""
    #: the enn-nb extra that installs what this backend needs
    extra: ClassVar[str] = ""
    #: import names needed to convert
    requires: ClassVar[tuple[str, ...]] = ()
    #: import names needed to run the artifact (parity); defaults to ``requires``
    runtime_requires: ClassVar[tuple[str, ...] | None] = None
    #: what it consumes from the shared capture: one of :data:`SOURCES`
    consumes: ClassVar[str] = "exported_program"
    #: whether the artifact is a directory
    directory_artifact: ClassVar[bool] = False
    #: whether converting compiles with torch's inductor (the warm server then detects the CPU's ISA
    #: once for every worker: ``engine/inductor.py``)
    compiles_with_inductor: ClassVar[bool] = False
    #: documented default tolerances (atol, rtol) against the eager fp32 model
    default_tolerance: ClassVar[tuple[float, float]] = (1e-4, 1e-4)
    #: the options it takes, declared once (name, type, range, help): ``enn_nb.engine.options.Option``;
    #: ``export`` checks every option given against them before any work. None: not declared (a plugin
    #: from before declarations; only the names in ``default_options`` are then checked)
    options: ClassVar[tuple[Any, ...] | None] = None
    #: the declared options' defaults (``enn_nb.engine.options.defaults(options)``), overridable per export
    default_options: ClassVar[dict[str, Any]] = {}
    #: seconds an isolated conversion + verification may take before it is killed (option ``timeout_s``)
    default_timeout_s: ClassVar[float] = 1800.0
    #: the ``load`` option that sets the runtime's intra-op thread count (latency pins it), if it has one
    thread_option: ClassVar[str | None] = None
    #: relative conversion cost (1 = a quick lowering); balances backends over parallel child processes
    cost: ClassVar[float] = 1.0
    #: why converting takes long, for people choosing backends ("" for a conversion of seconds)
    slow: ClassVar[str] = ""
    #: the artifact is native code that runs when it is loaded: loading one needs ``trust=True``
    runs_native_code: ClassVar[bool] = False
    #: Its runtime raises on an input shape a static artifact was not built for, so parity may offer a
    #: static artifact other batch sizes (checked if accepted, recorded if refused). False where a wrong
    #: shape could crash the process instead (native code without shape checks).
    refuses_other_shapes: ClassVar[bool] = True
    #: the ``quantize`` modes it supports, each with the runtime's own quantizer that does it
    #: (``enn_nb.engine.quantize``); a mode not listed is refused before any work
    quantize_modes: ClassVar[dict[str, str]] = {}

    # -- availability --------------------------------------------------------------------------
    def missing_packages(self, *, runtime: bool = False) -> list[str]:
        names = (self.runtime_requires if runtime and self.runtime_requires is not None else self.requires)
        return [name for name in names if not is_installed(name)]

    def platform_reason(self) -> str | None:
        """Why this backend cannot convert on this platform even with its packages, or None."""
        return None

    def runtime_platform_reason(self) -> str | None:
        """Why the artifact cannot run on this platform (e.g. CoreML prediction needs macOS), or None."""
        return None

    def unavailable_reason(self) -> str | None:
        """None when ``convert`` can run here; else one line saying why and how to fix it."""
        missing = self.missing_packages()
        if missing:
            return f"`{missing[0]}` is not installed; install it with: {install_line(missing[0])}"
        return self.platform_reason()

    def deferred_reason(self) -> str | None:
        """Why ``convert`` here only prepares the artifact, finished elsewhere (TensorRT without CUDA), or None."""
        return None

    def runtime_unavailable_reason(self) -> str | None:
        """None when the artifact can be run here for parity; else why not."""
        missing = self.missing_packages(runtime=True)
        if missing:
            return f"runtime `{missing[0]}` is not installed; install it with: {install_line(missing[0])}"
        return self.runtime_platform_reason()

    def install_hint(self) -> str:
        return pip_line(extra=self.extra)

    def versions(self) -> dict[str, str]:
        """Versions of the libraries this backend involves (for the sidecar and the cache key)."""

        out: dict[str, str] = {}
        for name in (*self.requires, *(self.runtime_requires or ())):
            dist = PACKAGES.get(name, (name, ""))[0]
            found = dist_version(dist)
            if found:
                out[dist] = found
        return out

    def artifact_name(self, stem: str) -> str:
        return f"{stem}{self.suffix}"

    # -- work ----------------------------------------------------------------------------------
    def convert(self, job: ExportJob, out_path: Path, options: dict[str, Any]) -> Conversion:
        """Write the artifact at ``out_path`` (a temporary path the pipeline renames into place)."""
        raise NotImplementedError

    def quantize(self, job: ExportJob, out_path: Path, options: dict[str, Any], mode: str,
                 calibration: Sequence[Sequence[np.ndarray]]) -> Conversion:
        """Write the ``mode``-quantized artifact at ``out_path`` with the runtime's own quantizer.

        Only called for a mode listed in ``quantize_modes``. ``calibration`` holds input batches (numpy,
        in input order) for static ``int8``. The built-ins call their quantizer in
        :mod:`enn_nb.engine.quantize.quantizers`.
        """
        raise NotImplementedError(f"the `{self.name}` backend declares no quantizer")

    def load(self, artifact: Path, options: dict[str, Any]) -> Runner:
        """Return a callable running the artifact: list of numpy inputs -> list of numpy outputs."""
        raise NotImplementedError

    def read_metadata(self, artifact: Path) -> dict[str, str] | None:
        """The essentials embedded in the artifact, or None when the format has no slot."""
        return None

    def program_digest(self, artifact: Path) -> str | None:
        """:func:`enn_nb.engine.cache.program_digest` of the program the artifact holds, or None when the format
        does not keep the captured program (``verify`` compares it with the sidecar's ``program_sha256``)."""
        return None

    def complete(self, sidecar: dict[str, Any], base: Path, out_path: Path, options: dict[str, Any]) -> Conversion:
        """Finish a ``deferred`` conversion on a machine that can (e.g. build a TensorRT engine).

        ``sidecar`` is the deferred export's sidecar, ``base`` its folder (the files it lists are
        there); write the artifact at ``out_path`` (a temporary path). The engine then verifies
        against the vectors file and writes the sidecar, as for any conversion
        (:func:`enn_nb.engine.complete.complete`).

        Raises:
            PlatformUnavailableError: it still cannot be finished here (say where it can).
        """
        raise NotImplementedError(f"the `{self.name}` backend never defers a conversion")
