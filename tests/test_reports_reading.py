"""What a reader of a shared report meets: compact latency cells with one noise note, plots whose labels
neither collide nor leave the frame, deviation reasons in full, timing on a quiet machine, a failed
report that still reads as a report."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from enn_nb.engine import timing
from enn_nb.engine.timing import Stat


def _stat(median: float, iqr: float, batch: int) -> Stat:
    return Stat(median, median - iqr / 2, median + iqr / 2, calls=20, warmup=2, threads=1, batch=batch, rounds=3)


def _measurements(stats):
    from enn_nb.surfaces.reports.sections import Measurements

    host = {"cpu": "test CPU", "cpu_count": 2, "load_1min": 1.8, "load_1min_after": 2.1}
    m = Measurements([1, 8], stats=stats, threads={1: 1, 8: 1}, host=host)
    m.safe_ms = {b: stats["eager (export-safe)"][b].median_ms for b in (1, 8)}
    m.eager_ms = {b: stats["eager"][b].median_ms for b in (1, 8)}
    m.latency_ms = {"onnx": {b: stats["onnx"][b].median_ms for b in (1, 8)}}
    note = timing.busy_note([s for per in stats.values() for s in per.values()], host)
    m.warnings = [note] if note else []
    return m


def test_latency_cells_are_compact_with_the_detail_as_tooltip_and_noise_said_once(tmp_path):
    from enn_nb.engine.report import BackendResult, ExportReport
    from enn_nb.surfaces.reports.sections import artifact_table, notes_table

    stats = {
        "onnx": {1: _stat(0.05, 0.001, 1), 8: _stat(0.2, 0.15, 8)},  # batch 8: IQR 75% of the median
        "eager (export-safe)": {1: _stat(0.5, 0.01, 1), 8: _stat(0.9, 0.02, 8)},
        "eager": {1: _stat(2.0, 1.5, 1), 8: _stat(3.0, 0.1, 8)},
    }
    measured = _measurements(stats)
    export = ExportReport(out_dir=tmp_path, results=[BackendResult("onnx", "ok", parity={"status": "passed", "max_abs_err": 1e-7,
                                                                      "tolerance": {"atol": 1e-4, "rtol": 1e-4}})])
    table = artifact_table(export, measured)
    onnx = next(row for row in table.rows if row[0] == "onnx")
    assert onnx[-2].text == "0.05 ms · 10x"  # export-safe eager 0.5 ms / 0.05 ms
    assert onnx[-2].title == "0.05 ms ±0.001 IQR, batch 1, 1 thread (10x vs export-safe eager)"
    assert onnx[-1].text == "—" and onnx[-1].title.startswith("not measured: machine busy (0.2 ms ±0.15 IQR")
    html = table._repr_html_()
    assert "title='0.05 ms ±0.001 IQR, batch 1, 1 thread (10x vs export-safe eager)'" in html
    assert html.count("not measured: machine busy —") == 1  # the one note, in the footnote
    assert "2 of 6 timings kept a spread (IQR) above 25% of their median after 3 rounds" in table.footer
    assert "load average 1.8 before timing, 2.1 after, on 2 CPUs" in table.footer
    notes = notes_table(measured, export)
    assert notes is None  # no note row per noisy cell


def test_parity_plot_labels_of_nine_backends_do_not_collide_and_latency_labels_stay_in_the_frame():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from enn_nb.surfaces.plots import latency_figure, parity_figure

    names = ["onnx", "ort", "pt2", "aoti", "executorch", "litert", "coreml", "tensorflow", "tensorrt"]
    fig = parity_figure({n: {1: 1e-7 * (i + 1), 7: 2e-7, 2: 1e308 if n == "litert" else 0.0}
                         for i, n in enumerate(names)}, tolerances={n: 1e-4 for n in names})
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in fig.axes[0].get_xticklabels()]
    assert len(boxes) == 9
    assert not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:]))
    assert fig.axes[0].get_ylim()[1] < 1e10  # an uncomparable case is capped, not a 1e308 axis

    fig = latency_figure({"onnx": 0.0375, "pt2": 236.0, "executorch": 0.727}, eager_ms=260.0, safe_ms=1.29,
                         batch_size=64, title="Latency per runtime, batch 64, 2 threads")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    frame = fig.axes[0].get_window_extent(renderer)
    labels = [t for t in fig.axes[0].texts if " ms" in t.get_text()]
    assert len(labels) == 5
    for text in labels:
        box = text.get_window_extent(renderer)
        assert frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1, text.get_text()


def test_deviation_reasons_are_shown_whole():
    from enn_nb.engine.report import ExportReport
    from enn_nb.surfaces.reports.sections import deviations_table

    reason = "F.scaled_dot_product_attention is lowered to explicit matmul + softmax, " * 4
    table = deviations_table(ExportReport(out_dir=".", results=[], deviations=[{"name": "torch.sdpa_kernel", "reason": reason.strip()}]))
    assert table.rows[0][1] == reason.strip() and len(reason.strip()) > 160


def test_latency_waits_for_the_processes_this_one_started_to_go_quiet():
    spin = "import time\nt = time.time()\nwhile time.time() - t < 1.2: pass\n"
    child = subprocess.Popen([sys.executable, "-c", spin])
    try:
        started = time.monotonic()
        busy = timing.wait_until_quiet(cap_s=0.5, window_s=0.1)
        assert busy == {"waited_s": pytest.approx(0.5, abs=0.3), "workers_quiet": False}
        quiet = timing.wait_until_quiet(cap_s=10.0, window_s=0.1)
        assert quiet["workers_quiet"] is True
        assert time.monotonic() - started >= 1.0  # it waited for the spinning child, not just its cap
    finally:
        child.kill()
        child.wait()
    assert timing.wait_until_quiet(cap_s=5.0, window_s=0.1)["waited_s"] < 1.0  # nothing running: no wait


@pytest.mark.slow
@pytest.mark.notebook
@pytest.mark.browser
def test_a_failed_report_reads_as_a_report(tmp_path, artifacts_dir):
    import shutil

    import enn_nb
    from enn_nb.errors import ReportCellError
    from tests.fixtures.browser import chromium_page

    with pytest.raises(ReportCellError) as err:
        enn_nb.report("export_report", tmp_path / "out", backends=["onnx"], model="no_such_module:build",
                      html=True, progress=False)
    html = tmp_path / "out" / "export_report.html"
    shutil.copy(html, artifacts_dir / "failed_report.html")
    page_text = html.read_text(encoding="utf-8")
    assert "An Exception was encountered" not in page_text and ">Artifacts<" not in page_text
    with chromium_page(tmp_path / "chromium-profile", width=1100, height=900) as page:
        page.goto(html.resolve().as_uri())
        box = page.locator("[data-verdict='fail']").first
        assert box.bounding_box()["y"] < 300
        assert f"The report stopped in cell {err.value.cell_index} of export_report.ipynb;" in box.inner_text()
        assert "SpecError: `--model no_such_module:build`" in box.inner_text()
        assert page.locator("[data-verdict='running']").count() == 0  # the pending box was replaced
        trace = page.locator(".enn-nb-error details pre").first
        assert not trace.is_visible()  # folded
        page.locator(".enn-nb-error summary").first.click()
        assert trace.is_visible() and "ModuleNotFoundError" in trace.inner_text()
        page.locator(".enn-nb-error summary").first.click()
        assert page.get_by_text("the sections after it were not run").count() == 1
        page.screenshot(path=str(artifacts_dir / "failed_report.png"), full_page=True)
