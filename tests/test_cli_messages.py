"""What the command line says to a new user: did-you-mean, one exit-code table, verify's wrong inputs, pip lines."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import pytest
import torch

import enn_nb
from enn_nb.surfaces.cli import EXIT_CODES, build_parser, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gru_checkpoint(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    enn_nb.save(torch.nn.Linear(3, 2), "gru.safetensors")
    return tmp_path / "gru.safetensors"


def test_a_mistyped_checkpoint_gets_did_you_mean_and_the_same_code_on_every_verb(gru_checkpoint, capsys):
    for argv in (["inspect", "gru.safetensor"], ["convert", "gru.safetensor", "x.pt"],
                 ["export", "gru.safetensor", "-b", "pt2", "-o", "exports"],
                 ["report", "checkpoint_report", "-p", "checkpoint=gru.safetensor", "--out", "exports"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "`gru.safetensor` does not exist" in err and "did you mean `gru.safetensors`?" in err, err
    assert not Path("x.pt").exists() and not Path("exports").exists()  # the report started no kernel


def test_one_exit_code_table_in_every_help(tmp_path, monkeypatch, capsys):
    parser = build_parser()
    helps = [parser.format_help()]
    helps += [verb.format_help() for verb in parser._subparsers._group_actions[0].choices.values()]  # noqa: SLF001
    for text in helps:
        assert "exit codes (every command):" in text
        for code in EXIT_CODES:
            assert f"\n  {code:<4} " in text
    assert len(helps) >= 7
    # flags that cannot work exit 2 on every verb, as argparse's own usage errors do
    assert main(["report", "export_report"]) == 2 and "`--out DIR` is required" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    Path("m.pt").write_bytes(b"never read: the flags are refused first")
    assert main(["export", "m.pt", "-b", "pt2", "-o", "e", "--model-path", "."]) == 2
    assert "pass `--model pkg.module:factory` too" in capsys.readouterr().err


def test_verify_says_what_is_wrong_with_its_argument(gru_checkpoint, capsys):
    assert main(["verify", "model.onx"]) == 2
    err = capsys.readouterr().err
    assert "`model.onx` does not exist" in err and "sidecar" not in err
    assert main(["verify", "gru.safetensors"]) == 2
    err = capsys.readouterr().err
    assert "is a safetensors checkpoint; verify is for exported artifacts" in err
    assert "enn-nb inspect gru.safetensors" in err


def test_a_factory_of_another_model_names_the_cli_flag_not_strict(gru_checkpoint, tmp_path, monkeypatch, capsys):
    (tmp_path / "other_models.py").write_text("import torch\n\ndef wide():\n    return torch.nn.Linear(4, 2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["export", "gru.safetensors", "--model", "other_models:wide", "-b", "pt2", "-o", "exports"]) == 2
    err = capsys.readouterr().err
    assert "does not match the model" in err and "`--model other_models:wide`" in err
    assert "pass `strict=False`" not in err and "or `strict=False`" not in err
    assert not Path("exports").exists()


def test_a_factory_computing_another_function_names_the_cli_flag_not_strict(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    enn_nb.save(torch.nn.Linear(3, 2), "lin.safetensors", spec=enn_nb.ModelSpec(inputs=["x:float32[B, 3]"]), quiet=True)
    (tmp_path / "shifted_models.py").write_text(
        "import torch\n\nclass Shifted(torch.nn.Linear):\n    def forward(self, x):\n        return super().forward(x) + 1\n\n"
        "def build():\n    return Shifted(3, 2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["export", "lin.safetensors", "--model", "shifted_models:build", "-b", "pt2", "-o", "exports"]) == 1
    err = capsys.readouterr().err
    assert "does not compute what the saved one did" in err and "`--model shifted_models:build`" in err
    assert "strict=False" not in err and not Path("exports").exists()


def test_backends_in_a_terminal_print_pip_and_tensorrt_is_not_available_without_tensorrt(capsys):
    from enn_nb._optional import is_installed, pip_line

    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "%pip" not in out
    row = next(line for line in out.splitlines() if line.startswith("tensorrt"))
    if not is_installed("tensorrt"):
        assert row.split()[2:4] == ["no", "(deferred)"], row
        assert "pip install 'enn-nb[tensorrt]'" in row and "build-trt" in row
    assert pip_line(extra="onnx") == "%pip install 'enn-nb[onnx]'"  # the notebook's form outside the command


@pytest.mark.slow
def test_make_lab_starts_as_the_current_user_root_included(tmp_path):
    pytest.importorskip("jupyterlab")
    from tests.fixtures.servers import free_port, serve

    token, port = secrets.token_hex(16), free_port()
    args = f"--no-browser --port={port} --ServerApp.ip=127.0.0.1 --IdentityProvider.token={token}"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "ENN_NB_VENV": str(Path(sys.executable).parents[1])}
    with serve(["make", "-C", str(ROOT), "lab", f"LAB_ARGS={args}"], cwd=tmp_path, env=env, log=tmp_path / "lab.log",
               ready_url=f"http://127.0.0.1:{port}/api/status?token={token}"):
        pass
    assert "Running as root is not recommended" not in (tmp_path / "lab.log").read_text()
