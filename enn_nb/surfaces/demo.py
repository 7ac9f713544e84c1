"""``make demo`` / ``enn-nb demo``: train the reference model, save it three ways, and report its export.

Writes under one folder::

    OUT/checkpoints/reference.{pt,safetensors}  and  reference.dcp/   (the same weights, three formats)
    OUT/export_report.ipynb, .html        the executed export report (verdict at the top)
    OUT/export_report-artifacts/          one artifact + .enn.json sidecar per backend, parity vectors
    OUT/checkpoint_report.ipynb, .html    the .pt and DCP checkpoints compared (they must be identical)

and prints the HTML report's path last. Exits 1 when the report's verdict fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from enn_nb.surfaces.cli.command import add_command


#: ``--help`` text: plain words, not the module docstring's reStructuredText.
DESCRIPTION = (
    "Train the reference model, save it as .pt, .safetensors and a DCP folder, and write the export report\n"
    "for every backend available here (and the checkpoint report comparing the formats). Writes under OUT:\n"
    "  checkpoints/          the same weights in three formats\n"
    "  export_report.html    the export report, verdict first (and the executed .ipynb)\n"
    "  export_report-artifacts/  one artifact + .enn.json sidecar per backend\n"
    "  checkpoint_report.html    the .pt and DCP checkpoints compared\n"
    "Prints the HTML report's path last; exits 1 when the report's verdict fails."
)
EPILOG = "examples:\n  enn-nb demo --out out\n  enn-nb demo --out /tmp/quick --backends onnx,pt2 --no-progress"


def run_demo(out: str | os.PathLike[str], *, backends: str | Sequence[str] = "available", html: bool = True,
             progress: bool = True) -> int:
    """Train, save in .pt/.safetensors/DCP, run both report templates; return the exit code."""
    from enn_nb.checkpoint import save
    from enn_nb.reference import train_reference
    from enn_nb.surfaces.reports import report

    out_dir = Path(out).expanduser().resolve()
    ckpts = out_dir / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def step(text: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {text}", flush=True)

    step("training the reference model (seed 0)")
    model = train_reference(seed=0)
    paths = {"pt": ckpts / "reference.pt", "safetensors": ckpts / "reference.safetensors",
             "dcp": ckpts / "reference.dcp"}
    meta = {"made_by": "enn-nb demo"}
    save(model, paths["pt"], metadata=meta)
    save(model, paths["safetensors"], metadata=meta)
    save(model, paths["dcp"], format="dcp", metadata=meta)
    step("saved " + ", ".join(str(p.relative_to(out_dir)) for p in paths.values()))

    step("checkpoint_report: the .pt checkpoint against the DCP directory")
    ck = report("checkpoint_report", out_dir, html=html, progress=progress, no_input=True,
                checkpoint=str(paths["pt"]), other=str(paths["dcp"]), title="enn-nb demo: one model, two formats")

    which = backends if isinstance(backends, str) else ", ".join(backends)
    step(f"export_report: {paths['safetensors'].name} to {which} backends")
    result = report("export_report", out_dir, html=html, no_input=True, progress=progress,
                    checkpoint=str(paths["safetensors"]), title="enn-nb demo: export report",
                    backends=backends if isinstance(backends, str) else list(backends))
    step("done")
    print()
    print(result.verdict if result.verdict is not None else "(no verdict)")
    print(f"checkpoints:      {ckpts}")
    print(f"artifacts:        {result.parameters.get('out_dir')}")
    print(f"checkpoint diff:  {ck.html or ck.notebook}")
    print(f"executed notebook: {result.notebook}")
    print(result.html or result.notebook, flush=True)  # last line: the report to open
    return 0 if result.ok else 1


def register(subparsers: Any) -> None:
    parser = add_command(
        subparsers,
        "demo",
        _run,
        help="train the reference model, save it in 3 formats and write the export report",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    parser.add_argument("--out", default="out", metavar="DIR", help="output folder (default: ./out)")
    parser.add_argument("--backends", default="available", metavar="LIST",
                        help="'available' (default: every backend that converts here), 'all', or e.g. onnx,pt2")
    parser.add_argument("--no-html", action="store_true", help="write the executed notebooks only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run(args: argparse.Namespace) -> int:
    return run_demo(args.out, backends=args.backends, html=not args.no_html, progress=not args.no_progress)


if __name__ == "__main__":  # `python -m enn_nb.surfaces.demo` (`make demo`) is `enn-nb demo`: the CLI's one main
    from enn_nb.surfaces.cli import main

    raise SystemExit(main(["demo", *sys.argv[1:]]))
