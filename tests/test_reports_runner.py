"""The papermill runner through a real kernel, on small templates written by each test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.notebooks import metadata, outputs, write_notebook


pytestmark = pytest.mark.notebook

VERDICT = (
    "from IPython.display import display\n"
    "from enn_nb.surfaces.reports.verdict import Verdict\n"
    "display(Verdict(ok=value > 0, headline=f'value is {value}',\n"
    "                failures=[] if value > 0 else ['value: not positive'],\n"
    "                sidecars={'fake': sidecar} if sidecar else {}))"
)


def test_failing_cell_names_cell_and_error_and_keeps_the_partial_notebook(tmp_path):
    import enn_nb
    from enn_nb.errors import ReportCellError

    template = write_notebook(
        tmp_path / "t.ipynb",
        "divisor = 1  # a number",
        "before = 'ran'",
        "result = 10 / divisor",
        "after = 'never'",
    )
    with pytest.raises(ReportCellError) as err:
        enn_nb.report(template, tmp_path / "out", divisor=0, html=True, progress=False)
    exc = err.value
    assert exc.cell_index == 2  # index in the template (papermill's injected cell not counted)
    assert exc.ename == "ZeroDivisionError" and "division by zero" in exc.evalue
    message = str(exc)
    assert "cell 2 of t.ipynb" in message and "`result = 10 / divisor`" in message
    assert "ZeroDivisionError: division by zero" in message
    kept = Path(exc.output_path)
    assert kept == (tmp_path / "out" / "t.ipynb").resolve() and kept.is_file()
    nb = json.loads(kept.read_text())
    sources = ["".join(c["source"]) for c in nb["cells"]]
    ran = nb["cells"][sources.index("before = 'ran'")]
    assert ran["execution_count"] is not None
    failed = nb["cells"][sources.index("result = 10 / divisor")]
    assert [o["ename"] for o in failed["outputs"] if o["output_type"] == "error"] == ["ZeroDivisionError"]
    assert nb["cells"][sources.index("after = 'never'")]["execution_count"] is None
    assert "divisor = 0" in "".join(sources)  # the injected parameters are kept for inspection
    assert (tmp_path / "out" / "t.html").is_file()  # the partial report is rendered too


def test_verdict_is_read_back_and_attached_with_the_sidecars(tmp_path):
    import enn_nb

    sidecar = tmp_path / "x.onnx.enn.json"
    sidecar.write_text(json.dumps({"schema": "enn_nb.export/1", "backend": "fake", "status": "ok"}))
    template = write_notebook(tmp_path / "v.ipynb", "value = 1  # a number\nsidecar = ''  # a path", VERDICT,
                              metadata={"path_parameters": ["sidecar"]})
    result = enn_nb.report(template, tmp_path / "out", value=3, sidecar=str(sidecar), progress=False)
    assert result.ok and result.status == "pass" and result.failures == []
    assert result.verdict.headline == "value is 3"
    meta = metadata(result.notebook)["enn_nb"]
    assert meta["verdict"]["ok"] is True and meta["parameters"] == {"value": 3, "sidecar": str(sidecar.resolve())}
    assert meta["sidecars"]["fake"]["content"]["schema"] == "enn_nb.export/1"
    assert meta["sidecars"]["fake"]["path"] == "../x.onnx.enn.json"  # relative to the notebook's folder

    bad = enn_nb.report(template, tmp_path / "out", name="bad", value=-1, progress=False)
    assert not bad.ok and bad.status == "fail" and bad.failures == ["value: not positive"]
    assert bad.notebook.name == "bad.ipynb"


def test_relative_paths_are_the_callers_and_the_kernel_runs_in_the_report_folder(tmp_path, monkeypatch):
    import enn_nb

    (tmp_path / "data.txt").write_text("hello")
    template = write_notebook(
        tmp_path / "p.ipynb",
        "path = ''  # a file",
        "import os\nprint(open(path).read(), os.getcwd())",
        metadata={"path_parameters": ["path"]},
    )
    monkeypatch.chdir(tmp_path)
    result = enn_nb.report(template, "reports", path="data.txt", progress=False)
    assert result.parameters["path"] == str(tmp_path / "data.txt")
    text = "".join(o.get("text", "") for _, o in outputs(result.notebook))
    assert text.split() == ["hello", str(tmp_path / "reports")]


def test_cli_gate_exit_codes_and_reasons(tmp_path, capsys):
    from enn_nb.surfaces.cli import main

    template = write_notebook(tmp_path / "g.ipynb", "value = 1  # a number\nsidecar = ''  # a path", VERDICT)
    assert main(["report", str(template), "-p", "value=2", "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(["report", str(template), "-p", "value=-2", "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "enn-nb report: FAIL: value: not positive" in captured.err
    assert main(["report", str(template), "-p", "value=oops", "--out", str(tmp_path / "o")]) == 1
    assert "takes a value of type int" in capsys.readouterr().err


def test_html_without_input_keeps_outputs_only(tmp_path):
    import enn_nb

    template = write_notebook(tmp_path / "h.ipynb", "value = 1  # a number\nsidecar = ''  # a path",
                              VERDICT, "print('visible-output')")
    result = enn_nb.report(template, tmp_path / "out", html=True, progress=False)  # code hidden by default
    page = result.html.read_text(encoding="utf-8")
    assert "visible-output" in page and 'data-verdict="pass"' in page
    assert "from enn_nb.surfaces.reports.verdict import Verdict" not in page
    with_code = enn_nb.report(template, tmp_path / "out2", html=True, no_input=False, progress=False)
    with_code = with_code.html.read_text(encoding="utf-8")
    assert "Verdict" in with_code and "visible-output" in with_code
