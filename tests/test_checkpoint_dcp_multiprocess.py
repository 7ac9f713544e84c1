"""DCP with real multi-process sharding: torchrun, 2 ranks, gloo on CPU, FSDP2 (`fully_shard`) parameters.

Each rank holds only its shard of every parameter (DTensor, ``Shard(0)``) and calls
``enn_nb.save(model, path, format="dcp")``. The checkpoint then loads on 2 processes into a freshly
sharded model, and on 1 process (this pytest process, resharded into a plain model); both equal the
unsharded reference weights exactly. A shard damaged afterwards is refused on both ranks. The same save
and 2-rank load run once more against a real S3 server (moto), through torch's FsspecWriter: both ranks
upload their shards, rank 0 commits the manifest last, both ranks load it back bit-exact (both fetch
into one cache folder: no rank reads before every rank has its copy).

This file is also the torchrun worker (``python -m torch.distributed.run ... this_file.py WORKDIR``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _reference_model(seed: int):
    import torch

    from enn_nb.reference import ModelConfig, ReferenceModel

    torch.manual_seed(seed)
    model = ReferenceModel(ModelConfig(attention="math", fused_kernel=False, depth=2, d_model=32))
    with torch.no_grad():  # give the float64 Scaler buffers non-trivial values too
        for name in ("x_mean", "x_std", "y_mean", "y_std"):
            buf = getattr(model.scaler, name)
            buf.copy_(torch.rand_like(buf) + 0.5)
    return model.eval()


def _shard(model, mesh):
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _full_state(model) -> dict:
    from torch.distributed.tensor import DTensor

    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone() for k, v in model.state_dict().items()}


def _worker(workdir: Path) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    import enn_nb
    from enn_nb.errors import CorruptCheckpointError

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    report: dict = {"rank": rank, "world": world}

    model = _reference_model(seed=0)
    if rank == 0:
        torch.save(model.state_dict(), workdir / "reference.pt")
    _shard(model, mesh)
    sharded = {k: [list(v.shape), list(v.to_local().shape)] for k, v in model.state_dict().items()
               if isinstance(v, DTensor)}
    report["sharded"] = sharded
    path = workdir / "ckpt"
    manifest = enn_nb.save(model, path, format="dcp", metadata={"ranks": world})
    report["save_content_hash"] = manifest.content_hash
    report["files"] = [f.path for f in manifest.files]
    report["listing"] = sorted(p.name for p in workdir.iterdir())

    # load on 2 processes into a differently initialised, freshly sharded model
    fresh = _shard(_reference_model(seed=123), mesh)
    loaded = enn_nb.load(path, model=fresh)
    report["load2_verified"] = loaded.verified
    full = _full_state(fresh)
    reference = torch.load(workdir / "reference.pt", weights_only=True)
    report["load2_equal"] = sorted(k for k in reference if torch.equal(full[k], reference[k]))
    report["load2_keys"] = sorted(reference)

    url = os.environ.get("ENN_NB_TEST_S3_URL")
    if url:  # the same through torch's FsspecWriter onto a real S3 server (options from ENN_NB_STORAGE_OPTIONS)
        remote = enn_nb.save(model, url, format="dcp", metadata={"ranks": world})
        report["s3_content_hash"] = remote.content_hash
        report["s3_files"] = [f.path for f in remote.files]
        fresh = _shard(_reference_model(seed=321), mesh)
        report["s3_load2_verified"] = enn_nb.load(url, model=fresh).verified
        full = _full_state(fresh)
        report["s3_load2_equal"] = sorted(k for k in reference if torch.equal(full[k], reference[k]))

    # a damaged shard is refused on every rank (each rank hashes its share of the files)
    dist.barrier()
    bad = workdir / "bad"
    if rank == 0:
        import shutil

        shutil.copytree(path, bad)
        target = bad / "__1_0.distcp"
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    dist.barrier()
    try:
        enn_nb.load(bad, model=_shard(_reference_model(seed=5), mesh))
        report["corrupt"] = "loaded"
    except CorruptCheckpointError as exc:
        report["corrupt"] = str(exc)
    (workdir / f"report-{rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_fsdp2_sharded_dcp_save_and_reshard(tmp_path, s3):
    import torch

    import enn_nb
    from enn_nb.reference import make_dataset

    url = s3.url("ckpt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "ENN_NB_TEST_S3_URL": url, "ENN_NB_STORAGE_OPTIONS": json.dumps(s3.options)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).resolve()), str(tmp_path)]
    returncode, out = _run_group(cmd, env, timeout=540)
    assert returncode == 0, out[-9000:]
    reports = [json.loads((tmp_path / f"report-{r}.json").read_text()) for r in (0, 1)]
    reference = torch.load(tmp_path / "reference.pt", weights_only=True)

    for report in reports:
        # really sharded: every rank held about half of each parameter's rows
        assert report["sharded"]["blocks.0.attn.qkv.weight"] == [[96, 32], [48, 32]]
        assert report["sharded"]["embedding.tables.0.weight"][1][0] in (3, 4)  # 7 rows over 2 ranks
        assert "scaler.x_mean" not in report["sharded"]  # buffers stay replicated
        shards = [f for f in report["files"] if f != ".metadata"]
        assert ".metadata" in report["files"] and {f[:4] for f in shards} == {"__0_", "__1_"}  # both ranks wrote
        assert report["listing"] == ["ckpt", "reference.pt"]  # no temporary directory left
        assert report["load2_verified"] is True
        assert report["load2_equal"] == report["load2_keys"] == sorted(reference)
        assert "__1_0.distcp" in report["corrupt"] and "hash" in report["corrupt"]
    assert reports[0]["save_content_hash"] == reports[1]["save_content_hash"]
    # on S3: both ranks got the committed manifest, wrote their shards and loaded the checkpoint back.
    # (No tensor is whole on one rank, so the content hash covers the files, whose names carry the save's token.)
    assert reports[0]["s3_content_hash"] == reports[1]["s3_content_hash"]
    for report in reports:
        assert {f[:4] for f in report["s3_files"] if f != ".metadata"} == {"__0_", "__1_"}
        assert report["s3_load2_verified"] is True and report["s3_load2_equal"] == sorted(reference)
    _assert_manifest_last(url, s3.options, reports[0]["s3_files"])
    on_s3 = enn_nb.load(url, storage_options=s3.options)  # 1 process: resharded into a plain model
    assert on_s3.verified and on_s3.manifest.content_hash == reports[0]["s3_content_hash"]
    assert all(torch.equal(on_s3.model.state_dict()[k], v) for k, v in reference.items())

    manifest = enn_nb.inspect(tmp_path / "ckpt")
    assert manifest.metadata == {"ranks": 2}
    assert manifest.tensor("blocks.0.attn.qkv.weight").shape == (96, 32)  # the global shape
    assert manifest.tensor("blocks.0.attn.qkv.weight").hash is None  # no rank held it whole
    assert manifest.tensor("scaler.x_mean").hash  # replicated buffers are hashed on rank 0

    # load on 1 process: resharded into a plain, unsharded model built from the manifest
    loaded = enn_nb.load(tmp_path / "ckpt")
    assert loaded.verified
    state = loaded.model.state_dict()
    assert set(state) == set(reference)
    for name, tensor in reference.items():
        assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name
    x, _ = make_dataset(3, n_sensors=1, n_steps=24 * 4)
    original = _reference_model(seed=0)
    original.load_state_dict(reference)
    with torch.no_grad():
        assert torch.equal(loaded.model.forward_export(x[:16]), original.forward_export(x[:16]))
    # and it converts to a single file whose tensors are now all hashed
    converted = enn_nb.convert(tmp_path / "ckpt", tmp_path / "single.safetensors")
    assert all(t.hash for t in converted.tensors)


def _run_group(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run ``cmd`` in its own process group; on timeout kill the whole group (torchrun and its workers).

    ``subprocess.run(timeout=...)`` kills torchrun only: its workers keep the output pipes open and the
    test would hang on them. The output goes to a file for the same reason.
    """
    import signal
    import tempfile

    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            log.seek(0)
            pytest.fail(f"torchrun did not finish in {timeout} s; killed.\n" + log.read().decode(errors="replace")[-9000:])
        finally:
            with contextlib.suppress(ProcessLookupError):  # a worker left behind by a failed run
                os.killpg(proc.pid, signal.SIGKILL)
        log.seek(0)
        return proc.returncode, log.read().decode(errors="replace")


def _assert_manifest_last(url: str, options: dict, files: list[str]) -> None:
    """The manifest object on the store is no older than any file it lists (rank 0 committed it after all)."""
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    base = url.removeprefix("s3://")
    committed = fs.info(f"{base}/enn_nb.manifest.json")["LastModified"]
    assert all(fs.info(f"{base}/{name}")["LastModified"] <= committed for name in files)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
