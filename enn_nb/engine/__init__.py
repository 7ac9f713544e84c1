"""Export engine: export-safe context, capture once, lower to many backends, parity, sidecars, cache.

The public entry points live on ``enn_nb`` itself: ``enn_nb.export(model, ["onnx", "pt2"],
out_dir="out")`` returns an :class:`ExportReport`, ``enn_nb.export_safe(model)`` is the context the
engine uses, ``enn_nb.backends()`` lists backends and ``enn_nb.verify(artifact)`` re-checks one.

Stages, in the order one ``export()`` call runs them (one module each)::

    settings  export()'s arguments -> ExportSettings (frozen; names, out_dir, tolerances... checked once)
      |
    inputs    model or checkpoint -> (model, spec, example inputs, source hash)
      |
    plan      backend names -> Plan per backend; unavailable ones and cache hits finish here
      |
    capture   one torch.export program / one ONNX file, inside export_safe, shared by the lanes
      |
    lanes     one lane per worker process (or in-process): convert + verify -> UnitResult (picklable)
      |
    finish    UnitResult -> files moved into out_dir, sidecar written, BackendResult
      |
    cache     finished artifacts stored for the next identical request

``complete`` (later, on a machine that can) takes a ``deferred`` result from its sidecar through
the backend's ``complete`` and then the same ``finish``. ``vocabulary`` declares the statuses and
stage names, ``tolerance`` the one tolerance parser, ``outcome`` the unit's result types.

This package is named ``engine`` (not ``export``) so that no module shares its name with the
``enn_nb.export`` function; for the same reason it does not re-export ``backends()``, whose name is
the ``enn_nb.engine.backends`` subpackage: import it from :mod:`enn_nb.engine.registry`.
"""

from __future__ import annotations

from enn_nb.engine.backends.base import Backend, Conversion, ExportJob, TensorInfo
from enn_nb.engine.parity import VerifyResult
from enn_nb.engine.verify_artifact import verify
from enn_nb.engine.pipeline import export
from enn_nb.engine.registry import register_backend
from enn_nb.engine.report import BackendResult, ExportReport
from enn_nb.engine.safe import Deviation, SafeState, export_safe
from enn_nb.engine.settings import ExportSettings
from enn_nb.engine.vocabulary import STAGES, STATUS_MEANING, STATUSES

__all__ = [
    "STAGES",
    "STATUSES",
    "STATUS_MEANING",
    "Backend",
    "BackendResult",
    "Conversion",
    "Deviation",
    "ExportJob",
    "ExportReport",
    "ExportSettings",
    "SafeState",
    "TensorInfo",
    "VerifyResult",
    "export",
    "export_safe",
    "register_backend",
    "verify",
]
