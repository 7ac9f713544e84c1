"""``add_command``: how every ``enn-nb`` subcommand is declared (one formatter, one ``func`` contract)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_command(subparsers: Any, name: str, func: Callable[[argparse.Namespace], int], *, help: str,  # noqa: A002
                description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """Add subcommand ``name`` running ``func(args) -> exit code``; returns its parser for the arguments.

    Descriptions and epilogs keep their line breaks (examples are written one per line).
    """
    parser = subparsers.add_parser(name, help=help, description=description, epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=func)
    return parser
