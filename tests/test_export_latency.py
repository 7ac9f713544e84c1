"""Latency: enn_nb.engine.latency, the one measurement (wizard and export report), on real ONNX and PT2 artifacts,
and enn_nb.engine.timing's benchmark-tool method, tested on its bookkeeping with a synthetic clock (never on
absolute times)."""

from __future__ import annotations

import copy
import dataclasses

import pytest

torch = pytest.importorskip("torch")

from enn_nb.engine import latency, timing  # noqa: E402

FAST = {"budget_s": 0.0, "min_calls": 2, "max_calls": 5}  # the numbers are not under test, their presence is
# Tests marked slow share one real ONNX + PT2 export of a tiny MLP (~15 s on 2 busy cores).


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    net.in_dim = 4
    return net


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from enn_nb.engine import export

    net = _net()
    out = tmp_path_factory.mktemp("latency")
    dynamic = export(net, ["onnx", "pt2"], out_dir=out / "dynamic", cache=False)
    static = export(net, ["pt2"], out_dir=out / "static", dynamic_batch=False, cache=False)
    assert [r.status for r in dynamic.results + static.results] == ["ok", "ok", "ok"]
    return net, dynamic, static


def test_time_call_makes_at_least_min_and_at_most_max_calls():
    calls = []
    assert latency.time_call(lambda: calls.append(1), budget_s=0.0, min_calls=3, warmup=2) >= 0
    assert len(calls) == 5  # two warm-up calls, then the minimum: the budget is spent
    calls.clear()
    latency.time_call(lambda: calls.append(1), budget_s=60.0, max_calls=7, warmup=0)
    assert len(calls) == 7  # a long budget stops at the maximum


@pytest.mark.slow
def test_compare_times_and_checks_every_batch_size(exported):
    net, report, _ = exported
    inputs = latency.vector_inputs(report)
    assert inputs is not None and tuple(inputs(5)[0].shape) == (5, 4)
    t = latency.measure(net, report, [8, 1], inputs, compare=True, **FAST)
    assert sorted(t.eager_ms) == sorted(t.safe_ms) == [1, 8]
    assert {name: sorted(ms) for name, ms in t.latency_ms.items()} == {"onnx": [1, 8], "pt2": [1, 8]}
    assert all(ms > 0 for per in t.latency_ms.values() for ms in per.values())
    assert t.errors["pt2"] == {1: 0.0, 8: 0.0}  # the same graph in the same runtime: exact
    assert 0.0 <= max(t.errors["onnx"].values()) <= 1e-5
    assert t.mismatches == {} and t.skipped == {} and t.static == {}


@pytest.mark.slow
def test_a_model_changed_after_its_export_mismatches_its_artifacts(exported):
    net, report, _ = exported
    changed = copy.deepcopy(net)
    with torch.no_grad():
        changed[2].bias.add_(0.5)  # every output moves by exactly 0.5
    t = latency.measure(changed, report, [2], latency.vector_inputs(report), compare=True, **FAST)
    for name in ("onnx", "pt2"):
        assert t.errors[name][2] == pytest.approx(0.5, abs=1e-5)
        (line,) = t.mismatches[name]
        assert line.startswith("batch 2: max abs error 0.5 beyond atol=")


@pytest.mark.slow
def test_a_static_artifact_is_timed_and_compared_at_its_own_batch_only(exported):
    net, _, static = exported
    (result,) = static.results
    capture_batch = result.inputs[0]["shape"][0]
    assert latency.static_batch(result) == capture_batch and capture_batch not in (1, 8)
    inputs = latency.vector_inputs(static)

    t = latency.measure(net, static, [1, 8], inputs, compare=True, **FAST)
    assert t.static == {"pt2": capture_batch} and list(t.latency_ms["pt2"]) == [capture_batch]
    assert sorted(t.eager_ms) == sorted([1, 8, capture_batch])  # eager ran there too, as the reference
    assert list(t.errors["pt2"]) == [capture_batch]

    t = latency.measure(net, static, [8], inputs, **FAST)
    assert list(t.latency_ms["pt2"]) == [capture_batch] and list(t.eager_ms) == [8]  # no reference needed


