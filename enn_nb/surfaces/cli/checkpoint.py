"""``enn-nb inspect`` and ``enn-nb convert``: the checkpoint subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from enn_nb.checkpoint.schema import FORMATS
from enn_nb.surfaces.cli.command import add_command


def register(subparsers: Any) -> None:
    """Add ``inspect PATH [--json]`` and ``convert SRC DST [--format F]`` to the ``enn-nb`` parser."""
    p = add_command(
        subparsers,
        "inspect",
        _inspect,
        help="show a checkpoint's manifest (reads no tensor data)",
        description="Show what a checkpoint holds: spec, versions, metadata, tensor table and hashes. "
        "Reads .pt/.pth, .safetensors and DCP directories (enn_nb and ENN-PyTorch layouts) without "
        "loading tensor data.",
        epilog="examples:\n  enn-nb inspect checkpoints/model.safetensors\n  enn-nb inspect checkpoints/model_dcp --json",
    )
    p.add_argument("path", help="a .pt/.pth/.safetensors file or a DCP directory")
    p.add_argument("--json", action="store_true", help="print the manifest JSON document instead of a table")

    p = add_command(
        subparsers,
        "convert",
        _convert,
        help="convert a checkpoint to another format (manifest carried over)",
        description="Copy a checkpoint into another format; the source is verified first and its manifest "
        "(spec, metadata, hashes, optimizer state) carries over.",
        epilog="examples:\n  enn-nb convert model.pt model.safetensors\n  enn-nb convert model.safetensors model_dcp --format dcp",
    )
    p.add_argument("src", help="the checkpoint to read")
    p.add_argument("dst", help="where to write: .pt/.pth, .safetensors, or a directory for DCP")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="the destination format (default: from DST's suffix)")


def _inspect(args: argparse.Namespace) -> int:
    from enn_nb.checkpoint.api import inspect

    manifest = inspect(args.path)
    if args.json:
        document = manifest.to_dict()
        document["content_hash"] = manifest.content_hash
        json.dump(document, sys.stdout, indent=2, sort_keys=False)
        sys.stdout.write("\n")
    else:
        print(manifest)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from enn_nb.checkpoint.api import convert

    manifest = convert(args.src, args.dst, format=args.format)
    print(f"wrote {manifest.format} checkpoint {manifest.path} ({len(manifest.tensors)} tensors, "
          f"content_hash {manifest.content_hash})")
    return 0
