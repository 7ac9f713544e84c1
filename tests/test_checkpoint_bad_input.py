"""Bad input gives one clear enn_nb error, runs nothing and overwrites nothing."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import blake3
import pytest
import torch

import enn_nb
from enn_nb.checkpoint.manifest import self_hash
from enn_nb.errors import (
    CheckpointError,
    CorruptCheckpointError,
    IncompleteCheckpointError,
    NotACheckpointError,
    SchemaVersionError,
    StateDictMismatchError,
    UnknownNameError,
    UnsafeCheckpointError,
)

from tests.fixtures.files import flip_byte, pt_record_of, pt_record_offset, safetensors_offset, truncate
from tests.fixtures.models import Tiny, tiny


FILES = ("m.pt", "m.safetensors")


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


# -- damaged files -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FILES)
def test_truncated_file(tmp_path, name):
    path = tmp_path / name
    enn_nb.save(tiny(), path)
    truncate(path, 0.6)
    with pytest.raises(CorruptCheckpointError, match="truncated") as info:
        enn_nb.load(path)
    assert info.value.file == str(path)
    with pytest.raises(CorruptCheckpointError):
        enn_nb.inspect(path)


def test_flipped_tensor_byte_names_the_tensor_pt(tmp_path):
    path = tmp_path / "m.pt"
    model = tiny()
    enn_nb.save(model, path)
    offset, size = pt_record_offset(path, pt_record_of(path, "fc2.weight"))
    flip_byte(path, offset + size // 2)
    assert enn_nb.inspect(path).tensor("fc2.weight")  # the manifest itself is intact
    target = tiny(seed=5)
    before = _state(target)
    with pytest.raises(CorruptCheckpointError, match="fc2.weight") as info:
        enn_nb.load(path, model=target)
    assert info.value.tensor == "fc2.weight"
    assert _unchanged(target, before)  # verified before anything was copied
    loaded = enn_nb.load(path, verify=False)  # the user can still get at it, knowingly
    assert not loaded.verified and not torch.equal(loaded.model.fc2.weight, model.fc2.weight)


def test_flipped_tensor_byte_names_the_tensor_safetensors(tmp_path):
    path = tmp_path / "m.safetensors"
    enn_nb.save(tiny(), path)
    offset, size = safetensors_offset(path, "mean")
    flip_byte(path, offset + 3)
    with pytest.raises(CorruptCheckpointError, match="`mean`") as info:
        enn_nb.load(path)
    assert info.value.tensor == "mean"


@pytest.mark.parametrize("name", FILES)
def test_flipped_byte_in_the_manifest_is_detected(tmp_path, name):
    """A digit changed inside the manifest still parses as JSON: the self-hash catches it."""
    path = tmp_path / name
    enn_nb.save(tiny(), path, metadata={"lr": 0.123456789})
    data = bytearray(path.read_bytes())
    at = data.find(b"0.123456789")
    data[at + 5] = ord("9") if data[at + 5] != ord("9") else ord("8")
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="does not match its own sha256"):
        enn_nb.load(path)
    with pytest.raises(CorruptCheckpointError):
        enn_nb.inspect(path)


def test_flipped_byte_in_a_dcp_shard_names_the_shard(tmp_path):
    path = tmp_path / "m_dcp"
    enn_nb.save(tiny(), path)
    shard = next(p for p in path.iterdir() if p.suffix == ".distcp")
    flip_byte(shard, shard.stat().st_size // 2)
    with pytest.raises(CorruptCheckpointError, match=shard.name) as info:
        enn_nb.load(path)
    assert info.value.file == shard.name and "fc" in str(info.value)


def _small() -> Tiny:
    return tiny(in_dim=3, hidden=4, horizon=1)


@pytest.mark.parametrize(("name", "stride"), [("m.pt", 17), ("m.safetensors", 5), ("m_dcp", 29)])
def test_a_flipped_byte_anywhere_is_caught(tmp_path, name, stride):
    """Every `stride`-th byte of every file flipped in turn: each load fails with an enn_nb error.

    In a .pt zip a few bytes are read by nobody (zip padding, local-header timestamps and sizes that
    readers take from the central directory); a flip there may load, and must then load exactly.
    """
    path = tmp_path / name
    reference = _small()
    enn_nb.save(reference, path)
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    exact_loads = 0
    for file in files:
        good = file.read_bytes()
        for offset in range(0, len(good), stride):
            data = bytearray(good)
            data[offset] ^= 0x55
            file.write_bytes(bytes(data))
            try:
                loaded = enn_nb.load(path, model=tiny(in_dim=3, hidden=4, horizon=1, seed=9))
            except CheckpointError:
                continue
            finally:
                file.write_bytes(good)
            assert name == "m.pt", f"{file.name}: flipping byte {offset} went unnoticed"
            for k, v in reference.state_dict().items():
                assert torch.equal(loaded.model.state_dict()[k], v), (offset, k)
            exact_loads += 1
    if name == "m.pt":
        total = sum(len(range(0, f.stat().st_size, stride)) for f in files)
        assert exact_loads < total * 0.4  # the padding is a minority of the file


# -- not checkpoints -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "content"),
    [("notes.pt", b"hello, these are my notes\n"), ("image.safetensors", b"\x89PNG\r\n\x1a\n" + b"\0" * 64),
     ("data.json", b'{"a": 1}'), ("empty.pt", b"")],
)
def test_non_checkpoint_files(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(NotACheckpointError, match=name):
        enn_nb.load(path)
    with pytest.raises(NotACheckpointError):
        enn_nb.inspect(path)


def test_torch_file_that_is_not_a_model(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(NotACheckpointError, match="list"):
        enn_nb.load(path)


def test_empty_and_missing_paths(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotACheckpointError, match="empty directory"):
        enn_nb.load(tmp_path / "empty")
    with pytest.raises(NotACheckpointError, match="does not exist"):
        enn_nb.load(tmp_path / "nothing.pt")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("hi")
    with pytest.raises(NotACheckpointError, match="readme.txt"):
        enn_nb.inspect(tmp_path / "other")


# -- unsafe pickles -----------------------------------------------------------------------------------------
class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"state_dict": {"w": torch.ones(2)}, "config": _Evil(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(UnsafeCheckpointError, match="system") as info:
        enn_nb.load(path, model=tiny())
    assert "nothing was executed" in str(info.value)
    with pytest.raises(UnsafeCheckpointError):
        enn_nb.inspect(path)
    assert not marker.exists()
    assert os.system(f"true {marker}") == 0 and not marker.exists()  # the command itself works here


def test_malicious_dcp_metadata_is_refused(tmp_path):
    """A crafted DCP directory whose manifest matches its poisoned `.metadata`, and an upstream one."""
    marker = tmp_path / "pwned"
    path = tmp_path / "m_dcp"
    enn_nb.save(tiny(), path)
    evil = pickle.dumps(_Evil(marker))
    (path / ".metadata").write_bytes(evil)
    manifest_file = path / "enn_nb.manifest.json"
    doc = json.loads(manifest_file.read_text())
    for entry in doc["files"]:
        if entry["path"] == ".metadata":
            entry.update(nbytes=len(evil), hash="blake3:" + blake3.blake3(evil).hexdigest())
    doc["manifest_sha256"] = self_hash(doc)  # a forger recomputes every hash
    manifest_file.write_text(json.dumps(doc))
    with pytest.raises(UnsafeCheckpointError, match="system"):
        enn_nb.load(path)
    manifest_file.unlink()
    (path / "meta.json").write_text(json.dumps({"in_dim": 6}))
    with pytest.raises(UnsafeCheckpointError, match="nothing was executed"):
        enn_nb.inspect(path)
    assert not marker.exists()


# -- manifests -----------------------------------------------------------------------------------------------
def _rewrite_pt_manifest(path: Path, change) -> None:
    payload = torch.load(path, weights_only=True)
    doc = json.loads(payload["enn_nb.manifest"])
    doc = change(doc)
    doc["manifest_sha256"] = self_hash(doc)
    payload["enn_nb.manifest"] = json.dumps(doc)
    torch.save(payload, path)


def test_unknown_builder_gives_the_registry_error(tmp_path):
    path = tmp_path / "m.pt"
    enn_nb.save(tiny(), path, spec=enn_nb.ModelSpec.from_model(tiny()).replace(builder="acme.forecaster"))
    with pytest.raises(UnknownNameError, match="acme.forecaster") as info:
        enn_nb.load(path)
    assert "enn_nb.reference" in info.value.known and "register_builder" in str(info.value)
    assert enn_nb.load(path, model=tiny(seed=3)).model.fc1.weight.shape == (8, 6)


def test_newer_schema_names_both_versions(tmp_path):
    path = tmp_path / "m.pt"
    enn_nb.save(tiny(), path)
    _rewrite_pt_manifest(path, lambda d: {**d, "schema": "enn_nb.checkpoint/7", "new_field": 1})
    with pytest.raises(SchemaVersionError) as info:
        enn_nb.inspect(path)
    assert info.value.found == "enn_nb.checkpoint/7" and info.value.supported == "enn_nb.checkpoint/2"
    assert "enn_nb.checkpoint/7" in str(info.value) and "enn_nb.checkpoint/2" in str(info.value)
    assert "pip install -U enn-nb" in str(info.value)


def test_schema_violation_is_listed(tmp_path):
    path = tmp_path / "m.pt"
    enn_nb.save(tiny(), path)
    _rewrite_pt_manifest(path, lambda d: {**d, "format": "zip", "tensors": [{"name": "x"}]})
    with pytest.raises(CorruptCheckpointError, match=r"(?s)format.*tensors/0"):
        enn_nb.inspect(path)


def test_v0_manifest_is_migrated(tmp_path):
    """A hand-made file in the pre-release layout (schema enn_nb.checkpoint/0)."""
    model = tiny()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    v0 = {
        "schema": "enn_nb.checkpoint/0",
        "format": "pt",
        "created": "2025-06-01T12:00:00Z",
        "enn_nb_version": "0.0.1",
        "torch_version": "2.5.0",
        "model": {"builder": "tests.checkpoint.tiny", "config": model.config, "in_dim": 6, "out_shape": [3, 2]},
        "user_metadata": {"owner": "team-a"},
        "weights": {
            k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape),
                "sha256": hashlib.sha256(v.numpy().tobytes()).hexdigest()}
            for k, v in state.items()
        },
    }
    path = tmp_path / "v0.pt"
    torch.save({"enn_nb.manifest": json.dumps(v0), "state_dict": state}, path)
    manifest = enn_nb.inspect(path)
    assert manifest.schema == "enn_nb.checkpoint/2" and manifest.source == {"migrated_from": "enn_nb.checkpoint/0"}
    assert manifest.metadata == {"owner": "team-a"} and manifest.versions["torch"] == "2.5.0"
    assert manifest.tensor("mean").nbytes == 48
    loaded = enn_nb.load(path)
    assert loaded.verified and torch.equal(loaded.model.fc1.weight, model.fc1.weight)
    state["fc1.weight"][0, 0] += 1  # the migrated hashes are still checked
    torch.save({"enn_nb.manifest": json.dumps(v0), "state_dict": state}, path)
    with pytest.raises(CorruptCheckpointError, match="fc1.weight"):
        enn_nb.load(path)


def test_v0_without_migration_path_is_explained(tmp_path, monkeypatch):
    from enn_nb.checkpoint import migrations

    monkeypatch.setattr(migrations, "_MIGRATIONS", {})
    path = tmp_path / "m.pt"
    torch.save({"enn_nb.manifest": json.dumps({"schema": "enn_nb.checkpoint/0"}), "state_dict": {}}, path)
    with pytest.raises(CorruptCheckpointError, match="no migration"):
        enn_nb.inspect(path)


# -- strict loading -----------------------------------------------------------------------------------------
class _Other(Tiny):
    def __init__(self) -> None:
        super().__init__(in_dim=6, hidden=9, horizon=3)
        self.extra = torch.nn.Linear(2, 2)
        del self.fc2


@pytest.mark.parametrize("name", ["m.pt", "m.safetensors", "m_dcp"])
def test_strict_mismatch_lists_every_key(tmp_path, name):
    path = tmp_path / name
    enn_nb.save(tiny(), path)
    target = _Other()
    before = _state(target)
    with pytest.raises(StateDictMismatchError) as info:
        enn_nb.load(path, model=target)
    err = info.value
    assert err.missing_keys == ["extra.weight", "extra.bias"]
    assert err.unexpected_keys == ["fc2.weight", "fc2.bias"]
    assert err.shape_mismatches == {"fc1.weight": ((8, 6), (9, 6)), "fc1.bias": ((8,), (9,))}
    for key in ("extra.weight", "extra.bias", "fc2.weight", "fc2.bias", "fc1.weight", "fc1.bias"):
        assert f"`{key}`" in str(err)
    assert _unchanged(target, before)
    loaded = enn_nb.load(path, model=target, strict=False)
    assert loaded.missing_keys == ["extra.weight", "extra.bias"]
    assert loaded.unexpected_keys == ["fc2.weight", "fc2.bias"]
    assert set(loaded.shape_mismatches) == {"fc1.weight", "fc1.bias"}
    assert torch.equal(target.mean, tiny().mean)  # the matching tensor was loaded
    assert torch.equal(target.fc1.weight, before["fc1.weight"])  # mismatched ones left alone


def test_dcp_without_manifest_is_incomplete(tmp_path):
    path = tmp_path / "m_dcp"
    enn_nb.save(tiny(), path)
    (path / "enn_nb.manifest.json").unlink()
    with pytest.raises(IncompleteCheckpointError, match="commit marker"):
        enn_nb.load(path)
    (path / ".metadata").unlink()  # a rank died before DCP's own metadata too
    with pytest.raises(IncompleteCheckpointError):
        enn_nb.inspect(path)


def test_dcp_missing_metadata_with_manifest(tmp_path):
    path = tmp_path / "m_dcp"
    enn_nb.save(tiny(), path)
    (path / ".metadata").unlink()
    with pytest.raises(IncompleteCheckpointError, match=".metadata"):
        enn_nb.load(path)


def test_non_json_extra_state_is_refused_before_writing(tmp_path):
    # JSON extra state is stored (tests/test_checkpoint_hooks.py); an arbitrary object cannot be.
    class WithExtra(Tiny):
        def get_extra_state(self):
            return {"step": 3, "when": object()}

        def set_extra_state(self, state):
            pass

    path = tmp_path / "m.pt"
    with pytest.raises(CheckpointError, match=r"_extra_state.*get_extra_state"):
        enn_nb.save(WithExtra(), path)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_saving_never_replaces_unrelated_data(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.md").write_text("keep me")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        enn_nb.save(tiny(), project, format="dcp")
    with pytest.raises(CheckpointError, match="is a directory"):
        enn_nb.save(tiny(), project, format="pt")
    assert [p.name for p in project.iterdir()] == ["notes.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert enn_nb.save(tiny(), empty).format == "dcp"  # an empty directory is fine


def test_meta_tensors_are_refused(tmp_path):
    with torch.device("meta"):
        model = Tiny()
    with pytest.raises(CheckpointError, match="meta device"):
        enn_nb.save(model, tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", FILES)
def test_damaged_manifest_key_does_not_fall_back_to_unverified_loading(tmp_path, name):
    path = tmp_path / name
    enn_nb.save(tiny(), path)
    data = bytearray(path.read_bytes())
    at = data.find(b"enn_nb.manifest")
    data[at + 3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="damaged"):
        enn_nb.load(path, model=tiny())


def test_a_dcp_load_fills_a_model_it_builds_in_place_and_a_users_model_only_after_every_check(tmp_path, monkeypatch):
    from enn_nb.checkpoint import dcp

    path = tmp_path / "m_dcp"
    reference = _small()
    enn_nb.save(reference, path, spec=enn_nb.ModelSpec(in_dim=3, builder="tests.tiny"))
    enn_nb.register_builder("tests.tiny", replace=True)(lambda spec: tiny(in_dim=3, hidden=4, horizon=1, seed=9))
    targets, returned = [], []
    tensors = dcp.DcpReader.tensors

    def spy(self, names, *, verify, into=None):
        targets.append(dict(into or {}))
        returned.append(tensors(self, names, verify=verify, into=into))
        return returned[-1]

    monkeypatch.setattr(dcp.DcpReader, "tensors", spy)
    try:
        built = enn_nb.load(path)
    finally:
        from enn_nb.model.spec import _builders

        _builders.unregister("tests.tiny")
    state = built.model.state_dict()
    assert built.verified and built.restore_check == "passed"
    assert targets[0] and {k: v.data_ptr() for k, v in targets[0].items()} == {k: state[k].data_ptr() for k in targets[0]}
    assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items())

    user = tiny(in_dim=3, hidden=4, horizon=1, seed=9)
    loaded = enn_nb.load(path, model=user)
    assert targets[1] == {}  # fresh buffers: the hashes are checked before the user's model changes
    assert loaded.model is user and all(torch.equal(user.state_dict()[k], v) for k, v in reference.state_dict().items())
    # the fresh tensors are the records DCP read, kept as they are: each owns its bytes (no placeholder
    # of one element leaked out) and none is one of the user's tensors
    own = {t.untyped_storage().data_ptr() for t in user.state_dict().values()}
    for name, tensor in returned[1].items():
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size(), name
        assert 0 not in tensor.stride() or tensor.numel() <= 1, name
        assert tensor.untyped_storage().data_ptr() not in own, name


@pytest.mark.parametrize("into_users_model", [True, False])
def test_a_damaged_dcp_tensor_in_resealed_files_is_caught_by_its_own_hash(tmp_path, into_users_model):
    """The shard files' hashes recomputed after a byte of `fc1.weight` changed: the per-tensor hash,
    taken while DCP reads each record, names the tensor, and the user's model stays as it was."""
    from tests.security.families import reseal_dcp

    path = tmp_path / "m_dcp"
    reference = _small()
    enn_nb.save(reference, path)
    shard = next(p for p in path.iterdir() if p.suffix == ".distcp")
    data = bytearray(shard.read_bytes())
    at = bytes(data).find(reference.fc1.weight.detach().numpy().tobytes())
    assert at > 0
    data[at + 5] ^= 0x01
    shard.write_bytes(bytes(data))
    reseal_dcp(path)
    target = tiny(in_dim=3, hidden=4, horizon=1, seed=9)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CorruptCheckpointError, match=r"tensor\(s\) `fc1\.weight`") as info:
        enn_nb.load(path, model=target if into_users_model else None)
    assert info.value.tensor == "fc1.weight"
    for k, v in before.items():
        assert torch.equal(target.state_dict()[k], v), k
    assert torch.equal(enn_nb.load(path, model=target, verify=False).model.fc1.bias, reference.fc1.bias)


