"""Template parameters: YAML values from the command line, undeclared names and wrong kinds refused early."""

from __future__ import annotations

import pytest

from tests.fixtures.notebooks import TEMPLATES



@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("[onnx, pt2]", ["onnx", "pt2"]),
        ("1e-5", 1e-5),
        ("0", 0),
        ("2.5E+3", 2500.0),
        ("[1, 8, 64]", [1, 8, 64]),
        ("model.safetensors", "model.safetensors"),
        ("onnx,pt2", "onnx,pt2"),
        ("true", True),
        ("null", None),
        ("'007'", "007"),
        ("", None),
    ],
)
def test_values_are_parsed_as_yaml(text, value):
    from enn_nb.surfaces.reports.catalog import parse_value

    got = parse_value(text)
    assert got == value and type(got) is type(value)


def test_assignment_needs_key_and_equals():
    from enn_nb.errors import ReportError
    from enn_nb.surfaces.reports.catalog import parse_assignment

    assert parse_assignment("atol=1e-6") == ("atol", 1e-6)
    assert parse_assignment("title=a=b") == ("title", "a=b")
    for bad in ("atol", "=1", "my key=1"):
        with pytest.raises(ReportError, match="key=value"):
            parse_assignment(bad)
    with pytest.raises(ReportError, match="not valid YAML"):
        parse_assignment("backends=[onnx")


def test_undeclared_parameter_lists_the_declared_ones():
    from enn_nb.errors import UnknownNameError
    from enn_nb.surfaces.reports.catalog import check_parameters

    with pytest.raises(UnknownNameError) as err:
        check_parameters(TEMPLATES / "export_report.ipynb", {"atlo": 0})
    message = str(err.value)
    assert "`atlo`" in message and "Did you mean `atol`?" in message
    for name in ("checkpoint", "backends", "out_dir", "batch_sizes", "atol", "rtol", "title", "author"):
        assert f"`{name}`" in message
    assert err.value.known[:2] == ["checkpoint", "backends"]


def test_wrong_kind_for_a_numeric_parameter():
    from enn_nb.errors import ReportError
    from enn_nb.surfaces.reports.catalog import check_parameters

    path = TEMPLATES / "export_report.ipynb"
    check_parameters(path, {"atol": 0, "rtol": 1e-3, "batch_sizes": [1, 2], "backends": "onnx,pt2"})
    with pytest.raises(ReportError, match=r"`atol` .* float .* got 'abc'"):
        check_parameters(path, {"atol": "abc"})
    with pytest.raises(ReportError, match="`rtol`"):
        check_parameters(path, {"rtol": True})


def test_python_paths_are_text_and_other_objects_are_still_refused(tmp_path):
    from pathlib import Path

    from enn_nb.errors import ReportError
    from enn_nb.surfaces.reports.catalog import check_parameters, paths_as_text

    path = TEMPLATES / "checkpoint_report.ipynb"
    values = paths_as_text({"checkpoint": tmp_path / "a.pt", "other": Path("b.pt")})
    assert values == {"checkpoint": str(tmp_path / "a.pt"), "other": "b.pt"}
    assert paths_as_text({"x": [Path("c"), 1]}) == {"x": ["c", 1]}  # inside lists too
    check_parameters(path, values)
    with pytest.raises(ReportError, match="plain values only"):
        check_parameters(path, paths_as_text({"checkpoint": b"import os"}))


def test_report_refuses_an_undeclared_parameter_before_starting_a_kernel(tmp_path):
    import enn_nb
    from enn_nb.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="declares no parameter `colour`"):
        enn_nb.report("checkpoint_report", tmp_path / "out", checkpoint="x.pt", colour="red")
    assert not (tmp_path / "out").exists()  # nothing written: the error came first


def test_cli_describe_lists_parameters(capsys):
    from enn_nb.surfaces.cli import main

    assert main(["report", "export_report", "--describe"]) == 0
    out = capsys.readouterr().out
    assert "batch_sizes" in out and "[1, 8, 64]" in out and "absolute tolerance" in out


def test_cli_undeclared_parameter_exits_2_with_the_list(tmp_path, capsys):
    from enn_nb.surfaces.cli import main

    assert main(["report", "checkpoint_report", "-p", "colour=red", "--out", str(tmp_path)]) == 2  # unusable input
    err = capsys.readouterr().err
    assert "declares no parameter `colour`" in err and "`checkpoint`, `other`, `title`, `author`" in err
