"""Schema checks: valid documents pass the compiled validator without importing jsonschema (seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from enn_nb._schema_check import passes_compiled
from enn_nb.checkpoint.schema import SCHEMA_FILE
from enn_nb.engine import sidecar as sc

ROOT = Path(__file__).resolve().parents[1]


def test_checkpoints_and_sidecars_are_checked_without_importing_jsonschema(tmp_path):
    script = textwrap.dedent(
        f"""
        import json, sys, time
        import enn_nb
        from enn_nb.engine import sidecar
        from tests.fixtures.models import tiny
        start = time.perf_counter()
        for name in ("m.pt", "m.safetensors", "m_dcp"):
            enn_nb.save(tiny(), {str(tmp_path)!r} + "/" + name)
            enn_nb.load({str(tmp_path)!r} + "/" + name)
        doc = json.load(open(sys.argv[1]))
        sidecar.validate(doc)
        print(json.dumps({{"jsonschema": "jsonschema" in sys.modules, "s": time.perf_counter() - start}}))
        """
    )
    sidecar_doc = tmp_path / "sidecar.json"
    sidecar_doc.write_text(json.dumps(_valid_sidecar()))
    proc = subprocess.run([sys.executable, "-c", script, str(sidecar_doc)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["jsonschema"] is False


def test_a_refused_document_is_explained_by_jsonschema():
    doc = _valid_sidecar()
    doc["status"] = "sort of"
    assert not passes_compiled(sc._SCHEMA_FILE, doc)
    with pytest.raises(Exception, match="status"):
        sc.validate(doc)


def test_compiled_and_reference_validators_agree_on_a_manifest(tmp_path):
    import enn_nb
    from enn_nb.checkpoint.schema import _validator
    from tests.fixtures.models import tiny

    doc = enn_nb.save(tiny(), tmp_path / "m.pt").to_dict()
    assert passes_compiled(SCHEMA_FILE, doc) and not list(_validator().iter_errors(doc))
    doc["tensors"][1]["hash"] = "md5:" + "0" * 64
    assert not passes_compiled(SCHEMA_FILE, doc) and list(_validator().iter_errors(doc))


def _valid_sidecar() -> dict:
    """A small sidecar the export schema accepts (a failed export: no parity, no files)."""
    return {
        "schema": "enn_nb.export/1", "backend": "pt2", "status": "failed",
        "parity": {"status": "not_run", "reason": "export failed"},
        "versions": {"enn_nb": "0.1.0", "python": "3.11.7"},
        "host": {"os": "Linux", "machine": "x86_64", "python": "3.11.7"},
        "files": [], "inputs": [{"name": "x", "shape": ["batch", 6], "dtype": "float32"}], "outputs": [],
        "format": {}, "options": {}, "spec": None, "source": {"kind": "model"}, "deviations": [],
        "timings": {"convert": 0.5}, "created": "2026-11-29T12:00:00Z", "stage": "convert",
        "error": {"type": "ExportError", "message": "boom"},
    }
