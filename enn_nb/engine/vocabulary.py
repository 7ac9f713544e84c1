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

#: The colour each status is shown in, on every surface (report tables, verdict chips, the wizard's results).
STATUS_COLORS: dict[str, str] = {
    "ok": "#188038",
    "mismatch": "#c5221f",
    "degraded": "#bf8700",
    "failed": "#c5221f",
    "crashed": "#8a1111",
    "timeout": "#8a1111",
    "deferred": "#b06000",
    "unavailable": "#777",
    "cancelled": "#777",
}
#: Converted but not verified: shown like ``deferred`` (not a pass, not a failure).
UNVERIFIED_COLOR = "#b06000"

#: Every status, in the order above; each is final (a backend with a status does no more work).
STATUSES: tuple[str, ...] = tuple(STATUS_MEANING)

#: Statuses that mean a backend did not give a usable, matching artifact, in the order summaries list
#: them: what makes ``enn-nb export`` exit 1 and a report's verdict fail (see :func:`fails`).
NOT_OK_STATUSES: tuple[str, ...] = ("mismatch", "degraded", "failed", "crashed", "timeout", "unavailable", "cancelled")

#: Statuses that count as a failure of the export itself (``ExportReport.failed``): the not-ok ones but
#: ``cancelled``, which the caller asked for by stopping.
FAILED_STATUSES: tuple[str, ...] = tuple(s for s in NOT_OK_STATUSES if s != "cancelled")


def fails(status: str, *, named: bool, allow_degraded: bool = False) -> bool:
    """Whether a backend's ``status`` fails the request that asked for it.

    Every not-ok status does, except ``unavailable`` for a backend that was not asked for by name
    (``backends="all"``: every registered backend, those that cannot convert here listed, not failing),
    and ``degraded`` (a quantized artifact over its accuracy budget) when the caller allows it.
    """
    if status == "degraded" and allow_degraded:
        return False
    return status in NOT_OK_STATUSES and (status != "unavailable" or named)

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
