"""Lanes: backends split over worker processes (ONNX consumers together, balanced by cost), run in order."""

from __future__ import annotations

import torch

import enn_nb
from enn_nb.engine.lanes import split_lanes
from enn_nb.engine.plan import Plan
from enn_nb.engine.registry import get_backend, register_backend, unregister_backend

from tests.fixtures.backends import EchoBackend
from tests.fixtures.models import TinyMLP


def _plans(*names: str) -> list[Plan]:
    return [Plan(i, n, get_backend(n), {}, (0.0, 0.0)) for i, n in enumerate(names)]


def test_onnx_consumers_share_one_lane_and_the_rest_are_balanced_by_cost():
    plans = _plans("pt2", "onnx", "aoti", "ort", "executorch", "tensorflow")
    lanes = split_lanes(plans, workers=3)
    names = [[p.name for p in lane] for lane in lanes]
    onnx_lane = next(lane for lane in names if "onnx" in lane)
    assert {"onnx", "ort", "tensorflow"} <= set(onnx_lane)  # one ONNX file, one child
    assert sorted(n for lane in names for n in lane) == sorted(p.name for p in plans) and len(lanes) == 3
    for lane in lanes:  # request order kept inside a lane
        assert [p.index for p in lane] == sorted(p.index for p in lane)
    costs = [sum(p.backend.cost for p in lane) for lane in lanes]
    heaviest = max(p.backend.cost for p in plans)
    assert max(costs) - min(costs) <= heaviest  # longest first onto the least loaded lane


def test_worker_count_limits_the_lanes():
    plans = _plans("pt2", "aoti", "executorch", "onnx")
    assert len(split_lanes(plans, workers=1)) == 1 and len(split_lanes(plans, workers=1)[0]) == 4
    assert len(split_lanes(plans, workers=16)) == 4  # never more lanes than groups
    assert len(split_lanes(_plans("onnx", "ort"), workers=4)) == 1


def test_a_lane_stops_between_backends_when_asked(tmp_path):
    register_backend(EchoBackend)
    done: list[str] = []
    try:
        report = enn_nb.export(
            TinyMLP(), ["pt2", "echo"], out_dir=tmp_path, example_inputs=torch.randn(2, 6), isolate=False,
            progress=lambda e: done.append(e["backend"]) if e["stage"] == "done" else None,
            should_stop=lambda: bool(done),
        )
    finally:
        unregister_backend("echo")
    assert [r.status for r in report] == ["ok", "cancelled"] and done == ["pt2", "echo"]
    assert report["echo"].sidecar is None and not (tmp_path / "model.echo.pt2").exists()
