"""Every user error of the magics is one line naming the bad value and the fix; internal errors keep their traceback."""

from __future__ import annotations

import pytest
import torch
from IPython.core.error import UsageError

from enn_nb.errors import SpecError, UnknownNameError

from tests.fixtures.magics import run_cell


def usage_error(ip, kind: str, name: str, line: str, cell: str | None = None) -> str:
    with pytest.raises(UsageError) as info:
        if kind == "line":
            ip.run_line_magic(name, line)
        else:
            ip.run_cell_magic(name, line, cell)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_unknown_variable_names_close_ones(ip) -> None:
    ip.user_ns["trained_net"] = torch.nn.Linear(2, 2)
    ip.user_ns["trained_nets"] = [1]
    message = usage_error(ip, "line", "enn_save", "traned_net out.pt")
    assert "`traned_net`" in message and "`trained_net`" in message and "Did you mean" in message
    message = usage_error(ip, "cell", "enn_export", "traned_net", "backends: [onnx]")
    assert "`traned_net`" in message and "`trained_net`" in message and "checkpoint path" in message


def test_unknown_variable_without_close_names_lists_defined_ones(ip) -> None:
    ip.user_ns["alpha_model"] = torch.nn.Linear(2, 2)
    message = usage_error(ip, "line", "enn_save", "zzz out.pt")
    assert "No variable `zzz`" in message and "alpha_model" in message


def test_not_a_module(ip) -> None:
    ip.user_ns["settings"] = {"a": 1}
    ip.user_ns["net"] = torch.nn.Linear(2, 2)
    message = usage_error(ip, "line", "enn_save", "settings out.pt")
    assert "`settings` is a dict, not a torch `nn.Module`" in message and "`net`" in message


def test_bad_paths(ip, tmp_path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x")
    message = usage_error(ip, "line", "enn_load", "modle.safetensors")
    assert "`modle.safetensors` does not exist" in message and "model.safetensors" in message
    message = usage_error(ip, "line", "enn_inspect", "no/such/dir/model.pt")
    assert "`no/such/dir/model.pt` does not exist" in message and "`no/such/dir` does not exist" in message
    ip.user_ns["net"] = torch.nn.Linear(2, 2)
    message = usage_error(ip, "line", "enn_save", "net model.bin")
    assert "`.bin` is not a checkpoint suffix" in message and "--format" in message
    (tmp_path / "blocker").write_text("a file where a directory should be")
    message = usage_error(ip, "line", "enn_save", "net blocker/model.pt")
    assert "blocker" in message


def test_unknown_format_choice(ip) -> None:
    ip.user_ns["net"] = torch.nn.Linear(2, 2)
    message = usage_error(ip, "line", "enn_save", "net out --format zip")
    assert "zip" in message and "safetensors" in message and "dcp" in message


def test_malformed_yaml_names_the_line(ip) -> None:
    ip.user_ns["net"] = torch.nn.Linear(2, 2)
    body = "backends: [onnx]\ndynamic_batch: true\nbatch_range: [1, 8\nverify: true\n"
    message = usage_error(ip, "cell", "enn_export", "net", body)
    assert "not valid YAML at line 4" in message and "`verify: true`" in message


def test_unknown_body_key_names_the_known_ones(ip) -> None:
    ip.user_ns["net"] = torch.nn.Linear(2, 2)
    message = usage_error(ip, "cell", "enn_export", "net", "backends: [onnx]\ndynamic_batches: true\n")
    assert "Unknown key `dynamic_batches`" in message and "Did you mean `dynamic_batch`?" in message
    for key in ("backends", "out_dir", "batch_range", "example_inputs", "tolerances", "options"):
        assert key in message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("dynamic_batch: sometimes", "`dynamic_batch: 'sometimes'`"),
        ("batch_range: [64, 8, 1]", "min <= opt <= max"),
        ("tolerances: {onnx: {atol: lots}}", "`tolerances.onnx.atol: 'lots'`"),
        ("example_inputs: [2, -1]", "`example_inputs: [2, -1]`"),
        ("- onnx\n- pt2", "must be `key: value` lines"),
        ("options: {onnx: 20}", "`options: {'onnx': 20}`"),
    ],
)
def test_body_values_of_the_wrong_kind(ip, body: str, expected: str) -> None:
    ip.user_ns["net"] = torch.nn.Linear(2, 2)
    assert expected in usage_error(ip, "cell", "enn_export", "net", body)


def test_bad_binding_names_and_arguments(ip) -> None:
    ip.user_ns["net"] = torch.nn.Linear(2, 2)
    assert "`class` is not a valid Python variable name" in usage_error(
        ip, "cell", "enn_export", "net --as class", "backends: [onnx]"
    )
    assert "Close the quote" in usage_error(ip, "line", "enn_save", "net 'unclosed.pt")
    assert "`--meta note` is not KEY=VALUE" in usage_error(ip, "line", "enn_save", "net out.pt --meta note")
    assert "--optimizer" in usage_error(ip, "line", "enn_save", "net out.pt --optimizer opt")
    ip.user_ns["opt"] = 3
    assert "`opt` is a int, not a torch optimizer" in usage_error(ip, "line", "enn_save", "net out.pt --optimizer opt")


def test_errors_keep_their_cause_and_type(ip) -> None:
    ip.user_ns["net"] = torch.nn.Linear(2, 2)
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("enn_save", "nett out.pt")
    assert isinstance(info.value.__cause__, UnknownNameError)
    with pytest.raises(UsageError) as info:
        ip.run_cell_magic("enn_export", "net", "batch_range: [0, 1, 2]")
    assert isinstance(info.value.__cause__, SpecError)


def test_a_user_error_in_a_cell_prints_one_line_without_traceback(ip, capsys) -> None:
    result = ip.run_cell("%enn_save nothing_here out.pt", store_history=True)
    assert isinstance(result.error_in_exec, UsageError)
    err = capsys.readouterr()
    shown = (err.out + err.err).strip()
    assert shown.startswith("UsageError: No variable `nothing_here`")
    assert "Traceback" not in shown and len(shown.splitlines()) == 1


def test_internal_errors_keep_their_traceback(ip) -> None:
    class Exploding(torch.nn.Module):
        def state_dict(self, *args, **kwargs):  # a bug in user/library code, not a usage error
            raise RuntimeError("boom inside state_dict")

    ip.user_ns["exploding"] = Exploding()
    with pytest.raises(RuntimeError, match="boom inside state_dict"):
        run_cell(ip, "%enn_save exploding exploding.safetensors")
