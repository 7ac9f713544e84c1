"""Checkpoints at URLs: fsspec's ``memory://`` for the fast cases, a real S3 server (moto) with s3fs for the rest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import enn_nb
from enn_nb.errors import (
    CheckpointWriteError,
    IncompleteCheckpointError,
    MissingDependencyError,
    NotACheckpointError,
    SpecError,
    UnknownNameError,
)
from tests.fixtures.models import tiny
from tests.fixtures.s3 import SECRET, FaultProxy, moto_server, new_bucket, options

FORMATS = {"pt": "model.pt", "safetensors": "model.safetensors", "dcp": "model_dcp"}


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _memory_url(name: str) -> str:
    import uuid

    return f"memory://enn-test-{uuid.uuid4().hex[:8]}/{name}"


# -- URLs never become local folders -------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_memory_url_round_trip_writes_nothing_locally(fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    model = tiny()
    url = _memory_url(FORMATS[fmt])
    manifest = enn_nb.save(model, url)
    assert manifest.path == url and manifest.format == fmt
    assert list(tmp_path.iterdir()) == []  # no `memory:` folder, nothing at all
    assert enn_nb.inspect(url).content_hash == manifest.content_hash
    loaded = enn_nb.load(url)
    assert loaded.verified and loaded.restore_check == "passed" and _same(loaded.model, model)
    import fsspec

    fs = fsspec.filesystem("memory")
    assert not [p for p in fs.find(url.split("://", 1)[1].split("/", 1)[0]) if ".enn-tmp-" in p]


def test_file_url_is_the_local_path(tmp_path: Path) -> None:
    manifest = enn_nb.save(tiny(), f"file://{tmp_path}/m.safetensors")
    assert (tmp_path / "m.safetensors").is_file() and manifest.path == str(tmp_path / "m.safetensors")


@pytest.mark.parametrize(("url", "error", "words"), [
    ("nosuchscheme://bucket/m.pt", UnknownNameError, "nosuchscheme://"),
    ("memory://b/m.pt?versionId=3", SpecError, "query string"),
    ("s3://user:pw@bucket/m.pt", SpecError, "credentials"),
])
def test_bad_urls_are_refused_before_anything_is_written(url: str, error: type, words: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=words) as info:
        enn_nb.save(tiny(), url)
    assert "pw@" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_missing_filesystem_package_names_the_extra() -> None:
    import importlib.util

    if importlib.util.find_spec("gcsfs") is not None:  # dev installs s3fs only: gs:// is the real missing case
        pytest.skip("gcsfs is installed here")
    with pytest.raises(MissingDependencyError) as info:
        enn_nb.inspect("gs://bucket/model.pt")
    assert "%pip install 'enn-nb[gcs]'" in str(info.value) and info.value.extra == "gcs"


def test_dcp_folder_without_manifest_is_incomplete() -> None:
    url = _memory_url("dcp")
    enn_nb.save(tiny(), url)
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.rm(url.split("://", 1)[1] + "/enn_nb.manifest.json")
    with pytest.raises(IncompleteCheckpointError, match="commit marker"):
        enn_nb.load(url)


def test_storage_option_cli_parsing() -> None:
    from enn_nb.storage import parse_options

    assert parse_options(["anon=true", "client_kwargs.endpoint_url=http://127.0.0.1:9", "retries=3"]) == {
        "anon": True, "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}, "retries": 3}
    with pytest.raises(SpecError, match="key=value"):
        parse_options(["anon"])


def test_redact_hides_option_and_environment_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from enn_nb.storage import redact

    monkeypatch.setenv("AWS_SESSION_TOKEN", "envtoken-123456")
    text = redact(f"failed with {SECRET} and envtoken-123456", {"secret": SECRET, "client_kwargs": {"x": "ok"}})
    assert SECRET not in text and "envtoken-123456" not in text


# -- a real S3 server ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_s3_save_inspect_load_convert(fmt: str, s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    model = tiny()
    url = s3.url(f"run42/{FORMATS[fmt]}")
    manifest = enn_nb.save(model, url, storage_options=s3.options)
    assert manifest.path == url
    assert list(tmp_path.iterdir()) == []
    assert enn_nb.inspect(url, storage_options=s3.options).content_hash == manifest.content_hash
    loaded = enn_nb.load(url, storage_options=s3.options)
    assert loaded.verified and loaded.restore_check == "passed" and _same(loaded.model, model)
    # every pair: remote -> remote (another format), remote -> local, local -> remote
    other = {"pt": "safetensors", "safetensors": "dcp", "dcp": "pt"}[fmt]
    conv = enn_nb.convert(url, s3.url(f"conv/{FORMATS[other]}"), storage_options=s3.options)
    local = enn_nb.convert(url, tmp_path / FORMATS[other], storage_options=s3.options)
    back = enn_nb.convert(tmp_path / FORMATS[other], s3.url(f"back/{FORMATS[fmt]}"), storage_options=s3.options)
    assert conv.content_hash == local.content_hash == back.content_hash == manifest.content_hash
    assert _same(enn_nb.load(s3.url(f"back/{FORMATS[fmt]}"), storage_options=s3.options).model, model)
    text = json.dumps(manifest.to_dict()) + json.dumps(conv.to_dict()) + str(manifest)
    assert SECRET not in text and "secret" not in text.lower()


def test_s3_safetensors_in_parts_header_last(s3, tmp_path: Path) -> None:
    """Over one part (16 MiB) the tensor bytes go up in parts while they are hashed, the header part last."""
    import s3fs
    from safetensors.torch import load as st_load

    gen = torch.Generator().manual_seed(0)
    state = {"a": torch.randn(3 << 20, generator=gen), "b": torch.arange(1 << 20),  # 12 + 8 MiB
             "c": torch.randn(1 << 20, generator=gen).half()}  # part 1 ends inside `a`, part 2 spans `a` and `c`
    url = s3.url("big/model.safetensors")
    manifest = enn_nb.save(state, url, storage_options=s3.options)
    local = enn_nb.save(state, tmp_path / "model.safetensors")
    assert manifest.content_hash == local.content_hash  # the same tensor hashes in the header as locally
    fs = s3fs.S3FileSystem(**s3.options)
    assert fs.info(url)["ETag"].strip('"').endswith("-2")  # one object, assembled from 2 parts
    assert enn_nb.inspect(url, storage_options=s3.options).content_hash == local.content_hash
    data = fs.cat_file(url)  # the plain safetensors library reads the object as written
    assert all(torch.equal(t, state[k]) for k, t in st_load(data).items()) and set(st_load(data)) == set(state)
    from enn_nb.checkpoint.api import open_reader

    read = open_reader(url, storage_options=s3.options).tensors(sorted(state), verify=True)  # hashes checked
    assert all(torch.equal(read[k], state[k]) for k in state)


def test_s3_inspect_reads_only_the_header(s3, s3_endpoint: str) -> None:
    big = {"w": torch.randn(1 << 20)}  # 4 MiB of tensor bytes
    for name in ("m.safetensors", "m.pt", "dcp"):
        manifest = enn_nb.save(big, s3.url(name), storage_options=s3.options)
        proxy = FaultProxy(s3_endpoint)
        try:
            got = enn_nb.inspect(s3.url(name), storage_options=options(proxy.endpoint))
            assert got.content_hash == manifest.content_hash
        finally:
            proxy.close()
        # ranged reads of the length and header, the zip directory and data.pkl, or DCP's manifest:
        # a few blocks, never the 4 MiB of tensor bytes
        assert 0 < proxy.bytes_sent < (4 << 20) // 10, (name, proxy.bytes_sent)


def test_s3_second_load_fetches_nothing_until_the_object_changes(s3, s3_endpoint: str) -> None:
    model = tiny()
    url = s3.url("m.safetensors")
    size = enn_nb.save(model, url, storage_options=s3.options) and 0
    proxy = FaultProxy(s3_endpoint)
    sent = []
    try:
        opts = options(proxy.endpoint)
        import s3fs

        size = s3fs.S3FileSystem(**opts).size(f"{s3.bucket}/m.safetensors")
        for step in ("first", "second", "changed"):
            if step == "changed":
                changed = tiny(seed=1)
                enn_nb.save(changed, url, storage_options=opts)
            proxy.bytes_sent = 0
            again = enn_nb.load(url, storage_options=opts)
            sent.append(proxy.bytes_sent)
    finally:
        proxy.close()
    first, second, third = sent
    assert first >= size and third >= size  # a new ETag under the same name: fetched again
    assert second < 4096  # the same ETag: a HEAD, the 16-byte format probe and a listing, no body
    assert _same(again.model, changed)


@pytest.mark.parametrize("name", ["m.safetensors", "m.pt"])
def test_s3_load_streams_into_the_tensors_and_refuses_tampered_bytes(name: str, s3, s3_endpoint: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import s3fs

    from enn_nb.checkpoint.api import open_reader
    from enn_nb.errors import CorruptCheckpointError

    # one tensor read straight into its destination (>= 1 MiB, in two chunks), small ones through one bounce read
    state = {"big": torch.randn(5 << 20), "b": torch.arange(7, dtype=torch.int64), "h": torch.randn(3, 5).half()}
    url = s3.url(name)
    enn_nb.save(state, url, storage_options=s3.options)
    fs = s3fs.S3FileSystem(**s3.options)
    size = fs.size(f"{s3.bucket}/{name}")
    # no local copy is needed: with a cache folder that cannot exist, the load streams and writes nothing
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv("ENN_NB_CACHE_DIR", str(blocked / "cache"))
    proxy = FaultProxy(s3_endpoint)
    try:
        reader = open_reader(url, storage_options=options(proxy.endpoint))
        assert type(reader).__name__.startswith("Streamed")
        got = reader.tensors(list(state), verify=True)
        assert reader.optimizer_state(verify=True) is None
    finally:
        proxy.close()
    assert all(torch.equal(got[k], state[k]) and got[k].dtype == state[k].dtype for k in state)
    assert proxy.bytes_sent < size + (2 << 20)  # the object once (a .pt: and its last MiB read ahead, for torch.load)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"]
    # with a cache: the verified stream is kept under the ETag, the next open is local
    cache = tmp_path / "cache"
    monkeypatch.setenv("ENN_NB_CACHE_DIR", str(cache))
    reader = open_reader(url, storage_options=s3.options)
    reader.tensors(list(state), verify=True)
    reader.optimizer_state(verify=True)
    assert [p.stat().st_size for p in cache.rglob(name)] == [size]
    assert type(open_reader(url, storage_options=s3.options)).__name__ == "_Named"  # the local reader
    # one flipped byte in the big tensor: refused as a local load refuses it, and nothing is cached
    data = bytearray(fs.cat_file(f"{s3.bucket}/{name}"))
    data[size // 2] ^= 0xFF
    fs.pipe_file(f"{s3.bucket}/{name}", bytes(data))
    for p in cache.rglob("*"):
        p.unlink() if p.is_file() else None
    with pytest.raises(CorruptCheckpointError, match="`big`") as info:
        open_reader(url, storage_options=s3.options).tensors(list(state), verify=True)
    assert url in str(info.value)
    import gc

    gc.collect()
    assert [p for p in cache.rglob("*") if p.is_file()] == []  # no copy, no part file left


def test_s3_dcp_load_streams_through_fsspec_and_refuses_a_tampered_shard(s3, s3_endpoint: str, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import s3fs

    from enn_nb.checkpoint.api import open_reader
    from enn_nb.errors import CorruptCheckpointError

    state = {"big": torch.randn(5 << 20), "b": torch.arange(7, dtype=torch.int64), "h": torch.randn(3, 5).half()}
    url = s3.url("streamed_dcp")
    manifest = enn_nb.save(state, url, format="dcp", storage_options=s3.options)
    fs = s3fs.S3FileSystem(**s3.options)
    shards = [f for f in manifest.files if f.path.endswith(".distcp")]
    total = sum(f.nbytes for f in shards)
    blocked = tmp_path / "not-a-folder"  # no cache folder can exist: nothing may be written locally
    blocked.write_text("")
    monkeypatch.setenv("ENN_NB_CACHE_DIR", str(blocked / "cache"))
    proxy = FaultProxy(s3_endpoint)
    try:
        reader = open_reader(url, storage_options=options(proxy.endpoint))
        assert type(reader).__name__ == "StreamedDcpReader"
        got = reader.tensors(list(state), verify=True)
        assert reader.optimizer_state(verify=True) is None
    finally:
        proxy.close()
    assert all(torch.equal(got[k], state[k]) and got[k].dtype == state[k].dtype for k in state)
    assert proxy.bytes_sent < total + (2 << 20)  # each shard once (hashed as it streamed), no second pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"]
    # with a cache: the verified streams are kept under every file's ETag; the next load downloads nothing
    cache = tmp_path / "cache"
    monkeypatch.setenv("ENN_NB_CACHE_DIR", str(cache))
    sent, kinds = [], []
    proxy = FaultProxy(s3_endpoint)
    try:
        for _ in range(2):
            proxy.bytes_sent = 0
            reader = open_reader(url, storage_options=options(proxy.endpoint))
            kinds.append(type(reader).__name__)
            got = reader.tensors(list(state), verify=True)
            assert reader.optimizer_state(verify=True) is None
            sent.append(proxy.bytes_sent)
    finally:
        proxy.close()
    assert kinds[0] == "StreamedDcpReader" and kinds[1] != "StreamedDcpReader"
    assert sent[0] < total + (2 << 20) and sent[1] < 64 << 10  # listings, HEADs and the manifest: no shard
    assert all(torch.equal(got[k], state[k]) for k in state)
    kept = [p for p in (cache / "remote").iterdir()]
    assert len(kept) == 1 and not kept[0].name.startswith(".")
    # one flipped byte in the shard holding `big`: refused, naming the shard, its tensor and the URL
    holder = max(shards, key=lambda f: f.nbytes)
    key = f"{s3.bucket}/streamed_dcp/{holder.path}"
    data = bytearray(fs.cat_file(key))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(key, bytes(data))
    with pytest.raises(CorruptCheckpointError, match=holder.path) as info:  # a new ETag: streamed again, refused
        open_reader(url, storage_options=s3.options).tensors(list(state), verify=True)
    assert url in str(info.value) and "`big`" in str(info.value)
    assert [p.name for p in (cache / "remote").iterdir()] == [kept[0].name]  # the refused load kept nothing
    model = torch.nn.Linear(2, 2)  # a caller's model is left as it was: nothing is copied in before the check
    enn_nb.save(model, s3.url("lin_dcp"), format="dcp", storage_options=s3.options)
    lin = next(f for f in enn_nb.inspect(s3.url("lin_dcp"), storage_options=s3.options).files if f.path.endswith(".distcp"))
    data = bytearray(fs.cat_file(f"{s3.bucket}/lin_dcp/{lin.path}"))
    data[-30] ^= 0xFF  # in the zip directory of the last record: only the whole-file hash sees it
    fs.pipe_file(f"{s3.bucket}/lin_dcp/{lin.path}", bytes(data))
    torch.nn.init.zeros_(model.weight)
    zeroed = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CorruptCheckpointError, match=lin.path):
        enn_nb.load(s3.url("lin_dcp"), model=model, storage_options=s3.options)
    assert all(torch.equal(model.state_dict()[k], zeroed[k]) for k in zeroed)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_url_pt_with_pickled_code_is_refused_and_not_executed(tmp_path: Path) -> None:
    import fsspec

    from enn_nb.errors import UnsafeCheckpointError

    marker = tmp_path / "pwned"
    torch.save({"enn_nb.manifest": "{}", "state_dict": {"w": torch.ones(2)}, "x": _Evil(marker)}, tmp_path / "e.pt")
    url = _memory_url("evil.pt")
    fsspec.filesystem("memory").pipe_file(url.split("://", 1)[1], (tmp_path / "e.pt").read_bytes())
    with pytest.raises(UnsafeCheckpointError, match="system") as info:
        enn_nb.load(url, model=tiny())
    assert url in str(info.value) and "nothing was executed" in str(info.value)
    assert not marker.exists()


@pytest.mark.slow
def test_s3_save_killed_mid_upload_leaves_the_old_checkpoint(s3, s3_endpoint: str, tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    from enn_nb.storage import sweep_incomplete_uploads

    url = s3.url("m.safetensors")
    model = tiny()
    old = enn_nb.save(model, url, storage_options=s3.options)
    proxy = FaultProxy(s3_endpoint)
    script = tmp_path / "save.py"
    script.write_text("import json, sys, torch, enn_nb\n"
                      "enn_nb.save({'w': torch.randn(12 << 20)}, sys.argv[2], storage_options=json.loads(sys.argv[1]))\n")
    opts = options(proxy.endpoint, default_block_size=5 << 20)  # 48 MiB in 5 MiB parts
    proc = subprocess.Popen([sys.executable, str(script), json.dumps(opts), url], cwd=Path(__file__).parents[1])
    try:
        deadline = time.monotonic() + 120
        while proxy.parts < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proxy.parts >= 2, "the save never got half-way"
        proc.kill()  # the writer dies mid-upload
        proc.wait(30)
    finally:
        proxy.close()
        if proc.poll() is None:
            proc.kill()
    assert enn_nb.inspect(url, storage_options=s3.options).content_hash == old.content_hash
    assert _same(enn_nb.load(url, storage_options=s3.options).model, model)
    import s3fs

    fs = s3fs.S3FileSystem(**s3.options)
    assert [u["Key"] for u in fs.list_multipart_uploads(s3.bucket)] == ["m.safetensors"]  # invisible to reads
    assert sweep_incomplete_uploads(s3.url(), s3.options, older_than_s=0) == [url]  # the documented sweep
    assert fs.list_multipart_uploads(s3.bucket) == []


def test_s3_dcp_resave_that_dies_leaves_the_old_checkpoint_then_a_good_one_sweeps(s3, s3_endpoint: str) -> None:
    import s3fs

    url = s3.url("dcp")
    first, second = tiny(), tiny(seed=7)
    old = enn_nb.save(first, url, storage_options=s3.options)
    # the store fails every write of DCP's metadata: the new shards are up, the save dies before its commit
    proxy = FaultProxy(s3_endpoint, lambda method, path: 500 if method == "PUT" and ".metadata" in path else None)
    once = {"retries": {"max_attempts": 1, "mode": "standard"}, "connect_timeout": 2, "read_timeout": 10}
    try:
        with pytest.raises(CheckpointWriteError) as info:
            enn_nb.save(second, url, storage_options=options(proxy.endpoint, config_kwargs=once))
    finally:
        proxy.close()
    assert SECRET not in str(info.value)
    fs = s3fs.S3FileSystem(**s3.options)
    shards = lambda: sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{s3.bucket}/dcp", refresh=True)  # noqa: E731
                            if p.endswith(".distcp"))
    assert len(shards()) > len(old.files) - 1  # the dead save's shards are there, under names of their own
    loaded = enn_nb.load(url, storage_options=s3.options)  # the old manifest still names a complete checkpoint
    assert loaded.manifest.content_hash == old.content_hash and _same(loaded.model, first)
    new = enn_nb.save(second, url, storage_options=s3.options)
    assert shards() == sorted(f.path for f in new.files if f.path.endswith(".distcp"))  # the rest swept
    assert _same(enn_nb.load(url, storage_options=s3.options).model, second)


# -- faults --------------------------------------------------------------------------------------------------
def test_s3_missing_bucket(s3) -> None:
    url = f"s3://no-such-bucket-{s3.bucket}/m.pt"
    with pytest.raises(CheckpointWriteError, match="does not exist") as info:
        enn_nb.save(tiny(), url, storage_options=s3.options)
    assert SECRET not in str(info.value)
    with pytest.raises(NotACheckpointError) as info:
        enn_nb.load(url, storage_options=s3.options)
    assert SECRET not in str(info.value)


def test_s3_no_credentials(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    opts = {k: v for k, v in s3.options.items() if k not in ("key", "secret")}
    with pytest.raises(CheckpointWriteError, match="credentials"):
        enn_nb.save(tiny(), s3.url("m.pt"), storage_options=opts)


@pytest.mark.parametrize("status", [500, 503])
def test_s3_server_errors_are_retried(status: int, s3, s3_endpoint: str) -> None:
    failures = {"left": 2}

    def rule(method: str, path: str) -> int | None:
        if method == "PUT" and failures["left"] > 0:
            failures["left"] -= 1
            return status
        return None

    proxy = FaultProxy(s3_endpoint, rule)
    try:
        model = tiny()
        enn_nb.save(model, s3.url("m.safetensors"), storage_options=options(proxy.endpoint))
    finally:
        proxy.close()
    assert failures["left"] == 0
    assert _same(enn_nb.load(s3.url("m.safetensors"), storage_options=s3.options).model, model)


def test_s3_server_errors_that_persist_give_one_clean_error(s3, s3_endpoint: str) -> None:
    url = s3.url("m.safetensors")
    old = enn_nb.save(tiny(), url, storage_options=s3.options)
    proxy = FaultProxy(s3_endpoint, lambda method, path: 503 if method == "PUT" else None)
    try:
        with pytest.raises(CheckpointWriteError, match="nothing was replaced") as info:
            # botocore tries once, s3fs retries with its own backoff: the error comes in about 2 s
            once = {"retries": {"max_attempts": 1, "mode": "standard"}, "connect_timeout": 2, "read_timeout": 10}
            enn_nb.save(tiny(seed=2), url, storage_options=options(proxy.endpoint, config_kwargs=once))
    finally:
        proxy.close()
    assert SECRET not in str(info.value) and "\n" not in str(info.value)
    assert enn_nb.inspect(url, storage_options=s3.options).content_hash == old.content_hash


@pytest.mark.slow
def test_s3_server_killed_mid_upload_leaves_the_old_object(s3, s3_endpoint: str) -> None:
    url = s3.url("big.pt")
    old = enn_nb.save({"w": torch.zeros(3 << 20)}, url, storage_options=s3.options)  # 12 MiB
    proxy = FaultProxy(s3_endpoint, die_after_parts=1)
    small_blocks = options(proxy.endpoint, default_block_size=5 << 20)  # multipart: 5 MiB parts
    try:
        with pytest.raises(CheckpointWriteError, match="nothing was replaced") as info:
            enn_nb.save({"w": torch.ones(3 << 20)}, url, storage_options=small_blocks)
    finally:
        proxy.close()
    assert proxy.parts == 1 and SECRET not in str(info.value)
    assert enn_nb.inspect(url, storage_options=s3.options).content_hash == old.content_hash
    import s3fs

    fs = s3fs.S3FileSystem(**s3.options)
    # the abort could not reach a dead server: the upload stays open, invisible to reads, until swept
    assert [u["Key"] for u in fs.list_multipart_uploads(s3.bucket)] == ["big.pt"]
    from enn_nb.storage import sweep_incomplete_uploads

    assert sweep_incomplete_uploads(s3.url(), s3.options, older_than_s=0) == [url]
    assert fs.list_multipart_uploads(s3.bucket) == []


def test_s3_read_only_policy(tmp_path: Path) -> None:
    """moto enforcing IAM: a user whose policy allows only reads loads, and a save of theirs is refused cleanly."""
    import boto3
    import s3fs

    with moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "6"}) as endpoint:
        iam = boto3.client("iam", aws_access_key_id="testing", aws_secret_access_key=SECRET,
                           region_name="us-east-1", endpoint_url=endpoint)
        keys = {}
        for user, actions in (("admin", ["s3:*"]), ("reader", ["s3:Get*", "s3:List*", "s3:Head*"])):
            iam.create_user(UserName=user)  # the 6 actions run before moto starts checking credentials
            # (moto checks a HEAD of an object as `s3:HeadObject`: the read-only user gets Head* too)
            keys[user] = iam.create_access_key(UserName=user)["AccessKey"]
            iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps({
                "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
        admin, reader = ({**options(endpoint), "key": keys[u]["AccessKeyId"], "secret": keys[u]["SecretAccessKey"]}
                         for u in ("admin", "reader"))
        s3fs.S3FileSystem(**admin).mkdir("ro-bucket")
        url = "s3://ro-bucket/m.pt"
        model = tiny()
        enn_nb.save(model, url, storage_options=admin)
        with pytest.raises(CheckpointWriteError, match="refused access") as info:
            enn_nb.save(tiny(seed=3), url, storage_options=reader)
        assert keys["reader"]["SecretAccessKey"] not in str(info.value)
        assert _same(enn_nb.load(url, storage_options=reader).model, model)
