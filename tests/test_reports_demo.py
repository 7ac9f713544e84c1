"""``make demo``'s program: train, save in three formats, report; the HTML report's path is printed last."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.notebook
def test_demo_writes_everything_under_one_folder_and_prints_the_html_last(tmp_path):
    out = tmp_path / "demo out"  # a space: paths are passed through untouched
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "enn_nb.surfaces.demo", "--out", str(out), "--backends", "pt2", "--no-progress"]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last == str(out / "export_report.html")
    page = Path(last).read_text(encoding="utf-8")
    assert 'data-verdict="pass"' in page and "enn-nb demo: export report" in page
    for rel in ("checkpoints/reference.pt", "checkpoints/reference.safetensors", "checkpoints/reference.dcp",
                "export_report.ipynb", "export_report-artifacts/model.pt2",
                "export_report-artifacts/model.pt2.enn.json",
                "checkpoint_report.html"):
        assert (out / rel).exists(), rel
    assert "Same model: identical spec" in (out / "checkpoint_report.html").read_text(encoding="utf-8")
    assert "PASS: 1 verified" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "checkpoints", "checkpoint_report.ipynb", "checkpoint_report.html",
        "export_report.ipynb", "export_report.html", "export_report-artifacts"])


def test_demo_is_an_enn_nb_subcommand():
    from enn_nb.surfaces.cli import build_parser

    args = build_parser().parse_args(["demo", "--out", "x", "--backends", "onnx,pt2", "--no-html"])
    assert args.command == "demo" and args.out == "x" and args.backends == "onnx,pt2" and args.no_html
    assert callable(args.func)
