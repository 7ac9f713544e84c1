"""enn_nb.engine.latency: the one latency measurement (wizard and export report), on real ONNX and PT2 artifacts."""

from __future__ import annotations

import copy
import dataclasses

import pytest

torch = pytest.importorskip("torch")

from enn_nb.engine import latency  # noqa: E402

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
