"""The verdict (the CI gate's decision) from export results, and the small pure helpers of the export report."""

from __future__ import annotations

import json

import pytest


def _result(backend, status, **kw):
    from enn_nb.engine import BackendResult

    return BackendResult(backend=backend, status=status, **kw)


def _report(tmp_path, *results):
    from enn_nb.engine import ExportReport

    return ExportReport(results=list(results), out_dir=tmp_path)


def _requested(names, explicit=True, skipped=None):
    from pathlib import Path

    from enn_nb.engine.settings import ExportSettings

    return ExportSettings(names=tuple(names), out=Path("."), named=explicit, skipped=dict(skipped or {}))


PARITY_OK = {"status": "passed", "tolerance": {"atol": 1e-4, "rtol": 1e-4}, "max_abs_err": 2e-7,
             "cases": [{"key": "b1", "batch_size": 1, "max_abs_err": 2e-7, "passed": True}]}


def test_every_failing_status_fails_the_gate_with_its_reason(tmp_path):
    from enn_nb.surfaces.reports.sections import verdict

    mismatch = {"status": "failed", "tolerance": {"atol": 0.0, "rtol": 0.0}, "max_abs_err": 3e-7,
                "cases": [{"batch_size": 1, "max_abs_err": 1e-7}, {"batch_size": 7, "max_abs_err": 3e-7}]}
    report = _report(
        tmp_path,
        _result("onnx", "mismatch", parity=mismatch),
        _result("ort", "failed", stage="convert", error="no kernel for op X", error_type="BackendError"),
        _result("aoti", "crashed", signal="SIGSEGV", error="child died"),
        _result("pt2", "ok", parity=PARITY_OK),
    )
    v = verdict(report, None, _requested(["onnx", "ort", "aoti", "pt2"]))
    assert not v.ok
    assert v.failures == [
        "onnx: mismatch (max abs error 3e-07 at batch 7 beyond atol=0, rtol=0)",
        "ort: failed (stage `convert`: BackendError: no kernel for op X)",
        "aoti: crashed (the isolated converter died (signal SIGSEGV): child died)",
    ]
    assert v.backends["pt2"]["status"] == "ok" and v.headline.startswith("1 verified, 1 mismatch, 1 failed, 1 crashed")
    assert "3 failed the check" in v.headline


def test_report_check_beyond_tolerance_turns_ok_into_mismatch(tmp_path):
    from enn_nb.surfaces.reports.sections import Measurements, verdict

    m = Measurements([1, 64], mismatches={"onnx": ["batch 64: max abs error 0.002 beyond atol=0.0001, rtol=0.0001 "
                                                   "(report's check)"]})
    v = verdict(_report(tmp_path, _result("onnx", "ok", parity=PARITY_OK)), m, _requested(["onnx"]))
    assert not v.ok and v.backends["onnx"]["status"] == "mismatch"
    assert v.failures == [
        "onnx: mismatch (batch 64: max abs error 0.002 beyond atol=0.0001, rtol=0.0001 (report's check))"]


def test_unavailable_fails_only_when_named_and_deferred_never(tmp_path):
    from enn_nb.surfaces.reports.sections import verdict

    report = _report(tmp_path, _result("coreml", "unavailable", error="`coremltools` is not installed"),
                     _result("tensorrt", "deferred", deferred="needs a CUDA host"),
                     _result("pt2", "ok", parity=PARITY_OK))
    named = verdict(report, None, _requested(["coreml", "tensorrt", "pt2"], explicit=True))
    assert named.failures == ["coreml: unavailable (`coremltools` is not installed)"]
    listed = verdict(report, None, _requested(["coreml", "tensorrt", "pt2"], explicit=False, skipped={"x": "why"}))
    assert listed.ok and listed.failures == []
    assert listed.notes == ["x: skipped, not available here (why)",
                            "coreml: unavailable (`coremltools` is not installed)",
                            "tensorrt: deferred (needs a CUDA host)"]


def test_sidecars_in_the_verdict_are_existing_absolute_paths(tmp_path):
    from enn_nb.surfaces.reports.sections import verdict

    side = tmp_path / "model.pt2.enn.json"
    side.write_text("{}")
    report = _report(tmp_path, _result("pt2", "ok", parity=PARITY_OK, sidecar=side),
                     _result("onnx", "failed", sidecar=tmp_path / "missing.enn.json"))
    v = verdict(report, None, _requested(["pt2", "onnx"]))
    assert v.sidecars == {"pt2": str(side.resolve())}


