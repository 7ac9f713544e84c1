"""ExportReport and BackendResult: what an export returns, as an HTML table, as text and as JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from enn_nb._format import human_size
from enn_nb.table import Cell, Table
from enn_nb.engine.outlog import LOG_SUFFIX, OutputLog
from enn_nb.engine.verification import Verification
from enn_nb.engine.verification import summary as summary_line
from enn_nb.engine.verification import verification as verification_of
from enn_nb.engine.vocabulary import FAILED_STATUSES, STATUS_COLORS, STATUSES


@dataclasses.dataclass
class BackendResult:
    """The outcome of one backend in one export.

    Attributes:
        backend: registry name (``onnx``), or ``backend:mode`` for a quantized artifact (``onnx:int8``).
        status: one of :data:`STATUSES`.
        cached: the artifact came from the export cache (nothing was converted).
        artifact: the artifact's path (None unless written).
        sidecar: the sidecar's path (None when the backend was cancelled).
        files: ``[{"path", "sha256", "size", "role"}]`` of every file of the artifact.
        parity: the sidecar's parity block (status, tolerance, per-batch cases, max errors).
        timings: seconds per stage (``capture`` shared by all, ``onnx`` shared by ONNX consumers,
            ``convert``, ``verify``, ``sidecar``, ``total``).
        stage: the stage that failed, when one did.
        error: the error message, when the status is not ok.
        error_type: the exception's class name.
        fast_path: the fast path that made the export fail (``error_type`` FastPathExportError).
        exit_code / signal: how the isolated child ended, when it crashed.
        deferred: why the artifact could not be finished here.
        notes / details / format / dynamic_batch: from the backend's conversion.
        static_dims: dims the signature declares dynamic that the artifact keeps static (the model's code
            specialises them), each with the constraint torch reported.
        log: the sidecar's ``log``: counts of the warnings and output lines captured while this
            backend converted and verified (the export's shared stages included), and the log file.
        quantization: for a quantized artifact (``backend`` is ``onnx:int8``): the mode, what the artifact
            holds (read back), the calibration/evaluation data and the accuracy against the float model.
    """

    backend: str
    status: str
    cached: bool = False
    artifact: Path | None = None
    sidecar: Path | None = None
    files: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    parity: dict[str, Any] = dataclasses.field(default_factory=dict)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    stage: str | None = None
    error: str | None = None
    error_type: str | None = None
    fast_path: str | None = None
    exit_code: int | None = None
    signal: str | None = None
    deferred: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    format: dict[str, Any] = dataclasses.field(default_factory=dict)
    dynamic_batch: bool | None = None
    inputs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    outputs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    log: dict[str, Any] = dataclasses.field(default_factory=dict)
    static_dims: dict[str, str] = dataclasses.field(default_factory=dict)
    quantization: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"`BackendResult.status` is {self.status!r}; allowed values: {', '.join(STATUSES)}.")

    @classmethod
    def from_sidecar(cls, data: dict[str, Any], out: Path, side: Path, *, cached: bool) -> BackendResult:
        """The result a sidecar describes (``cached`` when it came from the export cache)."""
        error = data.get("error") or {}
        return cls(
            backend=data["backend"],
            status=data["status"],
            cached=cached,
            artifact=(out / data["artifact"]) if data.get("artifact") else None,
            sidecar=side,
            files=list(data.get("files") or []),
            parity=dict(data.get("parity") or {}),
            timings=dict(data.get("timings") or {}),
            stage=data.get("stage"),
            error=error.get("message"),
            error_type=error.get("type"),
            fast_path=error.get("fast_path"),
            exit_code=error.get("exit_code"),
            signal=error.get("signal"),
            deferred=data.get("deferred"),
            notes=list(data.get("notes") or []),
            details=dict(data.get("details") or {}),
            format=dict(data.get("format") or {}),
            dynamic_batch=data.get("dynamic_batch"),
            inputs=list(data.get("inputs") or []),
            outputs=list(data.get("outputs") or []),
            log=dict(data.get("log") or {}),
            static_dims=dict(data.get("static_dims") or {}),
            quantization=data.get("quantization"),
        )

    @property
    def quantize(self) -> str | None:
        """The quantize mode of this artifact (``backend`` is then ``onnx:int8``), None for a float one."""
        return (self.quantization or {}).get("mode")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def size_bytes(self) -> int:
        return sum(int(f.get("size", 0)) for f in self.files)

    @property
    def max_abs_err(self) -> float | None:
        return self.parity.get("max_abs_err")

    @property
    def max_rel_err(self) -> float | None:
        return self.parity.get("max_rel_err")

    @property
    def parity_status(self) -> str:
        return str(self.parity.get("status", "not_run"))

    @property
    def seconds(self) -> float:
        return float(self.timings.get("total", 0.0))

    @property
    def verification(self) -> Verification:
        """Whether the artifact's outputs were checked: verified, not verified (why), deferred or failed."""
        return verification_of(self)

    @property
    def verified(self) -> bool:
        return self.verification.verified

    @property
    def note(self) -> str:
        """What a table's note cell says: the error or deferral, why an ok artifact is not verified, and
        every declared dynamic dim the artifact keeps static."""
        if self.status != "ok":
            return self.error or self.deferred or ""
        return "; ".join(p for p in (self.verification.reason, static_note(self.static_dims)) if p)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["artifact"] = str(self.artifact) if self.artifact else None
        out["sidecar"] = str(self.sidecar) if self.sidecar else None
        out["size_bytes"] = self.size_bytes
        check = self.verification
        out["verification"] = {"kind": check.kind, "reason": check.reason}
        return out

    def summary(self) -> str:
        """One line: status, artifact, size, max error, time, and the reason when not ok."""
        check = self.verification
        shown = f", {check.label}" if self.status == "ok" else ""
        bits = [f"{self.backend}: {self.status}{shown}{' (cached)' if self.cached else ''}"]
        if self.artifact:
            bits.append(f"{Path(self.artifact).name} {human_size(self.size_bytes)}")
        if self.max_abs_err is not None:
            bits.append(f"max|err| {self.max_abs_err:.2e}")
        bits.append(f"{self.seconds:.2f}s")
        line = ", ".join(bits)
        why = self.error or self.deferred or check.reason
        if why and not check.verified:
            line += f" - {why}"
        if self.static_dims and self.artifact:
            line += f" - {static_note(self.static_dims)}"
        return line


@dataclasses.dataclass
class ExportReport:
    """Everything one ``enn_nb.export`` call produced.

    Attributes:
        results: one :class:`BackendResult` per requested backend, in request order.
        out_dir: where artifacts and sidecars were written.
        vectors: the ``<stem>.vectors.safetensors`` parity vectors file (None if not written).
        capture_s: seconds of the one ``torch.export`` capture (0 when every backend was cached).
        onnx_s: seconds of the one shared ONNX export (0 when no backend consumed ONNX).
        total_s: wall time of the whole export.
        deviations: the export-safe switches in effect (also in every sidecar).
        source: where the model came from (``{"kind": "model"|"checkpoint", ...}``).
        log: every warning and output line captured during the export instead of being printed
            (each backend's share is in its sidecar and ``<artifact>.enn.log``).
        quantization: when quantized artifacts were asked: where the calibration and evaluation data came
            from (``drawn_inputs`` True: synthetic, the accuracy predicts nothing) and the budget.
    """

    results: list[BackendResult]
    out_dir: Path
    vectors: Path | None = None
    capture_s: float = 0.0
    onnx_s: float = 0.0
    total_s: float = 0.0
    deviations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    source: dict[str, Any] = dataclasses.field(default_factory=dict)
    log: OutputLog = dataclasses.field(default_factory=OutputLog)
    #: the URL the export was uploaded to (``out_dir`` is then the local staging folder) and the URLs written
    uploaded_to: str | None = None
    uploaded: list[str] = dataclasses.field(default_factory=list)
    quantization: dict[str, Any] | None = None  # the data quantized rows were calibrated and evaluated on

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, key: str | int) -> BackendResult:
        if isinstance(key, int):
            return self.results[key]
        for result in self.results:
            if result.backend == key:
                return result
        raise KeyError(f"No result for backend `{key}`; this report has: {', '.join(self.backends)}.")

    @property
    def backends(self) -> list[str]:
        return [r.backend for r in self.results]

    @property
    def ok(self) -> bool:
        """True when every backend is ``ok`` (deferred counts as not failed: see :attr:`failed`)."""
        return all(r.status == "ok" for r in self.results)

    @property
    def failed(self) -> list[BackendResult]:
        """Results that count as a failure of the export: failed, mismatch, degraded, crashed, unavailable."""
        return [r for r in self.results if r.status in FAILED_STATUSES]

    @property
    def static_dims(self) -> dict[str, str]:
        """Declared dynamic dims an artifact of this export keeps static, with why (see BackendResult)."""
        out: dict[str, str] = {}
        for r in self.results:
            if r.artifact:
                out.update(r.static_dims)
        return out

    @property
    def summary(self) -> str:
        """``7 verified, 1 converted but not verified (CoreML prediction requires macOS), 1 deferred``; then
        ``; `time` static although declared dynamic (torch.export: ...)`` when the model specialised a dim."""
        line = summary_line(self.results)
        static = self.static_dims
        return f"{line}; {static_note(static)}" if static else line

    @property
    def log_line(self) -> str:
        """``captured, not printed: 2 warnings, 14 output lines (each backend's <artifact>.enn.log ...)``."""
        return (f"captured, not printed: {self.log.counts()} (each backend's <artifact>{LOG_SUFFIX}; "
                "`enn-nb export --verbose` prints them)")

    @property
    def artifacts(self) -> dict[str, Path]:
        return {r.backend: r.artifact for r in self.results if r.artifact is not None}

    def quantization_table(self, latency: dict[str, float] | None = None) -> Table:
        """One row per quantized artifact (backend x mode): size and latency against the float artifact of the
        same backend, what it holds (read back) and its accuracy change (``engine/quantize/table.py``)."""
        from enn_nb.engine.quantize.table import table

        return table(self.results, latency)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "uploaded_to": self.uploaded_to,
            "uploaded": list(self.uploaded),
            "vectors": str(self.vectors) if self.vectors else None,
            "capture_s": self.capture_s,
            "onnx_s": self.onnx_s,
            "total_s": self.total_s,
            "ok": self.ok,
            "summary": self.summary,
            "log": self.log.to_dict(),
            "deviations": self.deviations,
            "source": self.source,
            "results": [r.to_dict() for r in self.results],
            "quantization": self.quantization,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)

    _HEADER = ("backend", "status", "verified", "artifact", "size", "max abs err", "convert s", "verify s", "total s", "note")

    def table(self) -> Table:
        """The report as a :class:`~enn_nb.table.Table` (one row per backend, timings in the footer)."""
        rows = []
        for r in self.results:
            color = STATUS_COLORS.get(r.status, "#555")
            rows.append(
                [
                    Cell(r.backend, code=True),
                    Cell(r.status + (" (cached)" if r.cached else ""), style=f"color:{color};font-weight:bold"),
                    r.verification.label,
                    Path(r.artifact).name if r.artifact else "-",
                    human_size(r.size_bytes) if r.files else "-",
                    f"{r.max_abs_err:.2e}" if r.max_abs_err is not None else "-",
                    f"{r.timings.get('convert', 0.0):.2f}",
                    f"{r.timings.get('verify', 0.0):.2f}",
                    f"{r.seconds:.2f}",
                    r.note,
                ]
            )
        footer = (
            f"capture {self.capture_s:.2f}s (torch.export, shared)"
            + (f", onnx {self.onnx_s:.2f}s (shared)" if self.onnx_s else "")
            + f", total {self.total_s:.2f}s -> {self.out_dir}"
            + (f" (staged; {len(self.uploaded)} files uploaded to {self.uploaded_to})" if self.uploaded_to else "")
            + f"; {self.log_line}"
        )
        # the summary leads: what was verified, what was only converted (and why), what is deferred
        return Table(self._HEADER, rows, title=self.summary, footer=footer, css_class="enn-export-report",
                     max_width=100)

    def __str__(self) -> str:
        quantized = any(r.quantize for r in self.results)
        return str(self.table()) + (f"\n\n{self.quantization_table()}" if quantized else "")

    def __repr__(self) -> str:
        statuses = ", ".join(f"{r.backend}={r.status}" for r in self.results)
        return f"ExportReport({statuses}, out_dir={str(self.out_dir)!r})"

    def _repr_html_(self) -> str:
        quantized = any(r.quantize for r in self.results)
        return self.table()._repr_html_() + (self.quantization_table()._repr_html_() if quantized else "")


def static_note(static_dims: dict[str, str]) -> str:
    """``"`time` static although declared dynamic (torch.export: ... a constant (20))"`` ('' for none)."""
    if not static_dims:
        return ""
    reasons = sorted(set(static_dims.values()))
    names = ", ".join(f"`{name}`" for name in static_dims)
    why = reasons[0] if len(reasons) == 1 else "; ".join(f"{n}: {w}" for n, w in static_dims.items())
    return f"{names} static although declared dynamic ({why})"
