"""Every error enn_nb raises, in one tree.

::

    EnnError
    ├── SpecError (ValueError)              a ModelSpec / example input that does not fit
    │   ├── InputMismatchError              wrong in_dim, shape or dtype at a model's boundary
    │   └── CalibrationError                calibration / eval data that is empty, non-finite or unreadable
    ├── UnknownNameError (KeyError)         a registry lookup: builder, backend, template, format
    ├── MissingDependencyError (ImportError) an optional package is not installed (names the extra)
    ├── BrokenDependencyError (ImportError) an optional package is installed but fails to import
    ├── CheckpointError
    │   ├── NotACheckpointError             the path holds no enn_nb / ENN checkpoint
    │   ├── CorruptCheckpointError          truncated file, bad hash, unreadable header
    │   ├── IncompleteCheckpointError       a DCP directory without its commit marker
    │   ├── UnsafeCheckpointError           a pickle that would run code
    │   ├── CheckpointWriteError (OSError)  disk full, read-only or too large: the old checkpoint is intact
    │   ├── SchemaVersionError              a manifest newer than this enn_nb knows
    │   ├── StateDictMismatchError          missing / unexpected / shape-mismatched keys (all listed)
    │   └── RestoreCheckError               the restored model does not compute what the saved one did
    ├── ExportError
    │   ├── FastPathExportError             a fast path left on made capture/conversion fail
    │   ├── BackendError                    a backend's conversion failed (stage, cause)
    │   ├── ParityError                     artifact output differs from eager beyond tolerance
    │   ├── StaticDimError                  strict=True and a declared dynamic dim ended up static (torch's reason)
    │   ├── OptionError (ValueError)        a backend option that is unknown, of the wrong type or out of range
    │   │   └── QuantizeModeError           a `quantize` mode the backend does not support (lists what it does)
    │   ├── QuantizationError               the quantizer failed, or its artifact is not what was asked (float)
    │   ├── AccuracyBudgetError             a quantized artifact is `degraded`: over its accuracy budget
    │   ├── UnsafeArtifactError             an artifact whose loading would run untrusted code
    │   ├── NotAnArtifactError (ValueError) `verify` on a path that is missing or a checkpoint, not an artifact
    │   └── OutputDirError (OSError)        the output directory cannot be written
    ├── OverwriteRefusedError (FileExistsError) the path holds what enn_nb did not write (a folder, a FIFO)
    ├── PlatformUnavailableError            the runtime exists but not on this platform (CoreML predict, TensorRT)
    ├── SideEffectError (RuntimeError)      a save/export run by importing a module (a factory, an export worker)
    ├── FlagError (ValueError)              `enn-nb` flags that do not go together, or a required one missing
    ├── ReportError
    │   ├── ReportInputError (FileNotFoundError) a file the report reads does not exist
    │   └── ReportCellError                 a cell of a report failed (cell index, ename, evalue)
    └── ClusterError                        a sweep's Dask cluster cannot be used (unreachable, no worker, unshared folder)

Errors a user can meet name the object in backticks, the bad value and the fix. Structured fields
(``missing_keys``, ``max_abs_err``, ``atol``...) let the sidecar and the notebook UI show them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


#: Longest message an enn_nb error carries: names from a forged file must not make a message of megabytes.
MAX_MESSAGE_CHARS = 10_000


class EnnError(Exception):
    """Base of every enn_nb error."""

    def __init__(self, *args: Any) -> None:
        if args and isinstance(args[0], str) and len(args[0]) > MAX_MESSAGE_CHARS:
            text = args[0]
            args = (f"{text[:MAX_MESSAGE_CHARS - 80]} ... [{len(text) - MAX_MESSAGE_CHARS + 80} more characters cut]",
                    *args[1:])
        super().__init__(*args)


class SpecError(EnnError, ValueError):
    """A ModelSpec, config or example input that does not fit the model."""


class InputMismatchError(SpecError):
    """An input whose shape or dtype differs from the model's declared one."""

    def __init__(self, message: str, *, expected: Any = None, received: Any = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.received = received


class CalibrationError(SpecError):
    """Calibration or evaluation data that cannot be used: empty, NaN/inf, an unreadable file, a bad type."""


class UnknownNameError(EnnError, KeyError):
    """A name not found in one of enn_nb's registries."""

    def __init__(self, message: str, *, name: str = "", known: list[str] | None = None) -> None:
        super().__init__(message)
        self.name = name
        self.known = list(known or [])

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class MissingDependencyError(EnnError, ImportError):
    """An optional package is not installed; the message names the extra and the install line."""

    def __init__(self, message: str, *, package: str = "", extra: str = "") -> None:
        super().__init__(message)
        self.package = package
        self.extra = extra

    @property
    def install_line(self) -> str:
        return pip_line(extra=self.extra, dist=self.package)


class BrokenDependencyError(EnnError, ImportError):
    """An optional package is installed but importing it failed (the cause is chained)."""

    def __init__(self, message: str, *, package: str = "") -> None:
        super().__init__(message)
        self.package = package


class CheckpointError(EnnError):
    """A checkpoint could not be written or read."""


class NotACheckpointError(CheckpointError, ValueError):
    """The path holds nothing enn_nb recognises as a checkpoint."""


class CorruptCheckpointError(CheckpointError):
    """The checkpoint is damaged: truncated, bytes flipped, or a hash that does not match."""

    def __init__(self, message: str, *, tensor: str | None = None, file: str | None = None) -> None:
        super().__init__(message)
        self.tensor = tensor
        self.file = file


class IncompleteCheckpointError(CheckpointError):
    """A DCP directory without its commit marker (the save did not finish)."""


class UnsafeCheckpointError(CheckpointError):
    """The file holds a pickle that would import or call arbitrary code; nothing was executed."""


class CheckpointWriteError(CheckpointError, OSError):
    """Writing a checkpoint failed (disk full, read-only, file too large); what was at the path is intact."""


class SchemaVersionError(CheckpointError):
    """The manifest's schema is newer than this enn_nb understands."""

    def __init__(self, message: str, *, found: str = "", supported: str = "") -> None:
        super().__init__(message)
        self.found = found
        self.supported = supported


class StateDictMismatchError(CheckpointError):
    """Keys missing, unexpected or of another shape; all of them are listed, not the first only."""

    def __init__(
        self,
        message: str,
        *,
        missing_keys: list[str] | None = None,
        unexpected_keys: list[str] | None = None,
        shape_mismatches: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] | None = None,
    ) -> None:
        super().__init__(message)
        self.missing_keys = list(missing_keys or [])
        self.unexpected_keys = list(unexpected_keys or [])
        self.shape_mismatches = dict(shape_mismatches or {})


