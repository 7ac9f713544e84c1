"""The wizard's matplotlib figures: pure functions from numbers to Figures, checked on their artists."""

from __future__ import annotations


import pytest

pytest.importorskip("matplotlib")

from enn_nb.surfaces import plots  # noqa: E402


def _bars(fig):
    (ax,) = fig.axes
    return ax, [p for p in ax.patches]


def test_parity_figure_groups_backends_and_batch_sizes_on_a_log_axis():
    fig = plots.parity_figure(
        {"onnx": {1: 2e-7, 7: 3e-7}, "pt2": {1: 0.0, 7: 0.0}, "coreml": {1: None, 7: float("nan")}},
        tolerances={"onnx": 1e-4, "pt2": 1e-5},
    )
    ax, bars = _bars(fig)
    assert ax.get_yscale() == "log"
    # coreml measured nothing: it has no group; 2 backends x 2 batch sizes remain
    assert [t.get_text() for t in ax.get_xticklabels()] == ["onnx", "pt2"]
    heights = sorted(b.get_height() for b in bars)
    assert heights[:2] == [1e-12, 1e-12]  # exact zeros drawn at the floor...
    assert heights[2:] == pytest.approx([2e-7, 3e-7])
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("0") == 2  # ...and labelled as 0
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(legend) == ["atol", "batch 1", "batch 7"]
    assert len(ax.collections) == 2  # one dashed atol line per backend with a tolerance


def test_latency_figure_puts_eager_first_and_labels_the_ratio():
    fig = plots.latency_figure({"onnx": 0.5, "pt2": 2.0, "tensorrt": None}, eager_ms=1.0, safe_ms=0.8, batch_size=8)
    ax, bars = _bars(fig)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["eager (torch)", "eager, export-safe", "onnx", "pt2"]  # top to bottom; tensorrt not measured
    widths = [b.get_width() for b in sorted(bars, key=lambda b: -b.get_y())]
    assert widths == [1.0, 0.8, 0.5, 2.0]
    texts = [t.get_text() for t in ax.texts]
    # one convention (export-safe eager ms / ms, above 1x faster), also for eager as trained; the bar labels stay
    # short enough to sit inside the frame, the axis says what the ratio is against
    assert texts == ["1 ms (0.8×)", "0.8 ms", "0.5 ms (1.6×)", "2 ms (0.4×)"]
    assert "batch 8" in ax.get_xlabel() and "×: speed-up vs export-safe eager" in ax.get_xlabel()


def test_latency_spanning_orders_of_magnitude_uses_a_log_axis():
    ax, _ = _bars(plots.latency_figure({"onnx": 0.14}, eager_ms=108.0))
    assert ax.get_xscale() == "log"
    ax, _ = _bars(plots.latency_figure({"onnx": 0.5}, eager_ms=1.0))
    assert ax.get_xscale() == "linear"


def test_latency_of_a_static_artifact_at_another_batch_gets_no_ratio():
    fig = plots.latency_figure({"onnx": 0.5, "coreml": 0.7}, eager_ms=1.0, batch_size=8, batches={"coreml": 2})
    ax, _ = _bars(fig)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["eager (torch)", "onnx", "coreml (batch 2)"]
    assert [t.get_text() for t in ax.texts] == ["1 ms", "0.5 ms (2×)", "0.7 ms"]
    assert "speed-up vs eager" in ax.get_xlabel()


def test_size_figure_in_kib_with_human_labels():
    fig = plots.size_figure({"onnx": 3 * 1024 * 1024, "pt2": 1536, "tensorrt": None})
    ax, bars = _bars(fig)
    assert sorted(b.get_width() for b in bars) == [1.5, 3072.0]
    assert sorted(t.get_text() for t in ax.texts) == ["1.5 KiB", "3.0 MiB"]


@pytest.mark.parametrize(
    "make",
    [
        lambda: plots.parity_figure({"onnx": {1: None}}),
        lambda: plots.latency_figure({}),
        lambda: plots.size_figure({"onnx": None}),
    ],
)
def test_figures_without_data_say_so(make):
    fig = make()
    (ax,) = fig.axes
    assert not ax.patches
    assert ax.texts and ax.texts[0].get_text().startswith("no ")


def test_to_png_renders_without_a_display():
    png = plots.to_png(plots.size_figure({"onnx": 2048}))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 2000


def test_human_size():
    assert plots.human_size(None) == ""
    assert plots.human_size(12) == "12 B"
    assert plots.human_size(1536) == "1.5 KiB"
    assert plots.human_size(5 * 1024**3) == "5.0 GiB"
