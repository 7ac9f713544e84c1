"""The magics' helpers: provenance from a real shell, tqdm progress bars, tables, parsing rules."""

from __future__ import annotations

import hashlib
import io

import pytest

from enn_nb.surfaces.notebook import _magic_logic as logic
from enn_nb.model import provenance
from enn_nb.surfaces.notebook.display import TqdmProgress
from enn_nb.table import Table

from tests.fixtures.magics import get_shell, run_cell


# -- provenance -----------------------------------------------------------------------------------
def test_provenance_inside_a_cell_hashes_the_cell_and_keeps_its_count(monkeypatch) -> None:
    ip = get_shell()
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    ip.user_ns["_enn_test_collect"] = lambda: provenance.collect(ip, magic="%enn_save", line="m x.pt")
    source = "x_unused = 1\nrecord = _enn_test_collect()"
    count = ip.execution_count
    try:
        run_cell(ip, source)
        record = ip.user_ns["record"]
    finally:
        for name in ("_enn_test_collect", "x_unused", "record"):
            ip.user_ns.pop(name, None)
    assert record["execution_count"] == count
    assert record["cell_sha256"] == hashlib.sha256(source.encode()).hexdigest()
    assert record["magic"] == "%enn_save"
    assert record["notebook"] is None
    assert record["notebook_source"].startswith("unknown: the kernel was not told its notebook")
    assert record["recorded_at"].endswith("Z")  # the one timestamp format (enn_nb._fs.timestamp)


def test_provenance_outside_a_cell_hashes_the_invocation() -> None:
    ip = get_shell()
    record = provenance.collect(ip, magic="%%enn_export", line="model --out x", cell="backends: [onnx]")
    assert record["execution_count"] is None
    expected = hashlib.sha256(b"%%enn_export model --out x\nbackends: [onnx]").hexdigest()
    assert record["cell_sha256"] == expected


def test_notebook_path_from_the_kernel(monkeypatch) -> None:
    ip = get_shell()
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert provenance.notebook_path(ip) is None
    monkeypatch.setenv("JPY_SESSION_NAME", "work/analysis.ipynb")
    assert provenance.notebook_path(ip) == "work/analysis.ipynb"
    assert provenance.notebook_origin(ip) == ("work/analysis.ipynb", "JPY_SESSION_NAME")
    monkeypatch.setitem(ip.user_ns, "__session__", "lab/session.ipynb")
    assert provenance.notebook_path(ip) == "lab/session.ipynb"
    monkeypatch.setitem(ip.user_ns, "__vsc_ipynb_file__", "/home/u/vscode.ipynb")
    assert provenance.notebook_path(ip) == "/home/u/vscode.ipynb"


# -- progress and tables --------------------------------------------------------------------------
def test_progress_draws_one_bar_per_backend_and_closes_them() -> None:
    from tqdm import tqdm

    stream = io.StringIO()
    progress = TqdmProgress(stages=["convert", "verify", "done"], tqdm_factory=tqdm, file=stream, mininterval=0)
    events = [  # the export engine's sequence: shared capture, then each backend
        {"backend": None, "stage": "capture", "status": "running", "index": 0, "total": 2},
        {"backend": None, "stage": "capture", "status": "ok", "index": 0, "total": 2},
        {"backend": "onnx", "stage": "convert", "status": "running", "index": 0, "total": 2},
        {"backend": "onnx", "stage": "verify", "status": "running", "index": 0, "total": 2},
    ]
    with progress:
        for event in events:
            progress(event)
        assert progress.bars["shared"].n == 1 and progress.final == {"shared": "ok"}
        assert progress.bars["onnx"].n == 1  # convert finished, verify running
        progress({"backend": "onnx", "stage": "done", "status": "ok", "index": 0, "total": 2})
        assert progress.bars["onnx"].n == 3 and progress.final["onnx"] == "ok"
        progress({"backend": "pt2", "stage": "convert", "status": "running", "index": 1, "total": 2})
        assert progress.bars["pt2"].n == 0
        progress({"backend": "pt2", "stage": "done", "status": "failed", "index": 1, "total": 2})
    text = stream.getvalue()
    assert "shared" in text and "[1/2] onnx" in text and "[2/2] pt2" in text
    assert "verify running" in text and "done failed" in text
    assert progress.bars["pt2"].n == 3  # a final status fills the bar
    assert progress.final == {"shared": "ok", "onnx": "ok", "pt2": "failed"}
    assert len(progress.events) == 7