def test_verdict_round_trips_through_its_mime_bundle_and_the_last_one_wins():
    from enn_nb.surfaces.reports.verdict import VERDICT_MIME, Verdict, find_verdict

    first, last = Verdict(ok=True, headline="a"), Verdict(ok=False, headline="b", failures=["x: failed"])
    bundle = last._repr_mimebundle_()
    assert bundle["text/plain"].startswith("FAIL: b") and "data-verdict='fail'" in bundle["text/html"]
    nb = {"cells": [
        {"cell_type": "code", "outputs": [{"output_type": "display_data", "data": first._repr_mimebundle_()}]},
        {"cell_type": "markdown", "source": "x"},
        {"cell_type": "code", "outputs": [{"output_type": "display_data", "data": bundle}]},
    ]}
    found = find_verdict(nb)
    assert Verdict.from_dict(found) == last and found == json.loads(json.dumps(bundle[VERDICT_MIME]))
    assert find_verdict({"cells": []}) is None


@pytest.mark.parametrize(("given", "expected"), [([64, 1, 8, 8], [1, 8, 64]), (4, [4]), ("2, 16", [2, 16])])
def test_batch_sizes_are_normalised(given, expected):
    from enn_nb.surfaces.reports.sections import batch_list

    assert batch_list(given) == expected


@pytest.mark.parametrize("bad", [[0], [1, -2], ["x"], [1.5], []])
def test_bad_batch_sizes_are_refused(bad):
    from enn_nb.errors import ReportError
    from enn_nb.surfaces.reports.sections import batch_list

    with pytest.raises(ReportError, match="`batch_sizes`"):
        batch_list(bad)


def test_sidecars_section_links_relative_and_escapes(tmp_path, monkeypatch):
    from enn_nb.surfaces.reports.sections import Sidecars

    arts = tmp_path / "arts"
    arts.mkdir()
    side = arts / "model.onnx.enn.json"
    side.write_text(json.dumps({"backend": "onnx", "note": "<script>"}))
    monkeypatch.chdir(tmp_path)
    page = Sidecars(_report(tmp_path, _result("onnx", "ok", sidecar=side)))._repr_html_()
    assert "<details class='enn-nb-sidecar' data-backend='onnx'>" in page
    assert "href='arts/model.onnx.enn.json'" in page
    assert "&lt;script&gt;" in page and "<script>" not in page


def test_requested_backends_forms(tmp_path):
    import enn_nb
    from enn_nb.errors import UnknownNameError
    from enn_nb.surfaces.reports.sections import export_settings

    def requested(backends):
        return export_settings(backends, tmp_path, batch_sizes=[1, 8])

    table = enn_nb.backends()
    available = requested("available")
    assert not available.named and list(available.names) == [r.name for r in table if r.available]
    assert set(available.skipped) == {r.name for r in table if not r.available}
    assert requested("").names == available.names  # an empty parameter is the template's default
    assert list(requested("all").names) == [r.name for r in table] and not requested("all").named
    named = requested("onnx, pt2")
    assert named.named and named.names == ("onnx", "pt2") and requested(["pt2"]).names == ("pt2",)
    with pytest.raises(UnknownNameError, match="Did you mean `onnx`"):
        requested(["onxx"])


@pytest.mark.slow
def test_empty_checkpoint_trains_and_saves_the_reference_model(tmp_path):
    import enn_nb
    from enn_nb.errors import ReportError
    from enn_nb.surfaces.reports.sections import checkpoint_or_reference

    path = checkpoint_or_reference("", tmp_path / "arts")
    assert path == tmp_path / "arts" / "reference.safetensors"
    manifest = enn_nb.inspect(path)
    assert manifest.spec.builder == "enn_nb.reference" and manifest.metadata["made_by"].startswith("export_report")
    assert checkpoint_or_reference(str(path), tmp_path) == path
    with pytest.raises(ReportError, match="`nope.pt` does not exist"):
        checkpoint_or_reference("nope.pt", tmp_path)