@pytest.mark.slow
def test_what_cannot_be_timed_is_skipped_with_the_reason(exported, tmp_path):
    net, report, _ = exported
    onnx, pt2 = report.results
    gone = dataclasses.replace(onnx, artifact=tmp_path / "gone.onnx")
    failed = dataclasses.replace(pt2, status="failed", artifact=None)
    t = latency.measure(net, dataclasses.replace(report, results=[gone, failed]), [1],
                        latency.vector_inputs(report), compare=True, **FAST)  # fmt: skip
    assert t.skipped["onnx"].startswith("loading it here raised ")
    assert t.skipped["pt2"] == "status `failed`"
    assert t.latency_ms == {} and list(t.eager_ms) == [1]

    seen = []
    t = latency.measure(net, report, [1], latency.vector_inputs(report), on_backend=seen.append,
                        should_stop=lambda: bool(seen), **FAST)  # fmt: skip
    assert seen == ["onnx"] and list(t.latency_ms) == ["onnx"] and t.skipped == {"pt2": "cancelled"}


@pytest.mark.slow
def test_inputs_the_model_rejects_are_recorded_without_compare_and_raise_with_it(exported):
    net, report, _ = exported
    wrong = lambda batch: (torch.randn(batch, 5),)  # noqa: E731 - the model takes 4 features
    t = latency.measure(net, report, [2], wrong, **FAST)
    assert set(t.skipped) == {"eager", "eager (export-safe)", "onnx", "pt2"}
    assert "RuntimeError" in t.skipped["eager"]
    assert t.eager_ms == {} and t.latency_ms == {}
    with pytest.raises(RuntimeError):  # with compare, eager is the reference: nothing to check against
        latency.measure(net, report, [2], wrong, compare=True, **FAST)


@pytest.mark.slow
def test_without_parity_vectors_there_are_no_inputs(exported):
    _, report, _ = exported
    assert latency.vector_inputs(dataclasses.replace(report, vectors=None)) is None


class FakeClock:
    """A clock that moves only when the timed call says so: each call takes the next duration (ms)."""

    def __init__(self, durations_ms):
        self.now = 0.0
        self.durations = durations_ms
        self.calls = 0

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += self.durations(self.calls) / 1e3
        self.calls += 1


def test_a_steady_call_stops_at_the_budget_with_zero_spread():
    clock = FakeClock(lambda i: 1.0)
    stat = timing.sample_call(clock.tick, budget_s=0.01, min_calls=5, warmup=2, clock=clock)
    assert clock.calls == 2 + 10 and stat.calls == 10 and stat.warmup == 2  # 10 calls of 1 ms fill 10 ms
    assert (stat.q1_ms, stat.median_ms, stat.q3_ms) == pytest.approx((1.0, 1.0, 1.0))
    assert stat.settled and not stat.noisy and stat.spread == pytest.approx(0.0, abs=1e-9)


def test_a_median_that_keeps_moving_gets_more_calls_up_to_three_budgets():
    clock = FakeClock(lambda i: 1.0 + 0.5 * i)  # slower at every call: the median never settles
    stat = timing.sample_call(clock.tick, budget_s=0.01, min_calls=5, warmup=0, clock=clock)
    # at 5 calls the 10 ms budget is spent (1+1.5+2+2.5+3), but the median moved: on until 30 ms are spent
    assert stat.calls == 10 and clock.now == pytest.approx(0.0325)
    assert stat.settled is False
    assert stat.median_ms == pytest.approx(3.25)


def test_max_calls_bounds_everything():
    clock = FakeClock(lambda i: 1.0 + 0.5 * i)
    assert timing.sample_call(clock.tick, budget_s=10.0, max_calls=7, warmup=0, clock=clock).calls == 7


def test_a_noisy_call_has_a_wide_iqr_and_is_flagged():
    clock = FakeClock(lambda i: (1.0, 5.0)[i % 2])
    stat = timing.sample_call(clock.tick, budget_s=0.05, min_calls=5, warmup=0, clock=clock)
    assert stat.iqr_ms == pytest.approx(4.0) and stat.spread > timing.MAX_SPREAD and stat.noisy
    stat.batch, stat.threads = 8, 1
    line = timing.noise_warning("onnx", stat, {"load_1min": 3.5, "cpu_count": 2})
    assert line.startswith("onnx at batch 8: the IQR (4 ms) is ")
    assert "too wide to trust; load 3.5 on 2 CPUs" in line
    assert "[noisy]" in stat.cell()


def test_thread_count_defaults_and_validation():
    assert timing.threads_for(1) == timing.threads_for(8) == 1
    assert 1 <= timing.threads_for(64) <= 4
    assert timing.threads_for(64, threads=3) == timing.threads_for(1, threads=3) == 3
    with pytest.raises(ValueError, match="`threads` is 0"):
        timing.threads_for(1, threads=0)


