"""Fixtures of the magics tests: a real InteractiveShell with enn_nb loaded, whose cells re-raise."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


def get_shell() -> Any:
    """The process's InteractiveShell (created once, with an in-memory history)."""
    from IPython.core.interactiveshell import InteractiveShell

    if not InteractiveShell.initialized():
        from traitlets.config import Config

        config = Config()
        config.HistoryManager.hist_file = ":memory:"
        return InteractiveShell.instance(config=config)
    return InteractiveShell.instance()


def run_cell(ip: Any, source: str) -> Any:
    """Run a cell like a notebook does (history stored, count bumped) and re-raise what it raised."""
    result = ip.run_cell(source, store_history=True)
    result.raise_error()
    return result.result


@pytest.fixture
def ip(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The shell with ``%load_ext enn_nb`` done, cwd in ``tmp_path``; unloaded and its new names removed after.

    The export cache is empty for each test (conftest's ``isolated_export_cache``), so every export converts.
    """
    shell = get_shell()
    monkeypatch.chdir(tmp_path)
    before = set(shell.user_ns)
    shell.run_line_magic("load_ext", "enn_nb")
    try:
        yield shell
    finally:
        shell.run_line_magic("unload_ext", "enn_nb")
        for name in set(shell.user_ns) - before:
            del shell.user_ns[name]
