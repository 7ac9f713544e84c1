"""Verified vs converted-but-not-verified vs deferred: the same words in summaries, verdicts, badges, CLI and wizard."""

from __future__ import annotations

import pytest

PASSED = {"status": "passed", "tolerance": {"atol": 1e-4, "rtol": 1e-4}, "max_abs_err": 2e-7,
          "cases": [{"batch_size": 1, "max_abs_err": 2e-7, "passed": True}]}
MACOS = {"status": "skipped", "reason": "CoreML prediction requires macOS"}


def _result(backend, status, **kw):
    from enn_nb.engine import BackendResult

    return BackendResult(backend=backend, status=status, **kw)


def _nine(tmp_path):
    """The issue's case: 7 checked backends, CoreML converted on Linux, TensorRT deferred."""
    from enn_nb.engine import ExportReport

    names = ["onnx", "ort", "pt2", "aoti", "executorch", "litert", "tensorflow"]
    results = [_result(n, "ok", parity=PASSED) for n in names]
    results.append(_result("coreml", "ok", parity=MACOS))
    results.append(_result("tensorrt", "deferred", deferred="no CUDA GPU here"))
    return ExportReport(results=results, out_dir=tmp_path)


def test_summary_separates_verified_unverified_and_deferred(tmp_path):
    report = _nine(tmp_path)
    assert report.summary == "7 verified, 1 converted but not verified (CoreML prediction requires macOS), 1 deferred"
    assert report["coreml"].verified is False and report["onnx"].verified is True
    assert report["coreml"].verification.describe() == "not verified (CoreML prediction requires macOS)"
    text = str(report)
    assert report.summary in text
    row = next(line for line in text.splitlines() if line.startswith("coreml"))
    assert "not verified" in row and "CoreML prediction requires macOS" in row
    assert report.to_dict()["results"][7]["verification"] == {"kind": "unverified",
                                                               "reason": "CoreML prediction requires macOS"}
    assert "converted but not verified" in report._repr_html_()


def test_summary_of_verify_false_and_failures(tmp_path):
    from enn_nb.engine.verification import summary

    results = [
        _result("pt2", "ok", parity={"status": "not_run", "reason": "verify=False"}),
        _result("onnx", "ok", parity={"status": "not_run", "reason": "verify=False"}),
        _result("ort", "mismatch", parity={"status": "failed"}),
        _result("aoti", "crashed", stage="convert", error="SIGSEGV"),
    ]
    assert summary(results) == (
        "0 verified, 2 converted but not verified (parity not run: verify=False), 1 mismatch, 1 crashed"
    )
    mixed = [results[0], _result("coreml", "ok", parity=MACOS)]
    assert summary(mixed) == ("0 verified, 2 converted but not verified (pt2: parity not run: verify=False; "
                              "coreml: CoreML prediction requires macOS)")


def test_verdict_headline_badges_and_notes_do_not_overclaim(tmp_path):
    from enn_nb.engine.settings import ExportSettings
    from enn_nb.surfaces.reports.sections import verdict

    report = _nine(tmp_path)
    v = verdict(report, None, ExportSettings(names=tuple(r.backend for r in report), out=tmp_path, named=False))
    assert v.ok  # not verifying is not a failure of the gate ...
    assert v.headline == "7 verified, 1 converted but not verified (CoreML prediction requires macOS), 1 deferred."
    assert "match eager" not in v.headline  # ... but it is never counted as a match
    assert v.backends["coreml"]["verification"] == "unverified"
    assert "coreml: converted but not verified (CoreML prediction requires macOS)" in v.notes
    html = v._repr_html_()
    assert "coreml: ok, not verified" in html and "onnx: ok, verified" in html


def test_wizard_row_says_not_verified(tmp_path):
    from enn_nb.surfaces.notebook.wizard_state import result_rows
    from enn_nb.surfaces.notebook.wizard_view import results_table_html

    rows = result_rows(_nine(tmp_path))
    coreml = next(r for r in rows if r["backend"] == "coreml")
    assert coreml["verification"] == "unverified" and coreml["message"] == "CoreML prediction requires macOS"
    html = results_table_html(rows)
    row = html[html.index("data-backend='coreml'"):]
    assert "not verified" in row[: row.index("</tr>")]
    onnx = html[html.index("data-backend='onnx'"):]
    assert "· verified" in onnx[: onnx.index("</tr>")]


@pytest.mark.slow
def test_cli_exit_message_says_not_verified(trained_model, tmp_path, capfd):
    """A real `enn-nb export --no-verify`: exit 0, and the exit line does not call the artifact verified."""
    import enn_nb
    from enn_nb.surfaces.cli import main

    ckpt = tmp_path / "ref.safetensors"
    enn_nb.save(trained_model, ckpt)
    code = main(["export", str(ckpt), "-b", "pt2", "-o", str(tmp_path / "out"), "--no-verify", "--no-cache"])
    captured = capfd.readouterr()
    assert code == 0, captured.err
    assert "enn-nb export: 0 verified, 1 converted but not verified (parity not run: verify=False)" in captured.err
    assert "not verified" in captured.out  # the table's row says so too


def test_verify_never_prints_passed_when_it_fails(tmp_path):
    from enn_nb.engine.parity import VerifyResult

    result = VerifyResult(tmp_path / "model.onnx", "onnx", "passed", None, {"cases": []},
                          ["`model.vectors.safetensors` has another sha256 than the sidecar records"])
    text = str(result)
    assert text.splitlines()[0] == "model.onnx [onnx]: FAILED - 1 file problem (parity passed)"
    assert not result.ok and ": passed" not in text
    assert result.status == "failed" and result.to_dict()["status"] == "failed"  # never "passed" beside ok=False
    assert result.parity["status"] == "passed"  # the outputs' own verdict is kept where it belongs