class RestoreCheckError(CheckpointError):
    """The restored model's outputs on the checkpoint's recorded inputs differ from the recorded outputs."""

    def __init__(self, message: str, *, max_abs_err: float | None = None, atol: float | None = None,
                 rtol: float | None = None) -> None:
        super().__init__(message)
        self.max_abs_err = max_abs_err
        self.atol = atol
        self.rtol = rtol


class ExportError(EnnError):
    """An export could not be produced."""


class FastPathExportError(ExportError):
    """Capture or conversion failed because a fast path was left on; use ``enn_nb.export_safe``."""

    def __init__(self, message: str, *, fast_path: str = "") -> None:
        super().__init__(message)
        self.fast_path = fast_path


class BackendError(ExportError):
    """A backend failed at a named stage (``capture``, ``convert``, ``verify``...)."""

    def __init__(self, message: str, *, backend: str = "", stage: str = "") -> None:
        super().__init__(message)
        self.backend = backend
        self.stage = stage


class ParityError(ExportError):
    """The artifact's outputs differ from the eager model's beyond tolerance."""

    def __init__(
        self,
        message: str,
        *,
        backend: str = "",
        batch_size: int | None = None,
        max_abs_err: float = float("nan"),
        max_rel_err: float = float("nan"),
        atol: float = float("nan"),
        rtol: float = float("nan"),
    ) -> None:
        super().__init__(message)
        self.backend = backend
        self.batch_size = batch_size
        self.max_abs_err = max_abs_err
        self.max_rel_err = max_rel_err
        self.atol = atol
        self.rtol = rtol


