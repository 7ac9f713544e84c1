"""Export engine: export-safe context, capture once, lower to many backends, parity, sidecars, cache.

``enn_nb.export(model, ["onnx", "pt2"], out_dir="out")`` returns an :class:`ExportReport`;
``enn_nb.export_safe(model)`` is the context the engine uses; ``enn_nb.backends()`` lists backends.
"""

from __future__ import annotations

import sys
import types
from typing import Any

# Import the backends subpackage first: importing a submodule binds its name on this package, and
# the `backends()` function below must be what `enn_nb.export.backends` refers to afterwards.
import enn_nb.export.backends.base  # noqa: F401  (binds the subpackage before the function shadows it)
from enn_nb.export.backends.base import STATUSES, Backend, Conversion, ExportJob, TensorInfo
from enn_nb.export.parity import VerifyResult, verify
from enn_nb.export.pipeline import export
from enn_nb.export.registry import backends, register_backend
from enn_nb.export.report import STATUS_MEANING, BackendResult, ExportReport
from enn_nb.export.safe import Deviation, SafeState, export_safe

__all__ = [
    "STATUSES",
    "STATUS_MEANING",
    "Backend",
    "BackendResult",
    "Conversion",
    "Deviation",
    "ExportJob",
    "ExportReport",
    "SafeState",
    "TensorInfo",
    "VerifyResult",
    "backends",
    "export",
    "export_safe",
    "register_backend",
    "verify",
]


class _CallableModule(types.ModuleType):
    """Makes ``enn_nb.export(...)`` work also when ``enn_nb.export`` is this package, not the function.

    Importing ``enn_nb.export`` (or any of its submodules) before touching ``enn_nb.export`` binds the
    package on ``enn_nb`` under the same name as the function; calling it then runs :func:`export`.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> ExportReport:
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