@pytest.mark.parametrize("verify", [True, False])
def test_a_dcp_record_of_another_shape_than_its_metadata_is_refused(tmp_path, verify):
    """A forged record: `fc1.weight`'s bytes as saved, its pickled shape and stride transposed
    ((4, 3) -> (3, 4)), the files resealed. Its per-tensor hash still matches (the same bytes); what
    the record holds differs from what the metadata declares, and nothing reaches the user's model."""
    from tests.security.families import reseal_dcp

    path = tmp_path / "m_dcp"
    enn_nb.save(_small(), path)
    shard = next(p for p in path.iterdir() if p.suffix == ".distcp")
    data = shard.read_bytes()
    shape, stride = b"K\x04K\x03\x86", b"K\x03K\x01\x86"  # pickled (4, 3) and (3, 1): fc1.weight's alone
    assert data.count(shape) == 1 and data.count(stride) == 1
    shard.write_bytes(data.replace(shape, b"K\x03K\x04\x86").replace(stride, b"K\x04K\x01\x86"))
    reseal_dcp(path)
    target = tiny(in_dim=3, hidden=4, horizon=1, seed=9)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CorruptCheckpointError, match=r"`model/fc1\.weight` .* holds torch\.float32 \(3, 4\)"):
        enn_nb.load(path, model=target, verify=verify)
    for k, v in before.items():
        assert torch.equal(target.state_dict()[k], v), k