class StaticDimError(ExportError):
    """``strict=True`` and the model specialises a dim its signature declares dynamic: the artifacts would be
    static in it. ``dims`` maps each such dim to the constraint torch reported."""

    def __init__(self, message: str, *, dims: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.dims = dict(dims or {})


class OptionError(ExportError, ValueError):
    """A backend option that the backend does not declare, or a value outside its declared type or range."""

    def __init__(self, message: str, *, backend: str = "", option: str = "", value: Any = None,
                 known: list[str] | None = None) -> None:
        super().__init__(message)
        self.backend = backend
        self.option = option
        self.value = value
        self.known = list(known or [])
class QuantizeModeError(OptionError):
    """A ``quantize`` mode that a backend does not support; ``known`` lists the modes it does."""


class QuantizationError(ExportError):
    """A quantizer failed, or the artifact it wrote is not what was asked (e.g. still all float)."""


class AccuracyBudgetError(ExportError):
    """A quantized artifact's error against the float model is over its ``accuracy_budget`` (status ``degraded``)."""

    def __init__(self, message: str, *, backend: str = "", figures: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.backend = backend
        self.figures = dict(figures or {})


class UnsafeArtifactError(ExportError):
    """Loading the artifact would run code: pickles in a .pt2, or an AOTI package without ``trust=True``."""


class NotAnArtifactError(ExportError, ValueError):
    """``verify`` was given a path that does not exist, or a checkpoint rather than an exported artifact."""


class OutputDirError(ExportError, OSError):
    """The output directory cannot be created or written."""


class OverwriteRefusedError(EnnError, FileExistsError):
    """enn_nb refused to replace something it did not write: a folder by a file, a file by a folder, a device."""


class PlatformUnavailableError(EnnError):
    """The runtime is installed or known, but cannot run on this platform (say why)."""


class SideEffectError(EnnError, RuntimeError):
    """A ``save``/``export`` refused because importing a module ran it: a ``--model`` factory's module, or a
    module an export worker imported. ``call`` names the refused call, ``origin`` the user's line."""

    def __init__(self, message: str, *, call: str = "", origin: str = "") -> None:
        super().__init__(message)
        self.call = call
        self.origin = origin


class FlagError(EnnError, ValueError):
    """``enn-nb`` flags that do not go together, or a required one missing (exit code 2, like argparse's own)."""


class ReportError(EnnError):
    """A report could not be produced."""


class ReportInputError(ReportError, FileNotFoundError):
    """A file a report reads (its checkpoint, calibration data) does not exist: refused before a kernel starts."""


class ReportCellError(ReportError):
    """A cell of an executed report raised; the partial notebook is kept at ``output_path``."""

    def __init__(
        self,
        message: str,
        *,
        cell_index: int | None = None,
        ename: str = "",
        evalue: str = "",
        output_path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.cell_index = cell_index
        self.ename = ename
        self.evalue = evalue
        self.output_path = output_path


class ClusterError(EnnError):
    """A sweep cannot run on the cluster it was given; raised before any task is submitted."""


__all__ = [name for name in dir() if name.endswith("Error")]


#: ``%pip`` in a notebook (it installs into the kernel's environment); the ``enn-nb`` command prints ``pip``.
_pip = "%pip"


@contextlib.contextmanager
def terminal_pip() -> Iterator[None]:
    """Install lines say ``pip install`` (not the notebook's ``%pip``) while the body runs: the CLI's."""
    global _pip
    before, _pip = _pip, "pip"
    try:
        yield
    finally:
        _pip = before


def pip_line(*, extra: str = "", dist: str = "") -> str:
    """The one format of an install line: the enn-nb extra when there is one, else the distribution."""
    if extra:
        return f"{_pip} install 'enn-nb[{extra}]'"
    return f"{_pip} install {dist}" if dist else ""
