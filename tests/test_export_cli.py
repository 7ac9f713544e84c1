"""`enn-nb backends`, `enn-nb export SRC`, `enn-nb verify ARTIFACT` and `build-trt`, through the real CLI entry."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.numpy import load_file, save_file

import enn_nb
from enn_nb.surfaces.cli import build_parser, main
from enn_nb.engine import sidecar

from tests.fixtures.conformance import assert_backend_conforms
from tests.fixtures.models import TinyMLP


def test_backends_json(capsys):
    assert main(["backends", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows][:4] == ["onnx", "ort", "pt2", "aoti"]
    assert {"name", "suffix", "available", "reason", "install"} <= set(rows[0])


def test_build_trt_is_registered_and_names_a_missing_sidecar(tmp_path, capsys):
    sidecar = tmp_path / "model.engine.enn.json"
    assert build_parser().parse_args(["build-trt", str(sidecar)]).func.__name__ == "_build_trt"
    assert main(["build-trt", str(sidecar)]) == 1
    err = capsys.readouterr().err
    assert "No sidecar `model.engine.enn.json`" in err and str(tmp_path) in err


@pytest.mark.slow
def test_export_a_checkpoint_then_verify(trained_model, tmp_path, capsys):
    ckpt = tmp_path / "ref.safetensors"
    manifest = enn_nb.save(trained_model, ckpt)
    out = tmp_path / "artifacts"
    rc = main(["export", str(ckpt), "--backends", "pt2,onnx", "--out", str(out), "--json", "--no-cache"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    report = json.loads(printed)
    assert [r["status"] for r in report["results"]] == ["ok", "ok"]
    for name in ("pt2", "onnx"):
        data = sidecar.read(out / ("model." + name))
        assert data["source"]["kind"] == "checkpoint"
        assert data["source"]["content_hash"] == manifest.content_hash
        assert data["source"]["path"] == str(ckpt.resolve())
        assert json.loads(data["embedded"]["enn_nb.model.spec"])["in_dim"] == trained_model.in_dim
        assert data["embedded"]["enn_nb.source_hash"] == manifest.content_hash

    assert main(["verify", str(out / "model.onnx")]) == 0
    text = capsys.readouterr().out
    assert "model.onnx [onnx]: passed" in text and "batch   7" in text


def test_verify_detects_changed_outputs_and_tampered_files(tmp_path, capsys):
    report = enn_nb.export(TinyMLP(), "pt2", out_dir=tmp_path, example_inputs=torch.randn(2, 6), isolate=False, cache=False)
    artifact = report["pt2"].artifact
    assert main(["verify", str(artifact), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    # someone changes the recorded expected outputs: the artifact no longer matches them
    vectors = tmp_path / "model.vectors.safetensors"
    from safetensors import safe_open

    with safe_open(str(vectors), framework="numpy") as fh:
        meta = fh.metadata()
    tensors = load_file(str(vectors))
    tensors = {k: (v + 1.0 if "/out/" in k else v) for k, v in tensors.items()}
    save_file(tensors, str(vectors), metadata=meta)
    assert main(["verify", str(artifact)]) == 1
    text = capsys.readouterr().out
    # a file that differs from its sidecar stops verify before anything is loaded
    assert "has another sha256" in text and "nothing was loaded" in text and "MISMATCH" not in text
    # resealed (the sidecar records the new hash): the artifact runs, and its outputs no longer match
    side = sidecar.sidecar_path(Path(artifact))
    data = json.loads(side.read_text())
    data["parity"]["vectors"]["sha256"] = sidecar.sha256_file(vectors)
    for entry in data["files"]:
        if entry["path"] == vectors.name:
            entry.update(sha256=sidecar.sha256_file(vectors), size=vectors.stat().st_size)
    side.write_text(json.dumps(data))
    assert main(["verify", str(artifact)]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_export_exits_non_zero_when_a_backend_is_not_ok(trained_model, tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "ref.pt"
    enn_nb.save(trained_model, ckpt)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    rc = main(["export", str(ckpt), "--backends", "ort", "--out", str(tmp_path / "o"), "--no-isolate"])
    assert rc == 1
    assert "unavailable" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "missing.pt"), "--backends", "pt2", "--out", str(tmp_path / "o")]) == 2


def test_export_option_parsing(trained_model, tmp_path, capsys):
    ckpt = tmp_path / "ref.pt"
    enn_nb.save(trained_model, ckpt)
    rc = main(["export", str(ckpt), "-b", "pt2", "-o", str(tmp_path / "o"), "--no-isolate", "--static-batch",
               "--option", "pt2.timeout_s=600"])
    assert rc == 0, capsys.readouterr()
    data = assert_backend_conforms(enn_nb.export(ckpt, "pt2", out_dir=tmp_path / "o", dynamic_batch=False,
                                                 options={"pt2": {"timeout_s": 600}}, isolate=False), "pt2")
    assert data["options"]["timeout_s"] == 600 and data["dynamic_batch"] is False
    with pytest.raises(SystemExit):
        main(["export", str(ckpt), "-b", "pt2", "-o", str(tmp_path / "o"), "--option", "bad"])
