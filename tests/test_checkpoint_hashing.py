"""Integrity hashes: BLAKE3 digests that name their algorithm, and checkpoints hashed with sha256 still verify.

``tests/data/checkpoint_v1`` holds a tiny model (with Adam state) saved by enn_nb before the switch
(schema ``enn_nb.checkpoint/1``, sha256) in all three formats; they are copied before each use.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import blake3
import pytest
import torch

import enn_nb
from enn_nb.checkpoint import migrations
from enn_nb.checkpoint.hashing import file_digest, split
from enn_nb.errors import CorruptCheckpointError

from tests.fixtures.files import flip_byte, pt_record_of, pt_record_offset, safetensors_offset
from tests.fixtures.models import tiny

V1 = Path(__file__).parent / "data" / "checkpoint_v1"
V1_NAMES = ("tiny.pt", "tiny.safetensors", "tiny_dcp")


def _copy(name: str, tmp_path: Path) -> Path:
    src, dst = V1 / name, tmp_path / name
    (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)
    return dst


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", V1_NAMES)
def test_sha256_checkpoints_of_schema_1_still_verify(tmp_path, name):
    path = _copy(name, tmp_path)
    stored = json.loads((path / "enn_nb.manifest.json").read_text()) if path.is_dir() else None
    if stored is not None:
        assert stored["schema"] == "enn_nb.checkpoint/1" and stored["hash_algorithm"] == "sha256"
    manifest = enn_nb.inspect(path)
    assert manifest.schema == "enn_nb.checkpoint/2"
    assert manifest.metadata == {"written_by": "enn_nb schema 1 (sha256)"}
    assert {split(t.hash)[0] for t in manifest.tensors} == {"sha256"}
    assert {split(t["hash"])[0] for t in manifest.optimizer["tensors"]} == {"sha256"}
    loaded = enn_nb.load(path)
    assert loaded.verified
    for name_, tensor in loaded.model.state_dict().items():  # the sha256 recorded then is that of the bytes now
        assert manifest.tensor(name_).hash == "sha256:" + hashlib.sha256(tensor.numpy().tobytes()).hexdigest()
    assert loaded.optimizer_state["state"][0]["step"].item() == 1.0
    if path.is_dir():
        assert {split(f.hash)[0] for f in manifest.files} == {"sha256"}
        for entry in manifest.files:
            assert entry.hash == "sha256:" + hashlib.sha256((path / entry.path).read_bytes()).hexdigest()


def test_the_three_schema_1_formats_hold_the_same_weights(tmp_path):
    states = [_state(enn_nb.load(_copy(name, tmp_path)).model) for name in V1_NAMES]
    for state in states[1:]:
        assert all(torch.equal(state[k], states[0][k]) for k in states[0])
    assert not torch.equal(states[0]["fc1.weight"], tiny(seed=0).fc1.weight.detach())  # one Adam step later


@pytest.mark.parametrize("name", ["tiny.pt", "tiny.safetensors"])
def test_damage_in_a_schema_1_file_is_found_with_sha256(tmp_path, name):
    path = _copy(name, tmp_path)
    if name.endswith(".pt"):
        offset, _ = pt_record_offset(path, pt_record_of(path, "fc1.weight"))
    else:
        offset, _ = safetensors_offset(path, "fc1.weight")
    flip_byte(path, offset + 5)
    with pytest.raises(CorruptCheckpointError, match="fc1.weight") as info:
        enn_nb.load(path)
    assert info.value.tensor == "fc1.weight"
    assert enn_nb.load(path, verify=False).verified is False


def test_damage_in_a_schema_1_dcp_shard_is_found_with_sha256(tmp_path):
    path = _copy("tiny_dcp", tmp_path)
    shard = sorted(path.glob("*.distcp"))[0]
    flip_byte(shard, shard.stat().st_size // 2)
    with pytest.raises(CorruptCheckpointError, match=shard.name):
        enn_nb.load(path)


@pytest.mark.parametrize("name", ["m.pt", "m.safetensors", "m_dcp"])
def test_new_checkpoints_carry_blake3_digests_of_the_bytes(tmp_path, name):
    model = tiny(seed=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.forward_export(torch.randn(3, 6)).sum().backward()
    optimizer.step()
    manifest = enn_nb.save(model, tmp_path / name, optimizer=optimizer)
    for key, tensor in model.state_dict().items():
        assert manifest.tensor(key).hash == "blake3:" + blake3.blake3(tensor.numpy().tobytes()).hexdigest()
    momentum = optimizer.state_dict()["state"][0]["momentum_buffer"]
    row = next(t for t in manifest.optimizer["tensors"] if t["name"].endswith("state/0/momentum_buffer"))
    assert row["hash"] == "blake3:" + blake3.blake3(momentum.numpy().tobytes()).hexdigest()
    for entry in manifest.files:  # DCP: each file's digest, taken while dcp.save wrote it
        data = (tmp_path / name / entry.path).read_bytes()
        assert entry.hash == "blake3:" + blake3.blake3(data).hexdigest() and entry.nbytes == len(data)
        assert file_digest(tmp_path / name / entry.path) == entry.hash
    assert enn_nb.load(tmp_path / name).verified


def test_converting_a_schema_1_checkpoint_rehashes_it_with_blake3(tmp_path):
    old = enn_nb.inspect(_copy("tiny.pt", tmp_path))
    converted = enn_nb.convert(tmp_path / "tiny.pt", tmp_path / "new.safetensors")
    assert {split(t.hash)[0] for t in converted.tensors} == {"blake3"}
    assert converted.source == {"converted_from": "pt"} and converted.created == old.created
    # the identity follows the digests: the same weights re-saved give the converted file's content_hash
    again = enn_nb.save(enn_nb.load(tmp_path / "new.safetensors").model, tmp_path / "again.pt")
    assert again.content_hash == converted.content_hash != old.content_hash


def test_migration_1_to_2_names_the_algorithm_per_entry():
    v1 = json.loads((V1 / "tiny_dcp" / "enn_nb.manifest.json").read_text())
    v1.pop("manifest_sha256")
    doc, found = migrations.migrate(copy.deepcopy(v1))
    assert found == 1 and doc["schema"] == "enn_nb.checkpoint/2" and "hash_algorithm" not in doc
    assert [t["hash"] for t in doc["tensors"]] == [f"sha256:{t['sha256']}" for t in v1["tensors"]]
    assert [f["hash"] for f in doc["files"]] == [f"sha256:{f['sha256']}" for f in v1["files"]]
    assert all("sha256" not in t for t in doc["optimizer"]["tensors"])
    with pytest.raises(CorruptCheckpointError, match="hash_algorithm='md5'"):
        migrations.migrate({**copy.deepcopy(v1), "hash_algorithm": "md5"})


def test_a_dcp_save_skips_zip_crcs_and_puts_torchs_switch_back(tmp_path):
    from torch.serialization import get_crc32_options, set_crc32_options

    path, found = tmp_path / "m_dcp", get_crc32_options()
    for before in (True, False):
        set_crc32_options(before)
        try:
            enn_nb.save(tiny(), path)
            assert get_crc32_options() is before
        finally:
            set_crc32_options(found)
    crcs = []
    for shard in path.glob("*.distcp"):  # written by DCP's writer threads, each item a zip archive
        data, at = shard.read_bytes(), 0
        while (at := data.find(b"PK\x01\x02", at) + 1) > 0:  # central directory entries: CRC-32 at +16
            crcs.append(int.from_bytes(data[at + 15:at + 19], "little"))
    assert crcs and set(crcs) == {0}  # the files' BLAKE3 covers these bytes
    assert enn_nb.load(path).verified
