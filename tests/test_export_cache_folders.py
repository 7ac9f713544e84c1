"""Every folder an export writes verifies, whatever came from the cache; no folder changes another's files.

The model adds a little fresh noise at every call (far below the tolerance), so that two exports of
the same model write parity vectors with different bytes, as a model with non-deterministic kernels
(or another thread count) does: the case where a cached sidecar and a folder's vectors file disagree.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from enn_nb.engine import export, verify

pytestmark = pytest.mark.slow


class NoisyMLP(torch.nn.Module):
    """[B, 4] -> [B, 3], plus noise below 1e-6 (tolerances are 1e-5 and more): each eager run differs."""

    def __init__(self) -> None:
        super().__init__()
        # Same weights every time, but the global generator the noise draws from is left where it was:
        # reseeding it here made two exports draw the same noise, so their vectors matched byte for byte.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        self.in_dim = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + 1e-6 * torch.rand(x.shape[0], 3)


def _export(out: Path, backends: list[str], **kw):
    report = export(NoisyMLP(), backends, out_dir=out, isolate=False, **kw)
    assert [r.status for r in report] == ["ok"] * len(backends), [r.summary() for r in report]
    return report


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _all_verify(folder: Path) -> None:
    for side in sorted(folder.glob("*.enn.json")):
        result = verify(side)
        assert result.status == "passed" and result.ok and not result.problems, (side.name, str(result))


def test_the_issue_sequence_and_a_folder_left_alone(tmp_path):
    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    _export(r1, ["onnx"])
    before = _snapshot(r1)
    second = _export(r2, ["onnx", "pt2"])
    assert second["onnx"].cached and not second["pt2"].cached
    _all_verify(r2)
    _all_verify(r1)
    assert _snapshot(r1) == before  # writing into r2 changed nothing r1 links to

    onnx = json.loads((r2 / "model.onnx.enn.json").read_text())
    vectors = onnx["parity"]["vectors"]
    assert vectors["sha256"] == hashlib.sha256((r2 / vectors["file"]).read_bytes()).hexdigest()
    assert vectors["file"] == "model.onnx.vectors.safetensors"  # the fresh pt2 wrote other bytes: onnx kept its own
    pt2 = json.loads((r2 / "model.pt2.enn.json").read_text())
    assert pt2["parity"]["vectors"]["file"] == "model.vectors.safetensors"


def test_a_hit_records_its_own_provenance_and_timings_and_points_to_the_first(tmp_path):
    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    _export(r1, ["pt2"], provenance={"notebook": "first.ipynb"})
    first = json.loads((r1 / "model.pt2.enn.json").read_text())
    hit = _export(r2, ["pt2"], provenance={"notebook": "second.ipynb"})["pt2"]
    assert hit.cached
    side = json.loads((r2 / "model.pt2.enn.json").read_text())
    assert side["provenance"] == {"notebook": "second.ipynb"}
    assert side["cached_from"]["provenance"] == {"notebook": "first.ipynb"}
    assert side["cached_from"]["created"] == first["created"]
    assert side["cached_from"]["timings"]["convert"] == first["timings"]["convert"]
    # nothing was converted now: no convert seconds beside a lookup-sized total
    assert set(side["timings"]) == {"cache_lookup", "total"} and hit.timings == side["timings"]
    assert hit.timings.get("convert", 0.0) == 0.0 and hit.seconds == side["timings"]["total"]
    assert json.loads((r1 / "model.pt2.enn.json").read_text()) == first  # r1's sidecar is its own still
    # a hit of a hit still points to the very first export
    third = tmp_path / "r3"
    _export(third, ["pt2"], provenance={"notebook": "third.ipynb"})
    again = json.loads((third / "model.pt2.enn.json").read_text())
    assert again["cached_from"]["provenance"] == {"notebook": "first.ipynb"}
    _all_verify(r2)
    _all_verify(third)


def test_reexport_into_the_same_folder_then_two_hits_with_different_vectors(tmp_path):
    a, both = tmp_path / "a", tmp_path / "both"
    _export(a, ["onnx"])
    again = _export(a, ["onnx", "pt2"])  # onnx from this very folder, pt2 converted fresh (new vectors)
    assert again["onnx"].cached and not again["pt2"].cached
    _all_verify(a)
    snapshot = _snapshot(a)

    report = _export(both, ["onnx", "pt2"])  # both from the store, each with the vectors it was checked with
    assert all(r.cached for r in report)
    onnx = json.loads((both / "model.onnx.enn.json").read_text())
    assert onnx["parity"]["vectors"]["file"] == "model.onnx.vectors.safetensors"  # pt2's fetch brought others
    _all_verify(both)
    assert _snapshot(a) == snapshot
    _all_verify(a)
    assert not [p for p in (*a.iterdir(), *both.iterdir()) if ".enn-tmp-" in p.name]  # no scratch left behind
