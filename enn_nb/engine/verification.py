"""What one backend's result proves — verified, converted but not verified (why), deferred, failed — worded once.

The status ``ok`` says an artifact was written; it does not say that its outputs were checked (CoreML
cannot predict on Linux, ``verify=False`` skips parity). Every summary line, verdict, badge, CLI exit
message and wizard row takes its words from here, so none of them overclaims.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from enn_nb.engine.vocabulary import NOT_OK_STATUSES

VERIFIED = "verified"
UNVERIFIED = "unverified"  # converted (status ok), outputs not checked; ``reason`` says why
DEFERRED = "deferred"

#: Statuses that mean the backend did not give a usable, matching artifact, in the order summaries list them.
NOT_OK = NOT_OK_STATUSES


@dataclasses.dataclass(frozen=True)
class Verification:
    """The proof behind one result.

    Attributes:
        kind: ``verified``, ``unverified``, ``deferred`` or the result's own status when it is not ok.
        reason: why it is not verified ('' when it is).
    """

    kind: str
    reason: str = ""

    @property
    def verified(self) -> bool:
        return self.kind == VERIFIED

    @property
    def label(self) -> str:
        """A short cell text: ``verified``, ``not verified``, ``deferred``, ``mismatch``..."""
        return "not verified" if self.kind == UNVERIFIED else self.kind

    def describe(self) -> str:
        """The label with its reason: ``not verified (CoreML prediction requires macOS)``."""
        return f"{self.label} ({self.reason})" if self.reason and self.kind != VERIFIED else self.label


def verification(result: Any) -> Verification:
    """The :class:`Verification` of a ``BackendResult`` (or any object with ``status``, ``parity``...)."""
    status = str(result.status)
    parity = dict(getattr(result, "parity", None) or {})
    accuracy = (getattr(result, "quantization", None) or {}).get("accuracy")
    if status == "ok" and accuracy is not None:  # a quantized artifact: checked against its accuracy budget
        if accuracy.get("status") == "within budget":
            return Verification(VERIFIED)
        return Verification(UNVERIFIED, f"accuracy not measured: {accuracy.get('reason') or 'not run'}")
    if status == "ok":
        if parity.get("status") == "passed":
            return Verification(VERIFIED)
        return Verification(UNVERIFIED, _why_unverified(parity))
    if status == "deferred":
        return Verification(DEFERRED, str(getattr(result, "deferred", None) or parity.get("reason") or ""))
    return Verification(status, str(getattr(result, "error", None) or ""))


def _why_unverified(parity: dict[str, Any]) -> str:
    reason = str(parity.get("reason") or "")
    if reason == "verify=False":
        return "parity not run: verify=False"
    return reason or f"parity {parity.get('status', 'not run')}"


def summary(results: Iterable[Any]) -> str:
    """One line: ``7 verified, 1 converted but not verified (CoreML prediction requires macOS), 1 deferred``.

    Reasons of unverified results are given once each; with several backends each is named.
    """
    results = list(results)
    checks = [(r.backend, verification(r)) for r in results]
    # the verified count always leads, also at 0: "0 verified" is the news when nothing was checked
    parts = [f"{sum(1 for _, v in checks if v.kind == VERIFIED)} verified"]
    unverified = [(name, v) for name, v in checks if v.kind == UNVERIFIED]
    if unverified:
        reasons = sorted({v.reason for _, v in unverified})
        why = reasons[0] if len(reasons) == 1 else "; ".join(f"{name}: {v.reason}" for name, v in unverified)
        parts.append(f"{len(unverified)} converted but not verified ({why})")
    deferred = sum(1 for _, v in checks if v.kind == DEFERRED)
    if deferred:
        parts.append(f"{deferred} deferred")
    for status in NOT_OK:
        count = sum(1 for _, v in checks if v.kind == status)
        if count:
            parts.append(f"{count} {status}")
    return ", ".join(parts)
