"""Models from elsewhere, small and local, of the shapes that broke: a Swin-style window partition and
ops coremltools lacks (CoreML), a decoder with one key/value head (LiteRT), static artifacts checked at
every batch they accept, and mismatches that say by how much and where."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import enn_nb


def _export(model, backends, tmp_path, x, **kw):
    report = enn_nb.export(model.eval(), backends, out_dir=tmp_path, example_inputs=(x,), isolate=False, cache=False, **kw)
    return {r.backend: r for r in report.results}


def _sidecar(result):
    return json.loads(result.sidecar.read_text())


class WindowPartition(nn.Module):
    """Swin's window partition: a rank-6 view of ``[B, H, W, C]`` (CoreML allows rank <= 5 with a dynamic batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        b, h, w, c = x.shape
        windows = x.view(b, h // 4, 4, w // 4, 4, c).permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, 16, c)
        return self.proj(windows).view(b, -1)


class Windows1d(nn.Module):
    """``unfold`` (sliding windows) and ``aten.alias``: ops coremltools 9 has no conversion for."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 2)

    def forward(self, x):
        return self.proj(torch.ops.aten.alias(x).unfold(1, 3, 2)).sum(1)


class Float64Scaler(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 3)
        self.register_buffer("mean", torch.linspace(-1, 1, 6, dtype=torch.float64))

    def forward(self, x):
        return self.proj((x.double() - self.mean).float())


@pytest.mark.slow
def test_coreml_falls_back_to_static_shapes_for_a_rank6_window_partition(tmp_path):
    result = _export(WindowPartition(), "coreml", tmp_path, torch.randn(2, 8, 8, 4))["coreml"]
    assert result.status == "ok", result.error
    data = _sidecar(result)
    assert data["conversion_path"] == {"name": "static-shapes", "costs": ["static batch 2"]}
    assert data["dynamic_batch"] is False and data["inputs"][0]["shape"] == [2, 8, 8, 4]
    assert any("rank <= 5" in n and "accepts batch 2 only" in n for n in result.notes)


def test_coreml_rewrites_unfold_and_alias_and_records_it(tmp_path):
    result = _export(Windows1d(), "coreml", tmp_path, torch.randn(2, 11))["coreml"]
    assert result.status == "ok", result.error
    path = _sidecar(result)["conversion_path"]
    assert path["name"] == "core-aten+rewrites"
    assert "`unfold` as an `index_select` of the windows" in path["costs"][1] and "`alias` as a `view`" in path["costs"][1]
    assert result.dynamic_batch is True  # the rewrite keeps the dynamic batch
    assert any("checked against the captured one in torch" in n for n in result.notes)


def test_the_unfold_rewrite_computes_what_unfold_computes():
    from enn_nb.engine.backends.coreml import _rewrite_table

    model = Windows1d().eval()
    for x in (torch.randn(3, 11), torch.randn(5, 7)):
        ep = torch.export.export(model, (x,))
        rewritten = ep.run_decompositions(_rewrite_table())
        ops = {str(n.target) for n in rewritten.graph.nodes if n.op == "call_function"}
        assert not any("unfold" in op or "alias" in op for op in ops)
        torch.testing.assert_close(rewritten.module()(x), model(x), rtol=1e-6, atol=1e-6)


def test_coreml_float64_note_only_for_models_with_float64(tmp_path):
    results = [
        _export(m, "coreml", tmp_path / name, torch.randn(2, 6))["coreml"]
        for name, m in (("plain", nn.Sequential(nn.Linear(6, 3))), ("scaler", Float64Scaler()))
    ]
    float64 = [any("float64" in n for n in r.notes) for r in results]
    assert float64 == [False, True]


# -- LiteRT: a decoder with one key/value head ---------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class SingleKvHeadDecoder(nn.Module):
    """Llama/Mistral/Qwen2-style block with GQA's ``repeat_kv`` (expand + reshape) and ``kv_heads`` KV heads."""

    def __init__(self, kv_heads: int = 1, heads: int = 4, dim: int = 32, vocab: int = 50) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.embed = nn.Embedding(vocab, dim)
        self.norm = RMSNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.v = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        self.head = nn.Linear(dim, vocab, bias=False)

    def repeat_kv(self, x):
        b, kv, t, d = x.shape
        rep = self.heads // kv
        return x[:, :, None].expand(b, kv, rep, t, d).reshape(b, kv * rep, t, d)

    def forward(self, ids):
        b, t = ids.shape
        x = self.embed(ids)
        h = self.norm(x)
        q = self.q(h).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.repeat_kv(self.k(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2))
        v = self.repeat_kv(self.v(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2))
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(x + self.o(attn.transpose(1, 2).reshape(b, t, -1)))


@pytest.mark.slow
def test_litert_single_kv_head_decoder_matches_after_the_repeat_is_materialised(tmp_path):
    torch.manual_seed(0)
    result = _export(SingleKvHeadDecoder(kv_heads=1), "litert", tmp_path, torch.randint(0, 50, (2, 9)))["litert"]
    assert result.status == "ok", result.error
    assert result.parity["status"] == "passed" and result.max_abs_err < 1e-5
    path = _sidecar(result)["conversion_path"]
    assert path["name"] == "kv-repeat-as-cat" and path["costs"][0].startswith("2 single-KV-head repeat(s)")
    assert any("tfl.batch_matmul" in n for n in result.notes)
    # its reshapes fix the batch: the other batches are refused, and the result says so
    assert [r["batch_size"] for r in result.parity["refused"]] == [1, 7]
    assert result.parity["batches"] == [2]
    assert any(n.startswith("checked at batch 2 only: the artifact is static and refuses batch 1, 7") for n in result.notes)


def test_the_single_kv_head_rewrite_leaves_several_kv_heads_alone():
    from enn_nb.engine.backends.litert import materialise_single_head_repeats

    x = torch.randint(0, 50, (2, 9))
    for kv_heads, expected in ((1, 2), (2, 0)):
        model = SingleKvHeadDecoder(kv_heads=kv_heads).eval()
        gm = torch.export.export(model, (x,)).module()
        assert materialise_single_head_repeats(gm) == expected
        torch.testing.assert_close(gm(x), model(x))


# -- every batch a static artifact accepts; mismatches with figures ----------------------------------
def test_a_static_artifact_is_checked_at_every_batch_it_accepts_and_says_when_only_one(tmp_path):
    mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(2, 6)
    litert = _export(mlp, "litert", tmp_path / "lite", x)["litert"]
    assert litert.dynamic_batch is False  # static by default, yet its interpreter resizes an MLP's inputs
    assert litert.parity["batches"] == [1, 2, 7] and "only_batch" not in litert.parity
    static_onnx = _export(mlp, "onnx", tmp_path / "onnx", x, dynamic_batch=False)["onnx"]
    assert static_onnx.parity["batches"] == [2]
    assert static_onnx.parity["only_batch"].startswith("checked at batch 2 only: the artifact is static")
    assert static_onnx.parity["only_batch"] in static_onnx.notes


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 2)
        self.b = nn.Linear(6, 64)

    def forward(self, x):
        return {"exact": self.a(x).round(), "soft": self.b(x).softmax(-1).cumsum(-1)}


def test_a_mismatch_carries_its_figures_and_worst_output_and_batch(tmp_path):
    result = _export(TwoHeads(), "onnx", tmp_path, torch.randn(2, 6), tolerances=(1e-15, 0.0))["onnx"]
    assert result.status == "mismatch"
    worst = max(result.parity["cases"], key=lambda c: c["max_abs_err"])
    assert result.error_type == "ParityError"
    assert f"max abs error {worst['max_abs_err']:.3e}" in result.error
    assert f"worst: output `soft` at batch {worst['batch_size']}" in result.error
    assert "atol=1e-15 rtol=0.0" in result.error
