"""``%load_ext enn_nb``: light to load, registers and unregisters the magics, settings via ``%config``, help."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from IPython.core.error import UsageError
from traitlets import TraitError

from tests.fixtures.magics import get_shell


LINE_MAGICS = ("enn_save", "enn_load", "enn_inspect", "enn_export", "enn_backends", "enn_wizard")
CELL_MAGICS = ("enn_export",)
HEAVY = (
    "torch", "onnx", "onnxruntime", "onnxscript", "tensorflow", "executorch", "coremltools",
    "litert_torch", "ai_edge_litert", "tensorrt", "ipywidgets", "papermill", "matplotlib", "numpy",
)  # fmt: skip


def test_load_ext_imports_no_heavy_package() -> None:
    code = textwrap.dedent(
        f"""
        import json, sys
        from IPython.core.interactiveshell import InteractiveShell
        ip = InteractiveShell.instance()
        ip.run_line_magic("load_ext", "enn_nb")
        ip.run_line_magic("config", "EnnMagics")  # listing the settings imports nothing either
        ip.run_line_magic("config", "EnnMagics.out_dir = 'exports'")
        heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({list(HEAVY)!r}))
        print(json.dumps({{"heavy": heavy, "line": sorted(ip.magics_manager.magics["line"])}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert set(LINE_MAGICS) <= set(result["line"])


def test_load_registers_and_unload_removes_magics_and_settings() -> None:
    shell = get_shell()
    shell.run_line_magic("load_ext", "enn_nb")
    try:
        line = shell.magics_manager.magics["line"]
        cell = shell.magics_manager.magics["cell"]
        assert set(LINE_MAGICS) <= set(line)
        assert set(CELL_MAGICS) <= set(cell)
        assert [type(c).__name__ for c in shell.configurables].count("EnnMagics") == 1
    finally:
        shell.run_line_magic("unload_ext", "enn_nb")
    assert not set(LINE_MAGICS) & set(shell.magics_manager.magics["line"])
    assert "enn_export" not in shell.magics_manager.magics["cell"]
    assert "EnnMagics" not in [type(c).__name__ for c in shell.configurables]
    assert "EnnMagics" not in shell.magics_manager.registry
    with pytest.raises(UsageError, match="enn_save"):
        shell.run_line_magic("enn_save", "model x.pt")
    # loading again after unloading gives working magics again, once
    shell.run_line_magic("load_ext", "enn_nb")
    try:
        assert "enn_save" in shell.magics_manager.magics["line"]
        assert [type(c).__name__ for c in shell.configurables].count("EnnMagics") == 1
    finally:
        shell.run_line_magic("unload_ext", "enn_nb")


def test_reload_ext_keeps_one_set_of_magics(ip) -> None:
    ip.run_line_magic("reload_ext", "enn_nb")
    assert [type(c).__name__ for c in ip.configurables].count("EnnMagics") == 1
    assert "enn_export" in ip.magics_manager.magics["cell"]


def test_config_lists_and_changes_settings(ip, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic("config", "EnnMagics")
    listing = capsys.readouterr().out
    for name in ("out_dir", "default_backends", "tolerances", "isolate", "dynamic_batch", "batch_range", "verify"):
        assert f"EnnMagics.{name}" in listing
    ip.run_line_magic("config", 'EnnMagics.out_dir = "exports"')
    ip.run_line_magic("config", "EnnMagics.default_backends = ['onnx']")
    ip.run_line_magic("config", "EnnMagics.isolate = False")
    ip.run_line_magic("config", "EnnMagics.tolerances = {'onnx': {'atol': 1e-5, 'rtol': 1e-4}}")
    magics = ip.magics_manager.registry["EnnMagics"]
    assert magics.out_dir == "exports"
    assert magics.default_backends == ["onnx"]
    assert magics.isolate is False
    assert magics.tolerances == {"onnx": {"atol": 1e-5, "rtol": 1e-4}}
    assert ip.run_line_magic("config", "EnnMagics.out_dir") == "exports"


def test_settings_are_validated(ip) -> None:
    magics = ip.magics_manager.registry["EnnMagics"]
    with pytest.raises(TraitError, match=r"tolerances\.onnx\.atol"):
        magics.tolerances = {"onnx": {"atol": "loose"}}
    with pytest.raises(TraitError, match=r"min <= opt <= max"):
        magics.batch_range = [8, 1, 64]
    assert magics.batch_range == [1, 8, 64]


def test_settings_from_ipython_config_apply_at_load() -> None:
    from traitlets.config import Config

    from enn_nb.surfaces.notebook.magics import EnnMagics

    shell = get_shell()
    config = Config()
    config.EnnMagics.out_dir = "from_profile"
    magics = EnnMagics(shell=shell, config=config)
    try:
        assert magics.out_dir == "from_profile"
    finally:
        shell.configurables.remove(magics)


@pytest.mark.parametrize("name", LINE_MAGICS)
def test_every_magic_has_help_with_an_example(ip, name: str) -> None:
    doc = ip.find_line_magic(name).__doc__
    assert f"%{name}" in doc  # the usage line
    assert "Example::" in doc
    example = doc.split("Example::", 1)[1]
    assert f"%{name}" in example or f"%%{name}" in example


def test_help_shows_through_the_question_mark(ip, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_cell("%enn_export?")
    page = capsys.readouterr().out
    assert "batch_range" in page and "%%enn_export model --out exports --as report" in page
