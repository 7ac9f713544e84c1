"""Backend options: declared once per backend, checked before any work, read by export, CLI, magics and wizard."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from IPython.core.error import UsageError

from enn_nb.engine.backends.base import Backend
from enn_nb.engine.options import Option, check_backend_options, declared, defaults
from enn_nb.engine.registry import BUILTINS, get_backend
from enn_nb.errors import OptionError


@pytest.mark.parametrize("name", list(BUILTINS))
def test_every_builtin_declares_its_options_once(name):
    backend = get_backend(name)
    assert backend.options is not None, f"{name} declares no options"
    assert backend.default_options == defaults(backend.options)  # the defaults come from the declaration
    names = [o.name for o in declared(backend)]
    assert "timeout_s" in names and len(names) == len(set(names))
    assert all(o.help for o in declared(backend))


def _net() -> torch.nn.Module:
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    net.in_dim = 4
    return net


@pytest.mark.parametrize(
    ("backends", "options", "expected"),
    [
        ("onnx", {"onnx": {"opsett": 18}}, "The `onnx` backend has no option `opsett`. Did you mean `opset`?"),
        ("onnx", {"onnx": {"opset": 99}}, "`onnx` option `opset` is 99 (out of range); it takes an integer from 18 to 23"),
        ("onnx", {"onnx": {"opset": "18"}}, "`onnx` option `opset` is '18' (a str); it takes an integer"),
        ("pt2", {"onnx": {"opset": 99}}, "`onnx` option `opset` is 99"),  # the shared ONNX's options, always checked
        ("pt2", {"ort": {"optimization_level": "basic"}}, "`options` has an entry for `ort`, which is not being exported."),
        ("pt2", {"pt2": {"timeout": 5}}, "The `pt2` backend has no option `timeout`. Did you mean `timeout_s`?"),
        ("pt2", {"pt2": {"timeout_s": 0}}, "`pt2` option `timeout_s` is 0 (out of range); it takes a number >= 1"),
        ("ort", {"ort": {"optimization_level": "fast"}}, "`ort` option `optimization_level` is 'fast' (not an allowed value)"),
    ],
)
def test_bad_options_are_refused_before_any_work(tmp_path, backends, options, expected):
    from enn_nb.engine import export

    out = tmp_path / "never-created"
    with pytest.raises(OptionError) as info:
        export(_net(), backends, out_dir=out, options=options)
    assert str(info.value).startswith(expected), str(info.value)
    assert isinstance(info.value, ValueError)
    assert not out.exists()  # refused before the output folder, the model or a capture


def test_an_option_key_naming_no_backend_suggests_the_closest(tmp_path):
    from enn_nb.engine import export
    from enn_nb.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="Unknown backend `onxx`. Did you mean `onnx`?"):
        export(_net(), ["onnx"], out_dir=tmp_path / "never", options={"onxx": {"opset": 18}})
    assert not (tmp_path / "never").exists()


def test_option_errors_carry_structured_fields():
    with pytest.raises(OptionError) as info:
        check_backend_options("onnx", get_backend("onnx"), {"opset": 99})
    assert (info.value.backend, info.value.option, info.value.value) == ("onnx", "opset", 99)
    assert "opset" in info.value.known


def test_valid_options_pass_unchanged():
    given = {"optimization_level": "basic", "intra_op_num_threads": 1, "timeout_s": 60}
    assert check_backend_options("ort", get_backend("ort"), given) == given
    assert check_backend_options("onnx", get_backend("onnx"), {"opset": None, "optimize": False}) == {
        "opset": None, "optimize": False}


class _OldPlugin(Backend):
    name: ClassVar[str] = "old"
    default_options: ClassVar[dict[str, Any]] = {"level": 1}


class _BarePlugin(Backend):
    name: ClassVar[str] = "bare"


def test_plugins_without_a_declaration():
    assert check_backend_options("old", _OldPlugin(), {"level": 3}) == {"level": 3}
    with pytest.raises(OptionError, match="no option `levl`. Did you mean `level`"):
        check_backend_options("old", _OldPlugin(), {"levl": 3})
    assert check_backend_options("bare", _BarePlugin(), {"anything": 1}) == {"anything": 1}


def test_option_describes_itself():
    option = Option("opset", int, None, "ONNX opset", min=18, max=23)
    assert option.describe() == "opset: an integer from 18 to 23, or None (default None) - ONNX opset"
    assert Option("x", str, None, "h", choices=(None, "a")).allowed() == "one of None, 'a'"
    assert option.problem(True) == "a bool"  # a bool is not an int here


def test_cli_names_the_closest_backend_without_a_traceback(tmp_path, capsys):
    from enn_nb.surfaces.cli import main

    src = tmp_path / "ckpt.safetensors"
    src.write_bytes(b"never read: the options are refused first")
    code = main(["export", str(src), "-b", "onnx", "-o", str(tmp_path / "out"), "--option", "onxx.opset=18"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("enn-nb export: error: Unknown backend `onxx`. Did you mean `onnx`?")
    assert "Traceback" not in err
    code = main(["export", str(src), "-b", "onnx", "-o", str(tmp_path / "out"), "--option", "onnx.opset=99"])
    assert code == 1 and "`onnx` option `opset` is 99" in capsys.readouterr().err


def test_cli_lists_the_declarations(capsys):
    import json

    from enn_nb.surfaces.cli import main

    assert main(["backends", "--options"]) == 0
    text = capsys.readouterr().out
    assert "onnx:\n  opset: an integer from 18 to 23, or None (default None)" in text
    assert main(["backends", "--options", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert any(line.startswith("optimization_level: one of 'disable'") for line in listing["ort"])


def test_magic_refuses_a_misspelt_option(ip):
    ip.user_ns["net"] = _net()
    with pytest.raises(UsageError) as info:
        ip.run_cell_magic("enn_export", "net --out exp", "backends: [pt2]\noptions:\n  pt2: {timeout: 5}\n")
    assert "The `pt2` backend has no option `timeout`. Did you mean `timeout_s`?" in str(info.value)

