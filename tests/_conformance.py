"""The one conformance check every export backend passes (export -> sidecar valid -> parity -> metadata round-trip).

Usage in a backend's tests::

    from _conformance import assert_backend_conforms

    report = enn_nb.export(model, ["mybackend"], out_dir=tmp_path)
    sidecar = assert_backend_conforms(report, "mybackend")

Checks, for a result whose status is ``ok`` (``deferred``: sidecar, files and reason only):

- the sidecar ``<artifact>.enn.json`` exists and validates against ``enn_nb/schemas/export.schema.json``;
  its backend and status match the result;
- every file it lists exists with the recorded size and sha256; the artifact is listed;
- inputs and outputs have names, shapes and dtypes;
- where the runtime exists here: parity passed in every case, at >= 2 cases, at >= 2 distinct batch
  sizes when the artifact's batch is dynamic, each case within the recorded tolerance; and
  ``enn_nb.engine.verify(artifact)`` re-runs it from the vectors file and passes;
- where it does not: parity is ``skipped`` with a reason;
- where the format has a metadata slot (``embedded_metadata``): ``backend.read_metadata(artifact)``
  returns every embedded essential unchanged.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pytest

from enn_nb.engine.trust import NATIVE_BACKENDS
from enn_nb.errors import MissingDependencyError, UnsafeArtifactError
from enn_nb.engine import sidecar as sc
from enn_nb.engine.parity import verify
from enn_nb.engine.registry import get_backend
from enn_nb.engine.report import BackendResult, ExportReport


def assert_backend_conforms(report_or_result: ExportReport | BackendResult, backend_name: str) -> dict[str, Any]:
    """Assert the backend's export result conforms; return its sidecar (a dict) for more checks."""
    result = report_or_result[backend_name] if isinstance(report_or_result, ExportReport) else report_or_result
    assert result.backend == backend_name, f"result is for `{result.backend}`, not `{backend_name}`"
    assert result.status in ("ok", "deferred"), (
        f"`{backend_name}` status is `{result.status}` at stage `{result.stage}`: {result.error}"
    )
    assert result.sidecar is not None and Path(result.sidecar).is_file(), f"no sidecar for `{backend_name}`"
    side = Path(result.sidecar)
    data = sc.read(side)  # validates against the JSON Schema
    assert data["schema"] == sc.SCHEMA
    assert data["backend"] == backend_name
    assert data["status"] == result.status
    assert data["stage"] is None and data["error"] is None, f"ok sidecar carries an error: {data['error']}"
    for key in ("versions", "host", "timings", "options", "source", "deviations"):
        assert key in data
    assert data["versions"].get("enn_nb") and data["host"].get("python")

    # files
    base = side.parent
    assert sc.check_files(data, base) == [], sc.check_files(data, base)
    assert data["files"], "the sidecar hashes no file"
    for entry in data["files"]:
        assert len(entry["sha256"]) == 64 and entry["size"] >= 0
    assert result.size_bytes == sum(f["size"] for f in data["files"])
    if result.status == "deferred":
        # the artifact itself may not exist here (a TensorRT engine needs a GPU); what it is built from is hashed
        assert data["deferred"], "a deferred result must say why"
        assert data["parity"]["status"] in ("not_run", "skipped")
        return data
    assert data["artifact"], "the sidecar names no artifact"
    artifact = base / data["artifact"]
    assert artifact.exists(), f"artifact `{artifact}` is missing"
    roles = {f["role"] for f in data["files"]}
    assert "artifact" in roles, f"the artifact is not among the hashed files: {data['files']}"

    # I/O description
    assert data["inputs"] and data["outputs"], "inputs/outputs are not described"
    for tensor in [*data["inputs"], *data["outputs"]]:
        assert tensor["name"] and tensor["dtype"] and isinstance(tensor["shape"], list)

    backend = get_backend(backend_name)
    parity = data["parity"]
    runtime_reason = backend.runtime_unavailable_reason()
    if runtime_reason is None:
        assert parity["status"] == "passed", f"parity {parity['status']}: {parity}"
        cases = parity["cases"]
        assert len(cases) >= 2, f"parity ran {len(cases)} case(s); at least 2 are required"
        if data["dynamic_batch"]:
            sizes = {c["batch_size"] for c in cases}
            assert len(sizes) >= 2, f"dynamic artifact checked at batch sizes {sizes} only"
        assert parity["tolerance"]["atol"] >= 0 and parity["tolerance"]["rtol"] >= 0
        for case in cases:
            assert case["passed"], case
            assert math.isfinite(case["max_abs_err"]) and case["max_abs_err"] < 1e300, case
        assert parity["vectors"] and (base / parity["vectors"]["file"]).is_file()
        native = backend_name in NATIVE_BACKENDS
        if native:  # native code never loads without explicit trust
            with pytest.raises(UnsafeArtifactError, match="trust=True"):
                verify(artifact)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            again = verify(artifact, trust=native)
        assert any("runs its native code" in str(w.message) for w in caught) == native
        assert again.ok, f"`enn_nb.engine.verify` failed on `{artifact.name}`:\n{again}"
    else:
        assert parity["status"] == "skipped" and parity.get("reason"), parity

    # embedded essentials round-trip
    if data["embedded_metadata"]:
        assert data["embedded"], "embedded_metadata is true but the sidecar lists no essentials"
        try:
            found = backend.read_metadata(artifact)
        except MissingDependencyError:
            found = None
        if found is not None:
            missing = {k: v for k, v in data["embedded"].items() if found.get(k) != v}
            assert not missing, f"embedded metadata did not round-trip for keys {sorted(missing)}"
    return data
