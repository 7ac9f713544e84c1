"""The ``enn-nb`` command: a thin dispatcher over subcommand modules.

Each area of the library owns its subcommands in a module exposing ``register(subparsers)``, which
declares each one with :func:`~enn_nb.surfaces.cli.command.add_command` (``func(args) -> int``, the
exit code). :func:`main` is the one entry point: ``enn-nb``, ``python -m enn_nb.surfaces.cli`` and
``python -m enn_nb.surfaces.demo`` all run it. Modules are imported only to build the parser,
and heavy packages are imported only inside ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from enn_nb._safeio import escape
from enn_nb._version import __version__
from enn_nb.errors import EnnError

# Modules contributing subcommands, in the order `enn-nb --help` lists them.
SUBCOMMAND_MODULES = (
    "enn_nb.surfaces.cli.checkpoint",  # inspect, convert
    "enn_nb.surfaces.cli.export",  # backends, export, verify, build-trt
    "enn_nb.surfaces.cli.report",  # report
    "enn_nb.surfaces.demo",  # demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="enn-nb",
        description="Save, inspect and export ENN-style PyTorch models.",
    )
    parser.add_argument("--version", action="version", version=f"enn-nb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that area is not built yet / not shipped
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except EnnError as exc:
        _error(args.command, str(exc))
        return 1
    except BrokenPipeError:  # `enn-nb inspect ... | head`: the reader left; stop quietly like other tools
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe
    except OSError as exc:  # a read-only or full disk, a missing folder: the path and the reason, one line
        where = f"`{exc.filename}`: " if getattr(exc, "filename", None) else ""
        _error(args.command, f"{where}{exc.strerror or exc}. Check the path, its permissions and the free disk space.")
        return 1
    except KeyboardInterrupt:
        return 130
    except (RecursionError, MemoryError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            RuntimeError) as exc:
        # Not an enn_nb error: a bug or an input enn_nb failed to classify. One line, never a traceback.
        _error(args.command, f"unexpected {type(exc).__name__}: {str(exc)[:300]} (please report this as a bug; set "
               "ENN_NB_TRACEBACK=1 to see the traceback)")
        if os.environ.get("ENN_NB_TRACEBACK"):
            raise
        return 1


def _error(command: str, message: str) -> None:
    print(f"enn-nb {command}: error: {escape(' '.join(message.split()))}", file=sys.stderr)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real stdout (embedded): nothing is left to flush
        pass


if __name__ == "__main__":
    raise SystemExit(main())