def test_progress_shows_cached_results_and_closes_open_bars_on_exit() -> None:
    from tqdm import tqdm

    stream = io.StringIO()
    with TqdmProgress(tqdm_factory=tqdm, file=stream, mininterval=0) as progress:
        progress({"backend": "onnx", "stage": "done", "status": "ok", "index": 0, "total": 2, "cached": True})
        for stage in ("a", "b", "b", "c"):
            progress({"backend": "x", "stage": stage, "status": "running"})
        assert progress.bars["x"].n == 2 and progress.bars["x"].total is None
    assert "done ok (cached)" in stream.getvalue()
    assert progress.bars["x"].disable  # tqdm marks a closed bar disabled


def test_final_statuses_cover_the_engine_vocabulary() -> None:
    from enn_nb.engine.vocabulary import STATUSES

    from enn_nb.surfaces.notebook.display import FINAL_STATUSES

    assert set(STATUSES) <= FINAL_STATUSES


def test_table_renders_html_escaped_and_text() -> None:
    table = Table(["name", "available", "reason"], [["onnx", True, None], ["<b>x</b>", False, "needs `y`"]], title="T")
    html = table._repr_html_()
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<caption" in html and html.count("<tr>") == 3
    text = repr(table).splitlines()
    assert text[0] == "T" and text[1].split() == ["name", "available", "reason"]
    assert text[3].split() == ["onnx", "yes"] and len(table) == 2


# -- parsing rules --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("runs/my-model.v2.safetensors", "my_model_v2"),
        ("model.pt", "model"),
        ("ckpt/2024_run.pth", "model_2024_run"),
        ("dcp/class", "class_"),
        ("weird/---.pt", "model"),
    ],
)
def test_name_from_path(path: str, name: str) -> None:
    assert logic.name_from_path(path) == name


def test_meta_values_are_read_as_yaml() -> None:
    meta = logic.parse_meta(["run=3", "lr=1e-3", "note=first try", "tags=[a, b]", "empty=", "eq=a=b"])
    assert meta == {"run": 3, "lr": 1e-3, "note": "first try", "tags": ["a", "b"], "empty": "", "eq": "a=b"}


def test_tolerances_forms_and_yaml_exponents() -> None:
    body = logic.parse_export_body("tolerances:\n  onnx: {atol: 1e-5, rtol: 1.0e-4}\n  pt2: [0, 0]\n")
    assert body["tolerances"] == {"onnx": {"atol": 1e-5, "rtol": 1e-4}, "pt2": {"atol": 0.0, "rtol": 0.0}}
    assert logic.check_tolerances({"atol": 1e-3}) == {"*": {"atol": 1e-3}}


def test_split_names() -> None:
    assert logic.split_names(["onnx,pt2", "aoti", "onnx"]) == ["onnx", "pt2", "aoti"]
    assert logic.split_names("onnx, pt2") == ["onnx", "pt2"]
    assert logic.split_names(None) == []


def test_empty_body_is_all_defaults() -> None:
    assert logic.parse_export_body("") == {}
    assert logic.parse_export_body("# only a comment\n") == {}


def test_derived_names_never_replace_a_foreign_variable() -> None:
    ns: dict = {"model": object()}
    assert logic.derive_name("ckpt/model.pt", ns, set()) == "model_loaded"
    ns["model_loaded"] = object()
    assert logic.derive_name("ckpt/model.pt", ns, {"model_loaded"}) == "model_loaded"  # its own: rebound
    assert logic.derive_name("ckpt/model.pt", ns, set()) == "model_loaded2"
    assert logic.derive_name("ckpt/fresh.safetensors", ns, set()) == "fresh"


