"""ENN-PyTorch (upstream) checkpoints load: .pt payloads, safetensors with header JSON or a sidecar, DCP + meta.json.

The fixtures are built here from the documented upstream layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import enn_nb
from enn_nb.checkpoint import UPSTREAM_BUILDER
from enn_nb.errors import CorruptCheckpointError, UnknownNameError
from enn_nb.reference import ModelConfig, ReferenceModel

from tests.fixtures.models import features, forward


META_FIELDS = ("version", "in_dim", "out_shape", "config", "pytorch_version", "extra", "tasks")


def _meta(model: ReferenceModel, *, drop: tuple[str, ...] = ()) -> dict:
    meta = {
        "version": 3,
        "in_dim": model.in_dim,
        "out_shape": list(model.out_shape),
        "config": model.config.to_dict(),
        "pytorch_version": "2.5.1",
        "extra": {"trained_on": "grid-A", "epochs": 12},
        "tasks": {"load": {"kind": "regression"}, "peak": {"kind": "binary"}},
    }
    return {k: v for k, v in meta.items() if k not in drop}


def _upstream_pt(path: Path, model: ReferenceModel, *, drop: tuple[str, ...] = (), optimizer=None) -> Path:
    payload = {**_meta(model, drop=drop), "state_dict": model.state_dict()}
    if optimizer is not None:
        payload["optimizer_state_dict"] = optimizer.state_dict()
    torch.save(payload, path)
    return path


@pytest.fixture
def upstream_builder():
    """Register the ENN-PyTorch architecture under the upstream builder name, as a user would."""

    def build(spec: enn_nb.ModelSpec) -> ReferenceModel:
        return ReferenceModel(ModelConfig.from_dict(spec.config))

    enn_nb.register_builder(UPSTREAM_BUILDER, replace=True)(build)
    yield
    from enn_nb.model.spec import _builders

    _builders.unregister(UPSTREAM_BUILDER)


@pytest.fixture
def no_upstream_builder():
    """No `enn_pytorch` builder, as where enn_nb's entry point is not installed (the error path)."""
    from enn_nb.model.spec import _builders

    _builders.names()  # entry points read first, so the removal sticks
    saved = _builders._items.pop(UPSTREAM_BUILDER, None)
    yield
    if saved is not None:
        _builders._items[UPSTREAM_BUILDER] = saved


def _source(manifest) -> dict:
    """The source keys these fixtures pin (upstream manifests also name the variant and present fields)."""
    return {k: v for k, v in manifest.source.items() if k in ("layout", "missing_fields", "converted_from")}


def _fresh(model: ReferenceModel) -> ReferenceModel:
    return ReferenceModel(ModelConfig.from_dict(model.config.to_dict())).eval()


def test_upstream_pt_needs_model_or_builder_and_names_missing_fields(trained_model, tmp_path, no_upstream_builder):
    path = _upstream_pt(tmp_path / "up.pt", trained_model, drop=("extra", "tasks"))
    manifest = enn_nb.inspect(path)
    assert _source(manifest) == {"layout": "enn-pytorch", "missing_fields": ["extra", "tasks"]}
    assert manifest.spec.in_dim == trained_model.in_dim and manifest.spec.out_shape == (4, 2)
    assert manifest.spec.config["d_model"] == trained_model.config.d_model
    assert manifest.spec.builder == UPSTREAM_BUILDER and manifest.versions["torch"] == "2.5.1"
    with pytest.raises(UnknownNameError) as info:
        enn_nb.load(path)
    text = str(info.value)
    assert "`extra`" in text and "`tasks`" in text and "model=" in text and UPSTREAM_BUILDER in text
    x = features(32)
    loaded = enn_nb.load(path, model=_fresh(trained_model))
    assert torch.equal(forward(loaded.model, x), forward(trained_model, x))
    assert loaded.verified  # the zip's CRC-32 records were checked


def test_upstream_pt_with_registered_builder(trained_model, tmp_path, upstream_builder):
    torch.manual_seed(0)
    opt = torch.optim.Adam(trained_model.parameters(), lr=1e-3)
    path = _upstream_pt(tmp_path / "up.pt", trained_model, optimizer=opt)
    loaded = enn_nb.load(path)
    assert type(loaded.model) is ReferenceModel and not loaded.model.training
    x = features(32)
    assert torch.equal(forward(loaded.model, x), forward(trained_model, x))
    assert loaded.spec.tasks == [{"name": "load", "kind": "regression"}, {"name": "peak", "kind": "binary"}]
    assert loaded.spec.metadata["enn_pytorch"]["extra"] == {"trained_on": "grid-A", "epochs": 12}
    assert loaded.optimizer_state["param_groups"][0]["lr"] == 1e-3
    assert loaded.manifest.source["missing_fields"] == []


