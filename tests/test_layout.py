"""The package layout: modules moved in the layout change still import under their old paths."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from enn_nb import _moved


@pytest.mark.parametrize("old", sorted(_moved.MOVED))
def test_an_old_module_path_gives_the_same_module_as_the_new_one(old: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, old, raising=False)  # an earlier import under the old name would skip the warning
    with pytest.warns(DeprecationWarning, match="moved to"):
        via_old = importlib.import_module(old)
    new = importlib.import_module(_moved.MOVED[old])
    assert via_old is new
    assert new.__spec__.name == _moved.MOVED[old]  # the alias does not rename the real module


def test_a_module_inside_a_moved_package_follows_it() -> None:
    assert _moved.new_name("enn_nb.notebook.wizard_state") == "enn_nb.surfaces.notebook.wizard_state"
    assert _moved.new_name("enn_nb.reports.cli") == "enn_nb.surfaces.cli.report"  # the specific entry wins
    assert _moved.new_name("enn_nb.engine.pipeline") is None
    import enn_nb.notebook.wizard_state as old
    import enn_nb.surfaces.notebook.wizard_state as new

    assert old is new


def test_old_command_line_module_paths_still_run() -> None:
    for module in ("enn_nb.cli", "enn_nb.surfaces.cli"):
        done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("enn-nb ")