def test_model_or_checkpoint(tmp_path) -> None:
    import torch

    net = torch.nn.Linear(2, 2)
    (tmp_path / "m.pt").write_bytes(b"")
    ns = {"net": net, "text": "x"}
    assert logic.model_or_checkpoint(ns, "net") is net
    assert logic.model_or_checkpoint(ns, str(tmp_path / "m.pt")) == tmp_path / "m.pt"
    with pytest.raises(logic.SpecError, match="`text` is a str"):
        logic.model_or_checkpoint(ns, "text")
    with pytest.raises(logic.UnknownNameError, match="Did you mean `net`"):
        logic.model_or_checkpoint(ns, "nett")


def test_export_settings_precedence_flag_then_body_then_settings(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = {
        "out_dir": "from_settings", "dynamic_batch": True, "batch_range": [1, 8, 64], "verify": True,
        "isolate": True, "cache": True, "tolerances": {"*": {"atol": 1e-3}},
    }  # fmt: skip
    body = logic.parse_export_body("out_dir: from_body\nisolate: false\ntolerances: {onnx: {rtol: 1e-2}}\n")
    chosen = logic.export_settings(body, settings, ["onnx", "pt2"], out="from_flag")
    assert chosen.out.name == "from_flag"
    assert chosen.isolate is False and chosen.cache is True and chosen.batch_range == (1, 8, 64)
    # the body's entries over the settings'; nothing filled in: the engine keeps each backend's own bound
    assert chosen.tolerances.to_dict() == {"*": {"atol": 1e-3}, "onnx": {"rtol": 1e-2}}
    assert logic.export_settings(body, settings, ["pt2"]).out.name == "from_body"
    assert logic.export_settings({}, settings, ["pt2"]).out.name == "from_settings"


def test_example_inputs_from_a_shape_or_a_variable() -> None:
    import torch

    (x,) = logic.example_inputs([3, 5], {})
    assert x.shape == (3, 5) and x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) < 1
    assert torch.equal(x, logic.example_inputs([3, 5], {})[0])  # seeded
    pair = (torch.zeros(2, 3), torch.ones(2))
    assert logic.example_inputs("xs", {"xs": pair}) == pair
    with pytest.raises(logic.SpecError, match="expected a tensor or a tuple of tensors"):
        logic.example_inputs("xs", {"xs": [1, 2]})


def test_wizard_defaults_expand_all_to_the_available_backends(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "coremltools", None)
    settings = {
        "out_dir": "w", "default_backends": ["all"], "isolate": False, "verify": True, "cache": True,
        "dynamic_batch": True, "batch_range": [1, 4, 8], "tolerances": {"atol": 1e-4, "rtol": 1e-3},
    }  # fmt: skip
    defaults = logic.wizard_defaults(settings, object(), "net")
    assert "pt2" in defaults["backends"] and "coreml" not in defaults["backends"]
    assert defaults["model"] == "net" and defaults["tolerances"] == (1e-4, 1e-3)
    assert defaults["batch_range"] == (1, 4, 8) and defaults["isolate"] is False


def test_export_body_keys_are_export_keywords(tmp_path) -> None:
    import inspect

    from enn_nb.engine.pipeline import export

    params = set(inspect.signature(export).parameters)
    # every keyword of enn_nb.export is a body key, or is listed (with the reason) as set another way
    assert set(logic.EXPORT_KEYS) | set(logic.NOT_BODY_KEYS) == params
    assert not set(logic.EXPORT_KEYS) & set(logic.NOT_BODY_KEYS)
    chosen = logic.export_settings(logic.parse_export_body("safe: false\nworkers: 2\n"), {
        "out_dir": str(tmp_path), "dynamic_batch": True, "batch_range": [1, 8, 64], "verify": True, "isolate": True,
        "cache": True,
    }, ["pt2"])  # fmt: skip
    assert chosen.safe is False and chosen.workers == 2