def test_one_ratio_convention():
    assert timing.speedup(2.0, 1.0) == 2.0  # reference twice as slow: the runtime is 2x
    assert timing.speedup(1.0, 4.0) == 0.25
    assert timing.speedup(None, 1.0) is None and timing.speedup(1.0, 0.0) is None
    assert [timing.ratio_text(r) for r in (2.0, 0.25, 312.4)] == ["2x", "0.25x", "312x"]


class _ThreadProbe(torch.nn.Module):
    """Records the intra-op thread count at each call and advances the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.seen: set[int] = set()
        self.in_dim = 4

    def forward(self, x):
        self.seen.add(torch.get_num_threads())
        self.clock.tick()
        return x * 2


def test_measure_records_threads_spread_host_and_warns_on_a_noisy_clock(tmp_path):
    from enn_nb.engine import ExportReport, latency

    clock = FakeClock(lambda i: (1.0, 9.0)[i % 2])
    probe = _ThreadProbe(clock)
    before = torch.get_num_threads()
    t = latency.measure(probe, ExportReport(results=[], out_dir=tmp_path), [2, 64],
                        lambda b: (torch.ones(b, 4),), budget_s=0.05, min_calls=5, clock=clock)  # fmt: skip
    assert torch.get_num_threads() == before  # restored
    expected = {2: 1, 64: timing.threads_for(64)}
    assert t.threads == expected
    assert probe.seen == set(expected.values())  # the calls really ran with the recorded threads
    for label in (latency.EAGER, latency.SAFE):
        assert {b: s.threads for b, s in t.stats[label].items()} == expected
        assert all(s.batch == b and s.noisy for b, s in t.stats[label].items())
    # still noisy after every round: said once, not once per timing
    assert all(s.rounds == latency.MAX_ROUNDS for per in t.stats.values() for s in per.values())
    assert len(t.warnings) == 1 and t.warnings[0].startswith("not measured: machine busy — 4 of 4 timings")
    assert {"cpu", "cpu_count", "load_1min", "load_1min_after", "waited_s", "workers_quiet"} <= set(t.host)
    assert t.eager_ms[2] == t.stats[latency.EAGER][2].median_ms


def test_report_cells_show_batch_spread_threads_and_the_export_safe_ratio(tmp_path):
    from enn_nb.engine import BackendResult, ExportReport
    from enn_nb.surfaces.reports.sections import LATENCY_LEGEND, Measurements, artifact_table, notes_table

    def stat(ms, batch):
        return timing.Stat(ms, ms * 0.9, ms * 1.1, calls=50, warmup=2, threads=1, batch=batch)

    m = Measurements([8], eager_ms={8: 40.0}, safe_ms={8: 2.0}, latency_ms={"onnx": {8: 1.0}},
                     stats={"onnx": {8: stat(1.0, 8)}, "eager": {8: stat(40.0, 8)},
                            "eager (export-safe)": {8: stat(2.0, 8)}},
                     threads={8: 1}, host={"cpu": "x", "cpu_count": 2, "load_1min": 0.5, "load_1min_after": 0.7},
                     warnings=["not measured: machine busy — ..."])  # fmt: skip
    assert m.speedup("onnx", 8) == 2.0  # the headline: vs eager in export_safe, not the 40x vs eager as trained
    assert m.speedup_vs_trained("onnx", 8) == 40.0
    report = ExportReport(results=[BackendResult("onnx", "ok", parity={"status": "passed"})], out_dir=tmp_path)
    table = artifact_table(report, m)
    onnx, safe, trained = table.rows
    # compact cells; the detail (spread, batch, threads, ratio) is each cell's tooltip
    assert (onnx[-1].text, onnx[-1].title) == ("1 ms · 2x", "1 ms ±0.2 IQR, batch 8, 1 thread (2x vs export-safe eager)")
    assert (safe[-1].text, safe[-1].title) == ("2 ms", "2 ms ±0.4 IQR, batch 8, 1 thread")
    assert trained[-1].title == "40 ms ±8 IQR, batch 8, 1 thread (0.05x vs export-safe eager)"
    assert "intra-op threads: 1 (batch 8)" in m.host_line() and "load average: 0.5 before, 0.7 after" in m.host_line()
    assert m.host_line() in table.footer and "not measured: machine busy — ... Those cells show —" in table.footer
    assert notes_table(m, report) is None  # the noise note is the table's footnote, once
    assert "export-safe eager ms / runtime ms" in LATENCY_LEGEND
