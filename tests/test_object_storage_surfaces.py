"""URLs through every surface: the CLI, export and verify, report templates, the magics; never a secret in their output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import enn_nb
from tests.fixtures.models import tiny
from tests.fixtures.s3 import SECRET

def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``enn-nb ARGS`` run in this process (the real parser and error handling): (exit code, stdout, stderr)."""
    from enn_nb.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _flags(options: dict) -> list[str]:
    return ["--storage-option", f"key={options['key']}", "--storage-option", f"secret={options['secret']}",
            "--storage-option", f"client_kwargs.endpoint_url={options['client_kwargs']['endpoint_url']}"]


def test_cli_inspect_and_convert_on_s3_never_print_the_secret(s3, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    manifest = enn_nb.save(tiny(), s3.url("m.pt"), storage_options=s3.options)
    runs = [_cli(capsys, "inspect", s3.url("m.pt"), "--json", *_flags(s3.options))]
    assert runs[0][0] == 0 and json.loads(runs[0][1])["content_hash"] == manifest.content_hash
    runs.append(_cli(capsys, "convert", s3.url("m.pt"), s3.url("m.safetensors"), *_flags(s3.options)))
    assert runs[1][0] == 0 and s3.url("m.safetensors") in runs[1][1]
    runs.append(_cli(capsys, "inspect", f"s3://no-such-{s3.bucket}/m.pt", *_flags(s3.options)))
    assert runs[2][0] == 2 and "does not exist" in runs[2][2] and len(runs[2][2].splitlines()) == 1
    for _code, out, err in runs:
        assert SECRET not in out + err
    assert list(tmp_path.iterdir()) == []


def test_cli_glob_that_matches_nothing_writes_nothing(s3, tmp_path: Path, capsys) -> None:
    out = tmp_path / "reports"
    code, _, err = _cli(capsys, "report", "checkpoint_report", "--each", s3.url("ckpts/*.safetensors"), "--out",
                        str(out), *_flags(s3.options))
    assert code == 1 and "matches" in err and SECRET not in err
    assert not out.exists()


def test_export_to_s3_stages_verifies_uploads_and_verify_fetches_back(s3, tmp_path: Path) -> None:
    from tests.fixtures.models import TinyMLP

    model = TinyMLP().eval()
    url = s3.url("exports/run1")
    report = enn_nb.export(model, "pt2", out_dir=url, example_inputs=torch.randn(4, 6), isolate=False,
                           storage_options=s3.options, quantize="int8-weights", calibration=torch.randn(64, 6))
    assert report.ok and report.uploaded_to == url
    names = {u.rsplit("/", 1)[-1] for u in report.uploaded}
    assert {"model.pt2", "model.pt2.enn.json"} <= names and any(n.endswith(".vectors.safetensors") for n in names)
    sidecar = json.dumps(report.to_dict()) + "".join(p.read_text(errors="replace") for p in report.out_dir.glob("*.json"))
    assert SECRET not in sidecar
    result = enn_nb.verify(f"{url}/model.pt2", storage_options=s3.options)
    assert result.status == "passed", (result.reason, result.problems)
    # the result names the URL asked about; the verified local copy is said separately
    assert result.url == f"{url}/model.pt2" and str(result).startswith(f"{url}/model.pt2 [pt2]: passed")
    assert result.to_dict()["artifact"] == f"{url}/model.pt2" and result.to_dict()["local_copy"] == str(result.artifact)
    # a quantized artifact: the float sidecar and the vectors it names are fetched with it
    quantized = enn_nb.verify(f"{url}/model.int8-weights.pt2", storage_options=s3.options)
    assert quantized.status in ("passed", "degraded") and not quantized.problems, (quantized.reason, quantized.problems)
    assert quantized.accuracy["rows"] > 0 and "vectors" in quantized.accuracy["evaluated_on"]
    # a damaged upload: the hash check refuses it before anything is loaded
    import s3fs

    fs = s3fs.S3FileSystem(**s3.options)
    fs.pipe(f"{s3.bucket}/exports/run1/model.pt2", b"not the artifact")
    damaged = enn_nb.verify(f"{url}/model.pt2", storage_options=s3.options)
    assert damaged.status == "failed" and "nothing was loaded" in damaged.reason


def test_storage_options_from_the_environment(s3, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENN_NB_STORAGE_OPTIONS", json.dumps(s3.options))
    manifest = enn_nb.save(tiny(), s3.url("env.safetensors"))
    assert enn_nb.inspect(s3.url("env.safetensors")).content_hash == manifest.content_hash
    monkeypatch.setenv("ENN_NB_STORAGE_OPTIONS", json.dumps({**s3.options, "client_kwargs": {
        "endpoint_url": "http://127.0.0.1:9"}}))  # nothing listens there: the error names no secret
    with pytest.raises(enn_nb.errors.CheckpointError) as info:
        enn_nb.inspect(s3.url("env.safetensors"))
    assert SECRET not in str(info.value)


def test_magics_take_urls(ip) -> None:
    import uuid

    ip.user_ns["net"] = tiny()
    url = f"memory://magics-{uuid.uuid4().hex[:8]}/run/net.safetensors"
    ip.run_line_magic("enn_save", f"net {url} --meta run=1")
    manifest = ip.run_line_magic("enn_inspect", url)
    assert manifest.spec.metadata["run"] == 1
    loaded = ip.run_line_magic("enn_load", f"{url} --into back")
    assert loaded.verified and ip.user_ns["back"] is loaded.model
    assert not list(Path.cwd().iterdir())  # the cwd (tmp_path) holds no `memory:` folder


@pytest.mark.slow
@pytest.mark.notebook
def test_report_each_globs_s3_through_fsspec(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for seed in (0, 1):
        enn_nb.save(tiny(seed=seed), s3.url(f"ckpts/m{seed}.safetensors"), storage_options=s3.options)
    monkeypatch.setenv("ENN_NB_STORAGE_OPTIONS", json.dumps(s3.options))  # what the kernels read
    from enn_nb.reports.batch import run_batch

    batch = run_batch("checkpoint_report", s3.url("ckpts/*"), tmp_path / "out", html=True, progress=False)
    assert [str(e.source) for e in batch.entries] == [s3.url("ckpts/m0.safetensors"), s3.url("ckpts/m1.safetensors")]
    assert all(e.result.status == "pass" for e in batch.entries), [e.result.failures for e in batch.entries]
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path