def test_upstream_pt_corruption_is_caught_by_the_zip_crc(trained_model, tmp_path):
    from tests.fixtures.files import flip_byte, pt_record_offset

    path = _upstream_pt(tmp_path / "up.pt", trained_model)
    offset, size = pt_record_offset(path, "data/5")
    flip_byte(path, offset + size // 2)
    with pytest.raises(CorruptCheckpointError, match="CRC"):
        enn_nb.load(path, model=_fresh(trained_model))


def test_upstream_safetensors_with_header_json(trained_model, tmp_path, upstream_builder):
    from safetensors.torch import save_file

    path = tmp_path / "up.safetensors"
    save_file({k: v.contiguous() for k, v in trained_model.state_dict().items()}, path,
              metadata={"enn_meta_json": json.dumps(_meta(trained_model, drop=("pytorch_version",)))})
    manifest = enn_nb.inspect(path)
    assert manifest.format == "safetensors" and manifest.source["missing_fields"] == ["pytorch_version"]
    assert manifest.tensor("scaler.x_mean").dtype == "float64"
    loaded = enn_nb.load(path)
    x = features(32)
    assert torch.equal(forward(loaded.model, x), forward(trained_model, x))
    assert loaded.verified is False  # upstream safetensors carry no hashes


def test_upstream_safetensors_with_sidecar(trained_model, tmp_path, no_upstream_builder):
    from safetensors.torch import save_file

    path = tmp_path / "up.safetensors"
    save_file({k: v.contiguous() for k, v in trained_model.state_dict().items()}, path)
    (tmp_path / "up.safetensors.json").write_text(json.dumps(_meta(trained_model, drop=("version",))))
    manifest = enn_nb.inspect(path)
    assert _source(manifest) == {"layout": "enn-pytorch", "missing_fields": ["version"]}
    assert manifest.spec.in_dim == trained_model.in_dim
    with pytest.raises(UnknownNameError, match="`version`"):
        enn_nb.load(path)
    loaded = enn_nb.load(path, model=_fresh(trained_model))
    assert torch.equal(loaded.model.pos, trained_model.pos)


def test_plain_safetensors_without_any_metadata(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(2, 3)}, path)
    manifest = enn_nb.inspect(path)
    assert _source(manifest) == {"layout": "safetensors", "missing_fields": list(META_FIELDS)}
    model = torch.nn.Module()
    model.register_buffer("w", torch.zeros(2, 3))
    assert torch.equal(enn_nb.load(path, model=model).model.w, torch.ones(2, 3))


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_upstream_dcp_directory_with_meta_json(trained_model, tmp_path, upstream_builder):
    import torch.distributed.checkpoint as dcp

    path = tmp_path / "up_dcp"
    dcp.save({"model": trained_model.state_dict()}, checkpoint_id=str(path), no_dist=True)
    (path / "meta.json").write_text(json.dumps(_meta(trained_model, drop=("extra",))))
    manifest = enn_nb.inspect(path)
    assert manifest.format == "dcp" and manifest.source["missing_fields"] == ["extra"]
    assert {t.name for t in manifest.tensors} == set(trained_model.state_dict())
    loaded = enn_nb.load(path)
    x = features(32)
    assert torch.equal(forward(loaded.model, x), forward(trained_model, x))


def test_upstream_without_builder_or_model_says_what_is_missing(tmp_path, no_upstream_builder):
    path = tmp_path / "bare.pt"
    torch.save({"w": torch.ones(3)}, path)  # torch.save(model.state_dict())
    manifest = enn_nb.inspect(path)
    assert manifest.source["layout"] == "state_dict"
    with pytest.raises(UnknownNameError) as info:
        enn_nb.load(path)
    for field in ("version", "in_dim", "config", "state_dict"):
        assert f"`{field}`" in str(info.value)
    model = torch.nn.Module()
    model.register_buffer("w", torch.zeros(3))
    assert torch.equal(enn_nb.load(path, model=model).model.w, torch.ones(3))


def test_upstream_builder_named_in_extra(trained_model, tmp_path):
    payload = {**_meta(trained_model), "state_dict": trained_model.state_dict()}
    payload["extra"]["builder"] = "enn_nb.reference"
    torch.save(payload, tmp_path / "named.pt")
    loaded = enn_nb.load(tmp_path / "named.pt")
    assert type(loaded.model) is ReferenceModel


def test_upstream_converts_to_enn_nb_formats(trained_model, tmp_path, upstream_builder):
    path = _upstream_pt(tmp_path / "up.pt", trained_model)
    converted = enn_nb.convert(path, tmp_path / "now.safetensors")
    assert _source(converted) == {"layout": "enn-pytorch", "missing_fields": [], "converted_from": "pt"}
    assert all(t.hash for t in converted.tensors)
    assert enn_nb.load(tmp_path / "now.safetensors").verified
    assert converted.content_hash == enn_nb.convert(path, tmp_path / "now_dcp").content_hash


def test_manifest_entry_that_is_not_json_text(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"enn_nb.manifest": None, "state_dict": {}}, path)
    with pytest.raises(CorruptCheckpointError, match="not a JSON string"):
        enn_nb.inspect(path)


def test_upstream_pt_saved_without_crcs_loads_unverified(trained_model, tmp_path):
    from torch.serialization import get_crc32_options, set_crc32_options

    before = get_crc32_options()
    set_crc32_options(False)
    try:
        path = _upstream_pt(tmp_path / "nocrc.pt", trained_model)
    finally:
        set_crc32_options(before)
    loaded = enn_nb.load(path, model=_fresh(trained_model))
    assert loaded.verified is False  # nothing to check it against: said so, not claimed
    assert torch.equal(loaded.model.pos, trained_model.pos)
