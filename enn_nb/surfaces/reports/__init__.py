"""Papermill report templates: run them (``report``), in batches (``run_batch``), and read their verdicts."""

from __future__ import annotations

from enn_nb.surfaces.reports.batch import BatchResult, run_batch
from enn_nb.surfaces.reports.catalog import declared_parameters, resolve_template, templates
from enn_nb.surfaces.reports.html import to_html
from enn_nb.surfaces.reports.runner import ReportResult, report
from enn_nb.surfaces.reports.verdict import Verdict

__all__ = [
    "BatchResult",
    "ReportResult",
    "Verdict",
    "declared_parameters",
    "report",
    "resolve_template",
    "run_batch",
    "templates",
    "to_html",
]
