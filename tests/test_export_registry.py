"""The backend registry: built-ins, plugins (register_backend and entry points), listing without heavy imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import enn_nb
from enn_nb.engine.registry import BUILTINS, get_backend, register_backend, unregister_backend

from tests.fixtures.backends import EchoBackend
from tests.fixtures.models import TinyMLP

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "onnx", "onnxruntime", "onnxscript", "tensorflow", "executorch", "coremltools", "litert_torch",
         "ai_edge_litert", "tensorrt", "polygraphy", "onnx2tf")


def test_the_nine_builtins_are_registered_with_their_classes():
    assert list(BUILTINS) == ["onnx", "ort", "pt2", "aoti", "executorch", "litert", "coreml", "tensorflow", "tensorrt"]
    for name, ref in BUILTINS.items():
        module, _, cls = ref.partition(":")
        assert module == f"enn_nb.engine.backends.{name}"
        assert cls == {"onnx": "OnnxBackend", "ort": "OrtBackend", "pt2": "Pt2Backend", "aoti": "AotiBackend"}.get(
            name, cls
        )


def test_backends_lists_name_suffix_availability_and_install_line():
    rows = {r.name: r for r in enn_nb.backends()}
    assert set(BUILTINS) <= set(rows)
    for name, suffix in (("onnx", ".onnx"), ("ort", ".ort"), ("pt2", ".pt2"), ("aoti", ".aoti.pt2")):
        row = rows[name]
        assert row.suffix == suffix and row.available and row.reason is None and row.runtime_available
        assert row.missing == ()
    assert rows["onnx"].install == "%pip install 'enn-nb[onnx]'"
    table = enn_nb.backends()
    assert "<table" in table._repr_html_() and "aoti" in str(table)
    assert json.loads(json.dumps(table.to_json()))[0]["name"] == "onnx"


def test_listing_backends_imports_no_heavy_package():
    code = textwrap.dedent(
        f"""
        import sys, enn_nb
        rows = enn_nb.backends()
        assert len(rows) >= 9, rows
        print([m for m in {HEAVY!r} if m in sys.modules])
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_public_functions_keep_their_signatures_whatever_was_imported_first():
    import inspect
    import types

    import enn_nb.engine
    import enn_nb.engine.backends as backends_pkg
    import enn_nb.engine.backends.onnx  # noqa: F401
    import enn_nb.engine.registry  # noqa: F401

    assert isinstance(backends_pkg, types.ModuleType)
    for name in ("export", "backends", "verify"):
        assert isinstance(getattr(enn_nb, name), types.FunctionType), name
    assert "out_dir" in inspect.signature(enn_nb.export).parameters
    assert isinstance(enn_nb.backends(), list)


def test_all_dir_and_attributes_agree():
    import importlib

    fresh = importlib.import_module("enn_nb")
    assert set(fresh.__all__) <= set(dir(fresh))
    for name in fresh.__all__:
        assert getattr(fresh, name) is not None, name
    public = {n for n in dir(fresh) if not n.startswith("_") and not isinstance(getattr(fresh, n), type(importlib))}
    assert public <= set(fresh.__all__) | {"annotations", "importlib", "TYPE_CHECKING", "Any"}, public - set(fresh.__all__)


def test_register_backend_and_export_through_it(tmp_path):
    register_backend(EchoBackend, replace=True)
    try:
        assert isinstance(get_backend("echo"), EchoBackend)
        assert any(r.name == "echo" for r in enn_nb.backends())
        report = enn_nb.export(TinyMLP(), ["echo"], out_dir=tmp_path, example_inputs=torch.randn(2, 6), isolate=False)
        assert report["echo"].status == "ok" and (tmp_path / "model.echo.pt2.enn.json").is_file()
    finally:
        unregister_backend("echo")
    with pytest.raises(TypeError, match="subclass"):
        register_backend("bad", object)  # type: ignore[arg-type]


@pytest.mark.multiprocess
def test_entry_point_plugins_are_found(tmp_path):
    dist = tmp_path / "enn_echo_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: enn-echo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[enn_nb.backends]\nechoplug = tests.fixtures.backends:EchoBackend\n")
    code = textwrap.dedent(
        """
        import enn_nb
        from enn_nb.engine.registry import get_backend
        rows = {r.name: r for r in enn_nb.backends()}
        print(rows["echoplug"].suffix, type(get_backend("echoplug")).__name__)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "tests")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == ".echo.pt2 EchoBackend"


def test_a_missing_package_is_data_on_the_row_and_check_converts_raises_with_it(monkeypatch):
    from enn_nb.engine.registry import check_converts, get_backend, resolve_request
    from enn_nb.errors import MissingDependencyError, UnknownNameError

    monkeypatch.setitem(sys.modules, "coremltools", None)
    row = next(r for r in enn_nb.backends() if r.name == "coreml")
    assert not row.available and row.missing == ("coremltools",) and row.extra == "coreml"
    assert row.install == "%pip install 'enn-nb[coreml]'"
    check_converts("pt2", get_backend("pt2"))
    with pytest.raises(MissingDependencyError) as info:
        check_converts("coreml", get_backend("coreml"))
    assert (info.value.package, info.value.extra) == ("coremltools", "coreml")
    assert info.value.install_line in str(info.value) and "`coremltools` is not installed" in str(info.value)
    names, named, skipped = resolve_request("available")
    assert "coreml" not in names and "pt2" in names and not named and "coremltools" in skipped["coreml"]
    names, named, skipped = resolve_request("all")
    assert "coreml" in names and not named and not skipped
    assert resolve_request(["pt2", "onnx,pt2"]) == (["pt2", "onnx"], True, {})
    with pytest.raises(UnknownNameError, match="onnx"):
        resolve_request(["onxx"])
