"""The export-safe context: every switch made, recorded, and undone exactly (also on errors, nested, threads)."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn


import enn_nb
from enn_nb.errors import FastPathExportError
from enn_nb.engine import sidecar
from enn_nb.engine.safe import export_safe, is_active, state_fingerprint
from enn_nb.model.fastpaths import declared_fast_paths


@pytest.fixture()
def model(trained_model):
    return copy.deepcopy(trained_model)  # the session model must not be mutated


def _x(model, batch=5, seed=0):
    from enn_nb.model.examples import default_example_inputs
    from enn_nb.model.spec import ModelSpec

    spec = ModelSpec.from_model(model)
    return default_example_inputs(spec, spec.in_dim, "float32", batch=batch, seed=seed)[0]


def _snapshot(model):
    with torch.no_grad():
        out = model.forward_export(_x(model))
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        state_fingerprint(model),
        out,
    )


def _assert_same(before, after):
    sd0, fp0, out0 = before
    sd1, fp1, out1 = after
    assert sd0.keys() == sd1.keys()
    for k in sd0:
        assert torch.equal(sd0[k], sd1[k]), k
    assert fp0 == fp1
    assert torch.equal(out0, out1)


def test_switches_every_declared_fast_path_and_records_it(model):
    fast = {p.name: p.current for p in declared_fast_paths(model) if p.is_fast}
    # the reference model ships with FlexAttention, the fused custom op and bucketize calibration on
    assert any(n.endswith("attn.impl") for n in fast) and fast[next(n for n in fast if n.endswith("attn.impl"))] == "flex"
    assert any(n.endswith(".fused") for n in fast)
    assert any(n.endswith("calibration") for n in fast)
    model.train()
    with export_safe(model) as state:
        assert state.model is model
        assert all(not p.is_fast for p in declared_fast_paths(model))
        assert all(not m.training for m in model.modules())
        assert torch.backends.cuda.math_sdp_enabled() and not torch.backends.cuda.flash_sdp_enabled()
        recorded = {d.name: d for d in state.deviations}
        for name, old in fast.items():
            assert recorded[name].from_ == old
            assert recorded[name].to == next(p.safe_value for p in declared_fast_paths(model) if p.name == name)
            assert recorded[name].reason
        assert recorded["training"].kind == "mode" and recorded["training"].from_ is True
        assert recorded["torch.sdpa_kernel"].to == ["math"]
        as_json = state.to_list()
        assert {"name", "kind", "from", "to", "reason"} <= set(as_json[0])
    assert all(m.training for m in model.modules())
    assert torch.backends.cuda.flash_sdp_enabled()


def test_restores_exactly_also_when_the_block_raises(model):
    model.eval()
    before = _snapshot(model)
    model.blocks[0].train()  # mixed training flags must come back mixed
    flags = [m.training for m in model.modules()]
    fingerprint = state_fingerprint(model)
    with pytest.raises(RuntimeError, match="boom"):
        with export_safe(model):
            assert is_active(model)
            assert not any(m.training for m in model.modules())
            raise RuntimeError("boom")
    assert not is_active(model)
    assert [m.training for m in model.modules()] == flags
    assert state_fingerprint(model) == fingerprint
    model.blocks[0].eval()
    _assert_same(before, _snapshot(model))


def test_state_attributes_flags_and_outputs_identical_before_and_after(model):
    model.eval()
    before = _snapshot(model)
    with export_safe(model) as state:
        with torch.no_grad():
            safe_out = model.forward_export(_x(model))
        assert state.deviations
    after = _snapshot(model)
    _assert_same(before, after)
    # the safe paths compute the same function (flex vs math, fused op vs reference, bucketize vs static)
    torch.testing.assert_close(safe_out, before[2], atol=1e-4, rtol=1e-4)


def test_nested_and_concurrent_blocks_share_switches_and_restore_once(model):
    before = _snapshot(model)
    with export_safe(model) as outer:
        with export_safe(model) as inner:
            assert [d.name for d in inner.deviations] == [d.name for d in outer.deviations]
        # leaving the inner block must not turn the fast paths back on under the outer one
        assert all(not p.is_fast for p in declared_fast_paths(model))
    _assert_same(before, _snapshot(model))

    inside = threading.Barrier(4)
    errors: list[BaseException] = []

    def worker(hold: float) -> None:
        try:
            with export_safe(model):
                inside.wait(timeout=30)
                assert all(not p.is_fast for p in declared_fast_paths(model))
                threading.Event().wait(hold)
                assert all(not p.is_fast for p in declared_fast_paths(model))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(0.01 * i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    _assert_same(before, _snapshot(model))
    assert torch.backends.cuda.flash_sdp_enabled()


def test_two_models_are_independent(model, trained_model):
    other = copy.deepcopy(trained_model)
    with export_safe(model):
        assert any(p.is_fast for p in declared_fast_paths(other))
    assert any(p.is_fast for p in declared_fast_paths(model))


class _Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        q = self.proj(x).reshape(x.shape[0], 2, 4, 2)
        return self.drop(F.scaled_dot_product_attention(q, q, q).reshape(x.shape[0], 4, 4))


def test_generic_switches_on_a_plain_module_compiled_children_and_in_place_compile():
    torch.manual_seed(0)
    root = nn.Sequential(_Attn(), nn.Linear(4, 2))
    original = root[0]
    root[0] = torch.compile(original)  # an OptimizedModule child (compiled lazily, never called here)
    root[1].compile()  # compiled in place
    root.train()
    assert type(root[0]).__name__ == "OptimizedModule"
    with export_safe(root) as state:
        assert root[0] is original
        assert root[1]._compiled_call_impl is None
        assert not root.training and not original.training
        kinds = sorted(d.kind for d in state.deviations)
        assert kinds.count("compiled") == 2 and "mode" in kinds and "attention" in kinds
        x = torch.randn(3, 2, 8)
        ep = torch.export.export(root, (x,))  # the eager originals are traceable
        assert ep is not None
    assert type(root[0]).__name__ == "OptimizedModule" and root[0]._orig_mod is original
    assert root[1]._compiled_call_impl is not None
    assert root.training and original.training


def test_a_compiled_top_level_model_yields_its_original():
    mlp = nn.Linear(3, 2)
    compiled = torch.compile(mlp)
    with export_safe(compiled) as state:
        assert state.model is mlp
        assert state.deviations[0].name == "<model>" and state.deviations[0].kind == "compiled"
        # the wrapper and its original share one set of switches
        with export_safe(mlp) as inner:
            assert inner.model is mlp
    assert not is_active(mlp)


def test_sdpa_can_be_left_alone():
    mlp = nn.Linear(3, 2).eval()
    with export_safe(mlp, sdpa=None) as state:
        assert torch.backends.cuda.flash_sdp_enabled()
        assert state.deviations == []


def _only_on(model, suffix):
    for path in declared_fast_paths(model):
        if not path.name.endswith(suffix):
            setattr(path.module, path.attr, path.safe_value)
    on = [p.name for p in declared_fast_paths(model) if p.is_fast]
    assert on and all(n.endswith(suffix) for n in on)
    return on


@pytest.mark.parametrize(
    ("suffix", "marker"),
    [(".fused", "enn_nb::fused_gelu_linear"), ("attn.impl", "FlexAttention")],
)
def test_export_with_a_fast_path_on_fails_naming_it(model, tmp_path, suffix, marker):
    on = _only_on(model, suffix)
    with pytest.raises(FastPathExportError) as info:
        enn_nb.export(model, "pt2", out_dir=tmp_path, safe=False, isolate=False, cache=False, verify=False)
    err = info.value
    assert err.fast_path == on[0]
    assert marker in str(err) and "export_safe" in str(err) and "safe=True" in str(err)
    data = sidecar.read(tmp_path / "model.pt2.enn.json")
    assert data["status"] == "failed" and data["stage"] == "capture"
    assert data["error"]["type"] == "FastPathExportError" and data["error"]["fast_path"] == on[0]
    assert err.report["pt2"].status == "failed"
    # the same model exports with the context on (the default), which records the switch
    report = enn_nb.export(model, "pt2", out_dir=tmp_path, isolate=False, cache=False)
    assert report["pt2"].status == "ok"
    assert {d["name"] for d in report.deviations} >= set(on)


def test_compiled_blocks_are_exported_eager_and_switched_back(model, tmp_path):
    model.compile_blocks = True  # what ModelConfig(compile_blocks=True) sets
    report = enn_nb.export(model, "pt2", out_dir=tmp_path, isolate=False, cache=False, verify=False)
    assert report["pt2"].status == "ok"
    compiled = next(d for d in report.deviations if d["name"] == "compile_blocks")
    assert compiled == {**compiled, "kind": "compiled", "from": True, "to": False}
    assert model.compile_blocks is True
    program = torch.export.load(str(report["pt2"].artifact))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("fused_gelu_linear" in t or "flex" in t or "bucketize" in t for t in targets)
