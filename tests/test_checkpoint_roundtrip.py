"""Checkpoints restore exactly: bit-identical outputs, metadata, optimizer state, compiled models."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

import enn_nb
from enn_nb.checkpoint import Manifest
from enn_nb.checkpoint.schema import SCHEMA_FILE, schema, validate
from enn_nb.reference import ModelConfig, ReferenceModel

from tests.fixtures.models import features, forward, tiny


FORMATS = {"pt": "model.pt", "pth": "model.pth", "safetensors": "model.safetensors", "dcp": "model_dcp"}
METADATA = {"run": {"seed": 0, "lr": 3e-3, "tags": ["a", "b"], "nested": {"ok": True, "none": None}},
            "provenance": {"notebook": "train.ipynb", "cell": 4}}


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return features(64)


@pytest.mark.parametrize("fmt", ["pt", "pth", "safetensors", "dcp"])
def test_restored_model_is_bit_identical(trained_model, x, tmp_path, fmt):
    path = tmp_path / FORMATS[fmt]
    saved = enn_nb.save(trained_model, path, metadata=METADATA)
    loaded = enn_nb.load(path)
    assert type(loaded.model) is ReferenceModel and not loaded.model.training
    assert torch.equal(forward(loaded.model, x), forward(trained_model, x))
    for name, tensor in trained_model.state_dict().items():
        restored = loaded.model.state_dict()[name]
        assert restored.dtype == tensor.dtype and torch.equal(restored, tensor), name
    assert loaded.model.scaler.x_mean.dtype == torch.float64
    assert loaded.verified is True
    assert loaded.missing_keys == [] and loaded.unexpected_keys == []
    assert loaded.spec.metadata == METADATA and loaded.manifest.provenance == METADATA["provenance"]
    assert loaded.manifest.content_hash == saved.content_hash


def test_manifest_describes_the_model(trained_model, tmp_path):
    manifest = enn_nb.save(trained_model, tmp_path / "m.safetensors", metadata=METADATA)
    doc = manifest.to_dict()
    assert doc["schema"] == "enn_nb.checkpoint/2" and doc["format"] == "safetensors"
    validate(doc)  # the shipped JSON Schema accepts what we write
    spec = doc["spec"]
    assert spec["builder"] == "enn_nb.reference"
    assert spec["in_dim"] == trained_model.in_dim and spec["out_shape"] == list(trained_model.out_shape)
    assert [t["name"] for t in spec["tasks"]] == ["load", "peak"]
    assert spec["scaler"] == json.loads(json.dumps(trained_model.scaler_state()))
    assert spec["embedding"] == json.loads(json.dumps(trained_model.embedding_spec()))
    assert spec["config"]["d_model"] == trained_model.config.d_model
    assert doc["versions"]["torch"] == torch.__version__ and doc["versions"]["enn_nb"] == enn_nb.__version__
    assert doc["versions"]["python"] and doc["versions"]["safetensors"]
    assert doc["created"].endswith("Z")
    state = trained_model.state_dict()
    table = {t["name"]: t for t in doc["tensors"]}
    assert set(table) == set(state)
    for name, tensor in state.items():
        row = table[name]
        assert row["dtype"] == str(tensor.dtype).removeprefix("torch.")
        assert row["shape"] == list(tensor.shape)
        assert row["nbytes"] == tensor.numel() * tensor.element_size()
        assert row["hash"].startswith("blake3:") and len(row["hash"]) == len("blake3:") + 64
    assert table["scaler.x_mean"]["dtype"] == "float64"


def test_content_hash_is_the_same_in_every_format_and_changes_with_weights(trained_model, tmp_path):
    hashes = {fmt: enn_nb.save(trained_model, tmp_path / name).content_hash for fmt, name in FORMATS.items()}
    assert len(set(hashes.values())) == 1
    model = ReferenceModel(trained_model.config)
    model.load_state_dict(trained_model.state_dict())
    with torch.no_grad():
        model.pos[0, 0] += 1e-6
    assert enn_nb.save(model, tmp_path / "changed.pt").content_hash != hashes["pt"]


def test_metadata_takes_any_json_and_rejects_objects(tmp_path):
    model = tiny()
    meta = {"int": 1, "float": 0.25, "list": [1, [2, 3]], "dict": {"x": {"y": "z"}}, "bool": False, "null": None}
    enn_nb.save(model, tmp_path / "m.pt", metadata=meta)
    assert enn_nb.inspect(tmp_path / "m.pt").metadata == meta
    with pytest.raises(enn_nb.errors.SpecError, match=r"metadata\.bad"):
        enn_nb.save(model, tmp_path / "bad.pt", metadata={"bad": object()})
    assert not (tmp_path / "bad.pt").exists()


def test_pt_loads_with_plain_torch_weights_only(trained_model, tmp_path):
    path = tmp_path / "m.pt"
    manifest = enn_nb.save(trained_model, path)
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"enn_nb.manifest", "state_dict"}
    assert json.loads(payload["enn_nb.manifest"])["spec"]["builder"] == "enn_nb.reference"
    for name, tensor in trained_model.state_dict().items():
        assert torch.equal(payload["state_dict"][name], tensor)
    mapped = torch.load(path, weights_only=True, mmap=True)
    assert torch.equal(mapped["state_dict"]["pos"], trained_model.pos.detach())
    assert manifest.path == str(path)


def test_safetensors_file_opens_with_the_safetensors_library(trained_model, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = tmp_path / "m.safetensors"
    enn_nb.save(trained_model, path)
    tensors = load_file(path)
    for name, tensor in trained_model.state_dict().items():
        assert torch.equal(tensors[name], tensor)
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    assert list(meta) == ["enn_nb.manifest"]
    assert json.loads(meta["enn_nb.manifest"])["schema"] == "enn_nb.checkpoint/2"
    with open(path, "rb") as fh:  # tensor data starts 8-byte aligned
        (n,) = struct.unpack("<Q", fh.read(8))
    assert (8 + n) % 8 == 0


def test_inspect_reads_no_tensor_data(trained_model, tmp_path):
    """Tensor bytes replaced by garbage: inspect still works (it never reads them), load refuses."""
    from tests.fixtures.files import pt_record_offset, safetensors_offset

    st = tmp_path / "m.safetensors"
    enn_nb.save(trained_model, st)
    offset, size = safetensors_offset(st, "blocks.0.attn.qkv.weight")
    with open(st, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * size)
    pt = tmp_path / "m.pt"
    enn_nb.save(trained_model, pt)
    offset, size = pt_record_offset(pt, "data/0")
    with open(pt, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * size)
    for path in (st, pt):
        manifest = enn_nb.inspect(path)
        assert manifest.spec.builder == "enn_nb.reference" and len(manifest.tensors) == len(trained_model.state_dict())
        with pytest.raises(enn_nb.errors.CorruptCheckpointError):
            enn_nb.load(path)


def test_manifest_renders_as_html_and_text(trained_model, tmp_path):
    manifest = enn_nb.save(trained_model, tmp_path / "m.pt", metadata={"note": "<b>x</b>"})
    page = manifest._repr_html_()
    assert page.count("<table") == 2 and "blocks.0.attn.qkv.weight" in page and "float64" in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
    text = str(manifest)
    assert text == repr(manifest)
    assert "content_hash" in text and manifest.content_hash in text and "enn_nb.reference" in text
    assert "scaler.x_mean" in text and "[36]" in text
    assert isinstance(manifest, Manifest) and manifest.tensor("pos").shape == (12, 32)


def test_schema_file_is_shipped_and_valid():
    import jsonschema

    assert SCHEMA_FILE.is_file() and SCHEMA_FILE.parent.name == "schemas"
    jsonschema.Draft202012Validator.check_schema(schema())


@pytest.mark.parametrize("fmt", ["pt", "safetensors", "dcp"])
def test_adam_state_round_trips(tmp_path, fmt):
    torch.manual_seed(0)
    model = tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.01)
    data = torch.randn(32, model.in_dim)
    for _ in range(3):
        opt.zero_grad()
        model.forward_export(data).square().mean().backward()
        opt.step()
    path = tmp_path / FORMATS[fmt]
    manifest = enn_nb.save(model, path, optimizer=opt)
    assert manifest.optimizer["class"] == "Adam"
    names = [t["name"] for t in manifest.optimizer["tensors"]]
    assert "__optimizer__/state/0/exp_avg" in names and "__optimizer__/state/3/exp_avg_sq" in names
    loaded = enn_nb.load(path)
    state = loaded.optimizer_state
    original = opt.state_dict()
    assert state["param_groups"] == original["param_groups"]
    assert isinstance(state["param_groups"][0]["betas"], tuple)
    for pid, entry in original["state"].items():
        for key, value in entry.items():
            assert torch.equal(state["state"][pid][key], value), (pid, key)
    # the restored optimizer takes the very same next step
    opt2 = torch.optim.Adam(loaded.model.parameters(), lr=0.5)
    opt2.load_state_dict(state)
    for o, m in ((opt, model), (opt2, loaded.model)):
        o.zero_grad()
        m.forward_export(data).square().mean().backward()
        o.step()
    for a, b in zip(model.parameters(), loaded.model.parameters()):
        assert torch.equal(a, b)


def test_safetensors_optimizer_tensors_use_the_documented_prefix(tmp_path):
    from safetensors import safe_open

    model = tiny()
    opt = torch.optim.Adam(model.parameters())
    model.forward_export(torch.randn(4, model.in_dim)).sum().backward()
    opt.step()
    path = tmp_path / "m.safetensors"
    enn_nb.save(model, path, optimizer=opt)
    with safe_open(str(path), framework="pt") as fh:
        keys = set(fh.keys())
    assert {k for k in keys if k.startswith("__optimizer__/")} == {
        f"__optimizer__/state/{i}/{k}" for i in range(4) for k in ("step", "exp_avg", "exp_avg_sq")
    }


class _Wrapper(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = torch.compile(inner)  # a real OptimizedModule child: keys get `_orig_mod.`


def test_compile_wrapper_keys_are_normalised(trained_model, x, tmp_path):
    compiled = torch.compile(trained_model)
    assert any("_orig_mod." in k for k in compiled.state_dict())
    path = tmp_path / "compiled.safetensors"
    manifest = enn_nb.save(compiled, path)  # spec read through the wrapper's attributes
    assert all("_orig_mod" not in t.name for t in manifest.tensors)
    assert manifest.content_hash == enn_nb.save(trained_model, tmp_path / "plain.pt").content_hash
    plain = enn_nb.load(path).model  # plain model built from the manifest
    assert torch.equal(forward(plain, x), forward(trained_model, x))
    target = torch.compile(ReferenceModel(trained_model.config).eval())  # load into a compiled model
    enn_nb.load(tmp_path / "plain.pt", model=target)
    assert torch.equal(forward(target._orig_mod, x), forward(trained_model, x))
    nested = _Wrapper(tiny(seed=1))
    assert "inner._orig_mod.fc1.weight" in nested.state_dict()
    enn_nb.save(nested, tmp_path / "nested.pt", spec=enn_nb.ModelSpec())
    names = [t.name for t in enn_nb.inspect(tmp_path / "nested.pt").tensors]
    assert names == ["inner.mean", "inner.fc1.weight", "inner.fc1.bias", "inner.fc2.weight", "inner.fc2.bias"]
    other = _Wrapper(tiny(seed=2))
    enn_nb.load(tmp_path / "nested.pt", model=other)
    for a, b in zip(nested.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)


def test_reference_model_with_compile_blocks_round_trips(trained_model, x, tmp_path):
    config = ModelConfig.from_dict({**trained_model.config.to_dict(), "compile_blocks": True})
    model = ReferenceModel(config)
    model.load_state_dict(trained_model.state_dict())
    path = tmp_path / "cb.pt"
    enn_nb.save(model, path)
    loaded = enn_nb.load(path)
    assert loaded.model.config.compile_blocks is True and loaded.spec.config["compile_blocks"] is True
    loaded.model.compile_blocks = False  # compare eagerly (compiling would take long on CI)
    assert torch.equal(forward(loaded.model, x), forward(trained_model, x))


def test_load_into_given_model_and_map_location(trained_model, x, tmp_path):
    path = tmp_path / "m.pt"
    enn_nb.save(trained_model, path)
    target = ReferenceModel(trained_model.config).eval()
    result = enn_nb.load(path, model=target, map_location="cpu")
    assert result.model is target
    assert torch.equal(forward(target, x), forward(trained_model, x))


def test_convert_between_all_formats_keeps_the_manifest(trained_model, x, tmp_path):
    first = enn_nb.save(trained_model, tmp_path / "a.pt", metadata=METADATA)
    chain = ["b.safetensors", "c_dcp", "d.pth", "e.safetensors"]
    src = tmp_path / "a.pt"
    for name in chain:
        converted = enn_nb.convert(src, tmp_path / name)
        assert converted.content_hash == first.content_hash
        assert converted.metadata == METADATA and converted.created == first.created
        assert converted.source["converted_from"] == enn_nb.inspect(src).format
        assert torch.equal(forward(enn_nb.load(tmp_path / name).model, x), forward(trained_model, x))
        src = tmp_path / name
    explicit = enn_nb.convert(tmp_path / "a.pt", tmp_path / "dir_as_dcp", format="dcp")
    assert explicit.format == "dcp" and (tmp_path / "dir_as_dcp" / "enn_nb.manifest.json").is_file()


def test_save_format_from_suffix_and_errors(tmp_path):
    model = tiny()
    assert enn_nb.save(model, tmp_path / "a.pth").format == "pt"
    assert enn_nb.save(model, tmp_path / "noext").format == "dcp"
    assert enn_nb.save(model, tmp_path / "x.bin", format="safetensors").format == "safetensors"
    assert enn_nb.inspect(tmp_path / "x.bin").format == "safetensors"  # detected by content
    with pytest.raises(enn_nb.errors.UnknownNameError, match=r"\.ckpt.*format="):
        enn_nb.save(model, tmp_path / "a.ckpt")
    with pytest.raises(enn_nb.errors.UnknownNameError, match="onnx"):
        enn_nb.save(model, tmp_path / "a.pt", format="onnx")


def test_loaded_unpacks_and_renders(tmp_path):
    model = tiny()
    enn_nb.save(model, tmp_path / "m.safetensors")
    restored, manifest = enn_nb.load(tmp_path / "m.safetensors")
    assert isinstance(manifest, Manifest) and restored.fc1.weight.shape == (8, 6)
    assert "verified=True" in repr(enn_nb.load(tmp_path / "m.safetensors"))


def test_saving_over_an_existing_checkpoint_replaces_it(tmp_path):
    for fmt in ("m.pt", "m.safetensors", "m_dcp"):
        path = tmp_path / fmt
        enn_nb.save(tiny(seed=1), path)
        second = tiny(seed=2)
        enn_nb.save(second, path)
        loaded = enn_nb.load(path).model
        assert torch.equal(loaded.fc1.weight, second.fc1.weight)
    leftovers = [p.name for p in tmp_path.iterdir() if ".enn-tmp-" in p.name]
    assert leftovers == []


def test_spec_argument_overrides_the_model(tmp_path):
    model = tiny()
    spec = enn_nb.ModelSpec.from_model(model).replace(tasks=[{"name": "custom"}])
    manifest = enn_nb.save(model, Path(tmp_path / "m.pt"), spec=spec.to_dict())
    assert manifest.spec.tasks == [{"name": "custom"}]


class _Zoo(torch.nn.Module):
    """Every dtype the formats share, a 0-d tensor, an empty one, a non-contiguous one, tied weights."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("bf16", torch.randn(3, 5, generator=g).to(torch.bfloat16))
        self.register_buffer("f16", torch.randn(7, generator=g).to(torch.float16))
        self.register_buffer("f64", torch.randn(2, 2, generator=g, dtype=torch.float64))
        self.register_buffer("i64", torch.arange(-5, 6))
        self.register_buffer("i8", torch.tensor([-128, 0, 127], dtype=torch.int8))
        self.register_buffer("u8", torch.tensor([0, 255], dtype=torch.uint8))
        self.register_buffer("flags", torch.tensor([True, False, True]))
        self.register_buffer("scalar", torch.tensor(3.25))
        self.register_buffer("empty", torch.zeros(0, 4))
        self.register_buffer("strided", torch.arange(12.0).reshape(3, 4).t())
        self.a = torch.nn.Linear(3, 3)
        self.b = torch.nn.Linear(3, 3)
        self.b.weight = self.a.weight  # tied


@pytest.mark.parametrize("name", ["z.pt", "z.safetensors", "z_dcp"])
def test_every_dtype_and_odd_tensors_round_trip(tmp_path, name):
    zoo = _Zoo()
    assert not zoo.strided.is_contiguous()
    enn_nb.save(zoo, tmp_path / name, spec=enn_nb.ModelSpec())
    target = _Zoo()
    with torch.no_grad():
        for t in target.state_dict().values():
            t.zero_() if t.dtype != torch.bool else t.logical_not_()
    loaded = enn_nb.load(tmp_path / name, model=target)
    assert loaded.verified
    for key, tensor in zoo.state_dict().items():
        got = target.state_dict()[key]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape and torch.equal(got, tensor), key
    assert target.b.weight is target.a.weight
    table = {t.name: t for t in loaded.manifest.tensors}
    assert table["scalar"].shape == () and table["empty"].nbytes == 0 and table["bf16"].dtype == "bfloat16"
