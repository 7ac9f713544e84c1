"""Sweeps over many checkpoints (reports, exports), in this process or on a Dask cluster (``cluster=``)."""

from __future__ import annotations

from enn_nb.surfaces.sweep.cluster import local_cluster
from enn_nb.surfaces.sweep.exports import ExportSweep, SweepExport, export_many

__all__ = ["ExportSweep", "SweepExport", "export_many", "local_cluster"]
