"""The engine's words, declared once: backend statuses and stage names (the sidecar schema is tested against them)."""

from __future__ import annotations

#: What each status of a backend's result means (shown by ``enn-nb backends --help`` and the docs).
STATUS_MEANING: dict[str, str] = {
    "ok": "artifact written; parity passed (or could not run here: see parity.status)",
    "mismatch": "artifact written, but its outputs differ from the eager model beyond tolerance",
    "degraded": "quantized artifact written, but its error against the float model is over the accuracy budget",
    "failed": "a stage raised; no new artifact (the sidecar names the stage and the error)",
    "crashed": "the isolated child process died (signal or exit code recorded); the caller survived",
    "timeout": "the isolated child ran past the backend's `timeout_s` and was killed (the stage it was in recorded)",
    "deferred": "the artifact cannot be finished on this machine (e.g. a TensorRT engine needs a GPU)",
    "unavailable": "a package the backend needs is not installed (the message has the install line)",
    "cancelled": "not attempted: the export was stopped before this backend",
}

#: Every status, in the order above; each is final (a backend with a status does no more work).
STATUSES: tuple[str, ...] = tuple(STATUS_MEANING)

#: Statuses that count as a failure of the export (``ExportReport.failed``).
FAILED_STATUSES: tuple[str, ...] = ("failed", "mismatch", "degraded", "crashed", "timeout", "unavailable")

#: The stages a sidecar's ``stage`` names (the one that failed), in the order an export runs them.
STAGE_MEANING: dict[str, str] = {
    "availability": "the backend's packages and platform were checked",
    "capture": "the one torch.export capture shared by every backend",
    "convert": "the backend wrote its artifact",
    "verify": "the artifact ran against the eager model's outputs (parity)",
}
STAGES: tuple[str, ...] = tuple(STAGE_MEANING)

#: The stages of one backend's progress events (``progress`` callback), ``done`` carrying its status.
PROGRESS_STAGES: tuple[str, ...] = ("convert", "verify", "done")
