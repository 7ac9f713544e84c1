"""The export cache: what goes into a key, the store (hard links or copies), and hits that must be exact."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

import enn_nb
from enn_nb.engine import cache
from enn_nb.engine.plan import Plan
from enn_nb.engine.registry import get_backend
from enn_nb.engine.settings import ExportSettings
from enn_nb.engine.tolerance import parse_tolerances

from tests.fixtures.models import TinyMLP


def _key(out: Path, name: str = "pt2", **settings) -> str:
    backend = get_backend(name)
    plan = Plan(0, name, backend, dict(backend.default_options), backend.default_tolerance)
    digest = {"program": "p", "inputs": "x"}
    return cache.export_key(plan, digest, None, {"kind": "model"}, ExportSettings(names=(name,), out=out, **settings))


def test_the_key_changes_with_what_changes_the_artifact_only(tmp_path):
    base = _key(tmp_path)
    assert _key(tmp_path / "elsewhere") == base  # the output folder is not part of it
    assert _key(tmp_path, tolerances=parse_tolerances({"onnx": (0, 0)})) == base  # another backend's tolerance
    for changed in ({"stem": "net"}, {"batch_range": (1, 4, 16)}, {"metadata": {"run": 2}}, {"safe": False},
                    {"tolerances": parse_tolerances({"atol": 0})}, {"dynamic_batch": False}):
        assert _key(tmp_path, **changed) != base, changed
    # the shared ONNX's options matter to ONNX consumers only
    assert _key(tmp_path, options={"onnx": {"opset": 18}}) == base
    assert _key(tmp_path, "onnx", options={"onnx": {"opset": 18}}) != _key(tmp_path, "onnx")


def test_program_digest_sees_weights_and_what_the_graph_computes():
    x = torch.randn(2, 6)

    def digest(model: torch.nn.Module) -> str:
        return cache.program_digest(torch.export.export(model, (x,)))

    a, b = TinyMLP(), TinyMLP()
    assert digest(a) == digest(b)
    b.net[0].some_setting = "fast"  # a setting the forward never reads: the program is the same
    assert digest(a) == digest(b)
    with torch.no_grad():
        a.net[0].weight[0, 0] += 1
    assert digest(a) != digest(TinyMLP())


def test_store_and_fetch_place_the_same_bytes_atomically(tmp_path, isolated_export_cache):
    src = tmp_path / "src"
    (src / "model.dir").mkdir(parents=True)
    (src / "model.bin").write_bytes(b"artifact")
    (src / "model.dir" / "inner").write_bytes(b"inside a directory artifact")
    cache.store("ab" * 32, src, ["model.bin", "model.dir"])
    stored = cache.store_dir("ab" * 32)
    assert stored.is_relative_to(isolated_export_cache) and (stored / "model.bin").read_bytes() == b"artifact"
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "model.bin").write_bytes(b"old")
    assert cache.fetch("ab" * 32, ["model.bin", "model.dir"], dst)
    assert (dst / "model.bin").read_bytes() == b"artifact"
    assert (dst / "model.dir" / "inner").read_bytes() == b"inside a directory artifact"
    assert not [p.name for p in dst.iterdir() if p.name.startswith(".")]  # no temporary names left
    assert not cache.fetch("cd" * 32, ["model.bin"], dst)


def test_a_tampered_artifact_is_no_hit(tmp_path):
    kwargs = {"out_dir": tmp_path, "example_inputs": torch.randn(2, 6), "isolate": False}
    first = enn_nb.export(TinyMLP(), "pt2", **kwargs)
    assert first["pt2"].status == "ok" and not first["pt2"].cached
    assert enn_nb.export(TinyMLP(), "pt2", **kwargs)["pt2"].cached
    artifact = first["pt2"].artifact
    data = artifact.read_bytes()
    artifact.unlink()  # shared with the store (a read-only hard link here, or a clone): replaced, as a user would
    artifact.write_bytes(data + b"\0")
    os.remove(cache.store_dir(json.loads(first["pt2"].sidecar.read_text())["cache_key"]) / artifact.name)
    again = enn_nb.export(TinyMLP(), "pt2", **kwargs)["pt2"]
    assert again.status == "ok" and not again.cached  # converted anew
    assert enn_nb.verify(again.artifact).ok and not enn_nb.verify(again.artifact).problems