def test_an_unverified_dcp_load_of_a_damaged_shard_leaves_the_users_model_as_it_was(tmp_path):
    path = tmp_path / "m_dcp"
    enn_nb.save(_small(), path)
    shard = next(p for p in path.iterdir() if p.suffix == ".distcp")
    data = bytearray(shard.read_bytes())
    data[-40:] = bytes(40)  # the last item's zip directory: that read fails after earlier ones succeeded
    shard.write_bytes(bytes(data))
    target = tiny(in_dim=3, hidden=4, horizon=1, seed=9)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    # torch raises a BaseException here (CheckpointException); users catch Exception: it arrives as ours
    with pytest.raises(CorruptCheckpointError, match="Reading the DCP checkpoint .* failed: RuntimeError"):
        enn_nb.load(path, model=target, verify=False)
    for k, v in before.items():
        assert torch.equal(target.state_dict()[k], v), f"`{k}` changed although the load failed"


@pytest.mark.parametrize("verify", [True, False])
def test_a_directory_swapped_before_the_read_is_read_again_not_mixed(tmp_path, monkeypatch, verify):
    """A concurrent save replaces the directory after it was opened but before DCP reads the shards: the load notices that the directory is another one now, whether the read failed a
    hash or (verify=False) went through, reads the new checkpoint from the start, and the model ends up
    holding exactly the save its manifest describes."""
    from enn_nb.checkpoint import dcp

    path = tmp_path / "m_dcp"
    first, second = _small(), tiny(in_dim=3, hidden=4, horizon=1, seed=5)
    enn_nb.save(first, path)
    read, swapped = dcp.DcpReader._load, []

    def swap_then_read(self, *args, **kwargs):
        if not swapped:
            swapped.append(True)
            enn_nb.save(second, path)  # atomic directory swap, as a writer in another process does
        return read(self, *args, **kwargs)

    monkeypatch.setattr(dcp.DcpReader, "_load", swap_then_read)
    target = tiny(in_dim=3, hidden=4, horizon=1, seed=9)
    loaded = enn_nb.load(path, model=target, verify=verify)
    assert swapped and loaded.manifest.content_hash == enn_nb.inspect(path).content_hash
    for k, v in second.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k
