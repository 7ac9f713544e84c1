"""The export wizard, headless: real widgets (a dummy comm, no kernel), clicked like a user would."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("ipywidgets")
torch = pytest.importorskip("torch")

from enn_nb.engine.backends.pt2 import Pt2Backend  # noqa: E402
from enn_nb.engine.registry import backends as registry_backends  # noqa: E402
from enn_nb.engine.registry import register_backend, unregister_backend  # noqa: E402
from enn_nb.surfaces.notebook.wizard import Wizard, wizard  # noqa: E402
from enn_nb.surfaces.notebook.wizard_state import STEPS  # noqa: E402


def _net(n_in: int = 2, n_out: int = 2) -> torch.nn.Module:
    """A tiny plain module; ``in_dim`` lets the engine draw example inputs for it."""
    net = torch.nn.Linear(n_in, n_out)
    net.in_dim = n_in
    return net


def _to_targets(w: Wizard) -> None:
    w.view.next_button.click()
    assert w.step == "targets", w.state.messages


def _message(w: Wizard, step: str) -> str:
    return w.view.step_messages[step].value


# -- step 1: model ------------------------------------------------------------------------------
def test_the_model_step_offers_the_namespace_modules_and_shows_the_spec(trained_model):
    other = _net(3, 2)
    w = wizard({"net": trained_model, "other": other, "_hidden": other, "x": 3})
    assert w.view.variable.options == ("net", "other")  # modules only, private names left out
    assert w.state.variable == "net"  # the first one is preselected
    info = w.view.model_info.value
    params = sum(p.numel() for p in trained_model.parameters())
    assert "<td>38</td>" in info and "[4, 2]" in info  # in_dim and out_shape of the reference model
    assert f"{params:,}" in info and "ReferenceModel" in info
    for task in trained_model.task_specs():
        assert task["name"] in info

    w.view.variable.value = "other"
    assert w.state.variable == "other"
    assert "Linear" in w.view.model_info.value and "<td>8</td>" in w.view.model_info.value  # 3*2+2 params


def test_next_is_blocked_inline_when_no_model_exists():
    w = wizard({"x": 1})
    w.view.next_button.click()  # no exception: the step explains
    assert w.step == "model"
    assert "No model chosen" in _message(w, "model")
    assert "Refresh" in _message(w, "model")

    # a model appears later: Refresh finds it, the message goes once Next succeeds
    w.state.namespace["late"] = _net()
    w.view.refresh_button.click()
    assert w.state.variable == "late"
    w.view.next_button.click()
    assert w.step == "targets"
    assert _message(w, "model") == ""


def test_a_checkpoint_path_shows_its_manifest_and_a_missing_one_blocks(trained_model, tmp_path):
    from enn_nb.checkpoint import save

    path = tmp_path / "ref.safetensors"
    save(trained_model, path)
    w = wizard({})
    w.view.source.value = "checkpoint"
    assert w.state.source == "checkpoint"
    assert w.view.variable_row.layout.display == "none"

    w.view.checkpoint.value = str(tmp_path / "nope.pt")
    w.view.next_button.click()
    assert w.step == "model"
    assert "does not exist" in _message(w, "model") and "nope.pt" in _message(w, "model")

    w.view.checkpoint.value = str(path)
    assert "enn-wizard-manifest" in w.view.model_info.value
    assert "ReferenceModel" in w.view.model_info.value or "enn_nb.reference" in w.view.model_info.value
    w.view.next_button.click()
    assert w.step == "targets"
    assert w.state.selected_model() == path


# -- step 2: targets and options -------------------------------------------------------------------
def test_every_backend_gets_a_checkbox_unavailable_ones_disabled_with_reason_and_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "executorch", None)  # simulate executorch not installed
    w = wizard({"net": _net()})
    rows = {row.name: row for row in registry_backends()}
    assert list(w.view.backend_boxes) == list(rows)
    for name, box in w.view.backend_boxes.items():
        assert box.disabled is (not rows[name].available), name
    assert w.view.backend_boxes["executorch"].disabled and not w.view.backend_boxes["onnx"].disabled
    notes = _backend_note(w, "executorch")
    assert "unavailable: `executorch` is not installed" in notes
    assert "%pip install &#x27;enn-nb[executorch]&#x27;" in notes
    assert "<code>.onnx</code>" in _backend_note(w, "onnx")


def _backend_note(w: Wizard, name: str) -> str:
    page = w.view.pages[STEPS.index("targets")]
    for child in page.children:
        kids = getattr(child, "children", ())
        if len(kids) == 2 and getattr(kids[0], "description", None) == name:
            return kids[1].value
    raise AssertionError(f"no row for {name}")


def test_unavailable_or_unknown_default_backends_are_not_preselected(monkeypatch):
    monkeypatch.setitem(sys.modules, "executorch", None)
    w = wizard({"net": _net()}, backends=["onnx", "executorch", "onxx"])
    assert w.state.backends == ["onnx"]
    assert w.view.backend_boxes["onnx"].value and not w.view.backend_boxes["executorch"].value
    text = w.state.messages["targets"]
    assert "`executorch` is unavailable here" in text and "`onxx` is not a registered backend" in text


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"backends": []}, "No backend chosen"),
        ({"batch_min": 9}, "`batch range` is (9, 8, 64)"),
        ({"batch_opt": 100}, "`batch range` is (1, 100, 64)"),
        ({"batch_min": 0}, "`batch range` is (0, 8, 64)"),
        ({"atol": "abc"}, "`tolerance.atol: 'abc'` must be a finite number >= 0"),
        ({"rtol": "-1"}, "`tolerance.rtol: '-1'` must be a finite number >= 0"),
        ({"opset": 3}, "ONNX opset 3 is not allowed: the opset takes an integer from 18 to 23"),
        ({"out_dir": ""}, "No output folder"),
    ],
)
def test_invalid_options_show_inline_and_block_next(change, expected, tmp_path):
    w = wizard({"net": _net()}, backends=["onnx"], out_dir=tmp_path / "out")
    _to_targets(w)
    for trait, value in change.items():
        if trait == "backends":
            w.view.backend_boxes["onnx"].value = False
        else:
            getattr(w.view, trait).value = value  # through the widget, as a user types it
    w.view.next_button.click()
    assert w.step == "targets"
    assert expected in w.state.messages["targets"]
    assert "enn-wizard-message" in _message(w, "targets")
    assert not (tmp_path / "out").exists()  # validating creates nothing


def test_an_unwritable_output_directory_blocks_next(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    w = wizard({"net": _net()}, backends=["onnx"])
    _to_targets(w)
    w.view.out_dir.value = str(blocker / "exports")
    w.view.next_button.click()
    assert w.step == "targets"
    assert f"`{blocker}` is a file" in w.state.messages["targets"]
    w.view.out_dir.value = str(blocker)
    w.view.next_button.click()
    assert "is a file, not a folder" in w.state.messages["targets"]
    w.view.out_dir.value = str(tmp_path / "ok" / "deeper")
    assert w.state.messages["targets"] == ""  # re-checked as the user types: the message goes at once
    w.view.next_button.click()
    assert w.step == "run" and w.state.messages["targets"] == ""


def test_back_and_next_keep_every_choice(tmp_path):
    w = wizard({"a": _net(), "b": _net(3, 3)})
    w.view.variable.value = "b"
    _to_targets(w)
    v = w.view
    v.backend_boxes["ort"].value = False  # preselected with onnx and pt2 (the fast ones)
    v.backend_boxes["pt2"].value = True
    v.backend_boxes["onnx"].value = True
    v.dynamic_batch.value = False
    v.batch_min.value, v.batch_opt.value, v.batch_max.value = 2, 4, 16
    v.opset.value = 18
    v.atol.value, v.rtol.value = "1e-3", "2e-3"
    v.out_dir.value = str(tmp_path / "exp")
    v.isolate.value = False
    v.cache.value = False
    chosen = {name: getattr(w.state, name) for name in w.state.user_choices()}
    assert chosen["backends"] == ["onnx", "pt2"]  # registry order

    v.back_button.click()
    assert w.step == "model" and v.variable.value == "b"
    v.next_button.click()
    v.next_button.click()
    assert w.step == "run"
    v.back_button.click()
    assert w.step == "targets"
    assert {name: getattr(w.state, name) for name in w.state.user_choices()} == chosen
    assert (v.batch_min.value, v.batch_opt.value, v.batch_max.value) == (2, 4, 16)
    assert v.backend_boxes["pt2"].value and v.backend_boxes["onnx"].value and not v.backend_boxes["ort"].value
    assert v.atol.value == "1e-3" and v.opset.value == 18 and not v.isolate.value

    chosen = w.state.export_settings()
    assert chosen.batch_range == (2, 4, 16) and chosen.dynamic_batch is False
    assert chosen.tolerances.to_dict() == {"*": {"atol": 1e-3, "rtol": 2e-3}}  # as typed, for every backend
    assert chosen.options["onnx"]["opset"] == 18 and chosen.isolate is False and chosen.cache is False


def test_options_reach_the_backends_that_understand_them():
    w = wizard({"net": _net()}, backends="ort,pt2", opset=19)
    assert w.state.backends == ["ort", "pt2"]
    # ort is built from the shared ONNX file, so the opset goes to the `onnx` entry that shapes it
    assert w.state.export_options() == {"onnx": {"opset": 19}}
    w.state.backends = ["pt2"]
    assert w.state.export_options() == {}
    w.state.fp16 = True
    w.state.backends = ["pt2", "tensorrt", "coreml"]
    assert w.state.export_options() == {
        "onnx": {"opset": 19},
        "tensorrt": {"fp16": True},
        "coreml": {"compute_precision": "float16"},
    }
    assert "fp16 where supported (coreml, tensorrt)" in w.view.fp16.description


def test_unknown_wizard_option_is_a_clear_type_error():
    with pytest.raises(TypeError, match=r"unknown option `bakends`.*Known options: .*backends"):
        wizard({}, bakends=["onnx"])


def test_defaults_accept_the_module_itself_and_a_batch_range():
    net = _net()
    w = wizard({"mine": net}, model=net, batch_range=(2, 4, 8), tolerances=(1e-3, None))
    assert w.state.variable == "mine"
    assert w.state.batch_range() == (2, 4, 8)
    assert w.state.tolerances() == (1e-3, None)


# -- steps 3 and 4: run and results ------------------------------------------------------------------
def test_run_refuses_to_start_with_invalid_settings(tmp_path):
    w = wizard({"net": _net()}, backends=["onnx"], out_dir=tmp_path)
    w.state.step = STEPS.index("run")  # e.g. a user who went back and broke a setting
    w.state.batch_min = 100
    w.view.run_button.click()
    assert not w.state.running and w.controller._thread is None
    assert "Fix step 2 first" in _message(w, "run") and "`batch range` is" in _message(w, "run")


def test_a_model_without_in_dim_needs_example_inputs():
    plain = torch.nn.Linear(2, 2)
    w = wizard({"plain": plain})
    w.view.next_button.click()
    assert w.step == "model"
    assert "`plain` (Linear) declares no input signature and no `in_dim`" in _message(w, "model")
    assert "Type its inputs below" in _message(w, "model") and "example_inputs=(...)" in _message(w, "model")
    w = wizard({"plain": plain}, example_inputs=torch.randn(2, 2))
    w.view.next_button.click()
    assert w.step == "targets"


def test_a_failing_export_is_shown_on_the_run_step_not_raised(tmp_path):
    # Example inputs of the wrong width: the engine raises before any backend runs.
    w = wizard({"net": torch.nn.Linear(2, 2)}, example_inputs=torch.randn(2, 5), backends=["pt2"],
               out_dir=tmp_path / "out", isolate=False)  # fmt: skip
    _to_targets(w)
    w.view.next_button.click()
    w.view.run_button.click()
    assert w.wait(120)
    assert w.step == "run" and not w.state.running and w.state.report is None
    # the model's own error, with the signature it was given and the one it received
    assert w.state.run_error.startswith(
        "InputMismatchError: `Linear` rejected its example inputs: mat1 and mat2 shapes cannot be multiplied (2x5 and 2x2)"
    )
    assert "Expected signature (features: float32[batch, 5]), received (features: float32[2, 5])" in w.state.run_error
    assert "mat1 and mat2 shapes cannot be multiplied" in w.view.run_error.value
    assert "Traceback" not in w.view.run_error.value  # the traceback of an unexpected error is in the log
    assert "export failed: InputMismatchError" in "\n".join(w.state.log)
    assert not w.view.run_button.disabled and w.view.cancel_button.disabled  # can fix and retry


@pytest.fixture(scope="module")
def exported(trained_model, tmp_path_factory):
    """A wizard clicked through a real export of the reference model to ONNX and PT2."""
    out = tmp_path_factory.mktemp("wizard") / "exports"
    w = wizard({"model": trained_model}, backends=["onnx", "pt2"], out_dir=out, cache=False)
    _to_targets(w)
    w.view.next_button.click()
    assert w.step == "run"
    w.view.run_button.click()
    assert w.state.running and w.view.cancel_button.disabled is False and w.view.back_button.disabled
    assert w.wait(600), "the export did not finish in 10 minutes"
    return w, out


@pytest.mark.slow
def test_run_exports_for_real_and_shows_results(exported):
    w, out = exported

    # files on disk
    for name in ("model.onnx", "model.onnx.enn.json", "model.pt2", "model.pt2.enn.json", "model.vectors.safetensors"):
        assert (out / name).is_file(), name
    # state
    assert w.step == "results"
    report = w.report
    assert [r.backend for r in report.results] == ["onnx", "pt2"]
    assert [r.status for r in report.results] == ["ok", "ok"], [r.summary() for r in report.results]
    assert all(0 <= r.max_abs_err <= 1e-4 for r in report.results)
    assert w.state.overall == 2 and w.view.overall.value == 2
    for name in ("onnx", "pt2"):
        bar, label = w.view._bars[name]
        assert bar.value == 1.0 and bar.bar_style == "success" and label.value == "ok"
    log = "\n".join(w.state.log)
    assert "shared: capture -> ok" in log and "onnx: verify -> running" in log
    # latency against eager, measured on the artifacts' runtimes
    assert set(w.state.latency) == {"eager", "eager_safe", "onnx", "pt2"}
    assert all(ms > 0 for ms in w.state.latency.values())
    # results step: table, plots, links
    table = w.view.results_table.value
    assert table.count("class='enn-wizard-row'") == 2
    onnx_size = sum((out / f).stat().st_size for f in ("model.onnx",) if (out / f).exists())
    assert onnx_size > 0
    row = next(r for r in _rows(w) if r["backend"] == "onnx")
    assert row["size"] >= onnx_size and f"{row['max_abs_err']:.2e}" in table
    assert f"{w.state.latency['onnx']:.3g} ms" in table
    images = w.view.plots.children
    assert len(images) == 3 and all(img.value[:4] == b"\x89PNG" for img in images)
    links = w.view.links.outputs[0]["data"]["text/html"]
    assert str(out / "model.onnx") in links and str(out / "model.onnx.enn.json") in links
    assert w.view.next_button.disabled  # last step


@pytest.mark.slow
@pytest.mark.notebook
def test_save_as_report_writes_the_papermill_report(exported):
    pytest.importorskip("papermill")
    w, out = exported
    button = w.view.save_report_button
    assert button.layout.display != "none"
    button.click()
    assert button.disabled  # while the report runs in the background
    assert w.wait(600)
    report_nb = out / "report" / "export_report.ipynb"
    assert w.state.report_path == str(report_nb.resolve())  # the runner resolves its folder
    assert report_nb.is_file() and "report written" in w.view.save_report_status.value
    assert not button.disabled
    import nbformat

    nb = nbformat.read(report_nb, as_version=4)
    params = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    values = dict(line.split(" = ", 1) for line in params.source.splitlines() if " = " in line)
    saved_model = out / "report" / "model.safetensors"  # named after the variable, beside the report
    assert values["checkpoint"] == f'"{saved_model.resolve()}"'
    assert values["backends"].replace("'", '"') == '["onnx", "pt2"]'
    assert values["batch_sizes"] == "[1, 8, 64]"
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert saved_model.is_file()  # the variable was saved for the report's kernel...
    status = w.view.save_report_status.value
    assert "`model` was saved as" in status and "fresh kernel" in status  # ...and the wizard says where and why
    assert (out / "report" / "export_report.html").is_file() and "export_report.html" in status
    assert not (out / "wizard_model.safetensors").exists()  # no side file among the artifacts


def _rows(w: Wizard) -> list[dict]:
    from enn_nb.surfaces.notebook.wizard_state import result_rows

    return result_rows(w.report, w.state.latency)


class GatedPt2Backend(Pt2Backend):
    """A real PT2 backend whose conversion waits until the test releases it (to press Cancel mid-run)."""

    name = "wizard_gated"
    suffix = ".gated.pt2"
    description = "PT2, waits for the test"
    entered = threading.Event()
    release = threading.Event()

    def convert(self, job, out_path, options):  # type: ignore[no-untyped-def]
        type(self).entered.set()
        if not type(self).release.wait(120):
            raise TimeoutError("the test never released the gated backend")
        return super().convert(job, out_path, options)


@pytest.fixture
def gated_backend():
    GatedPt2Backend.entered.clear()
    GatedPt2Backend.release.clear()
    register_backend(GatedPt2Backend, replace=True)
    yield GatedPt2Backend
    GatedPt2Backend.release.set()
    unregister_backend("wizard_gated")


@pytest.mark.slow
def test_cancel_stops_after_the_current_backend(trained_model, gated_backend, tmp_path):
    out = tmp_path / "exports"
    # isolate off: the gate is a threading.Event, which a child process would not share
    w = wizard({"model": trained_model}, backends=["wizard_gated", "pt2", "onnx"], out_dir=out,
               isolate=False, cache=False)  # fmt: skip
    _to_targets(w)
    w.view.next_button.click()
    w.view.run_button.click()
    assert gated_backend.entered.wait(300), "the gated backend never started"
    w.view.cancel_button.click()  # while `wizard_gated` converts
    assert w.state.cancel_requested
    w.controller.pump()
    assert "cancel requested" in "\n".join(w.state.log)
    assert "(cancel requested)" in w.view.overall_label.value
    gated_backend.release.set()
    assert w.wait(300)

    statuses = {r.backend: r.status for r in w.report.results}
    assert statuses == {"wizard_gated": "ok", "pt2": "cancelled", "onnx": "cancelled"}
    assert w.state.skipped == ["pt2", "onnx"]
    assert (out / "model.gated.pt2").is_file() and (out / "model.gated.pt2.enn.json").is_file()
    assert not (out / "model.pt2").exists() and not (out / "model.onnx").exists()
    assert "Skipped after Cancel: pt2, onnx" in w.view.skipped_note.value
    assert w.view._bars["pt2"][0].value == 0.0 and w.view._bars["pt2"][1].value == "cancelled"
    assert w.state.latency == {}  # nothing timed after a cancel
    assert w.view.results_table.value.count("cancelled") >= 2


def test_save_as_report_is_hidden_when_reports_cannot_run(monkeypatch):
    monkeypatch.setitem(sys.modules, "papermill", None)
    w = wizard({"net": _net()})
    assert w.view.save_report_button.layout.display == "none"


def test_save_as_report_is_shown_when_reports_can_run():
    pytest.importorskip("papermill")
    w = wizard({"net": _net()})
    assert w.view.save_report_button.layout.display != "none"


def test_the_wizard_displays_as_a_widget():
    w = wizard({"net": _net()})
    bundle = w._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == w.view.widget.model_id
    assert "step='model'" in repr(w)


def test_without_ipywidgets_the_error_names_the_extra(monkeypatch):
    from enn_nb.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    with pytest.raises(MissingDependencyError, match=r"%pip install 'enn-nb\[notebook\]'"):
        wizard({"net": _net()})


def test_importing_the_wizard_imports_nothing_heavy():
    import subprocess

    code = (
        "import sys, enn_nb.surfaces.notebook.wizard, enn_nb.surfaces.plots, enn_nb.surfaces.notebook.latency; "
        "print(sorted(m for m in ('ipywidgets', 'torch', 'matplotlib', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
