"""The wizard as a first-time user meets it: fast backends preselected, slow ones marked, hints on typos."""

from __future__ import annotations

import pytest

pytest.importorskip("ipywidgets")
torch = pytest.importorskip("torch")

from enn_nb.surfaces.notebook.wizard import wizard  # noqa: E402
from enn_nb.engine.registry import backend_names, get_backend  # noqa: E402
from enn_nb.surfaces.notebook.wizard_state import FAST_BACKENDS  # noqa: E402
from enn_nb.surfaces.notebook.wizard_view import results_table_html  # noqa: E402
from tests.test_wizard import _backend_note as _note  # noqa: E402 - the same row lookup


def _net() -> torch.nn.Module:
    net = torch.nn.Linear(2, 2)
    net.in_dim = 2
    return net


def test_without_backends_the_available_fast_ones_are_preselected(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # ort cannot run here now
    w = wizard({"net": _net()})
    available = set(w.state.available_backends())
    assert "ort" not in available
    assert w.state.backends == [name for name in FAST_BACKENDS if name in available] == ["onnx", "pt2"]
    assert "targets" not in w.state.messages  # nothing to explain: only available ones were picked
    w.view.next_button.click()
    assert [name for name, box in w.view.backend_boxes.items() if box.value] == ["onnx", "pt2"]
    # an explicit choice still wins, and the empty list stays empty
    assert wizard({"net": _net()}, backends=[]).state.backends == []


def test_slow_backends_are_marked_with_a_typical_time():
    w = wizard({"net": _net()})
    slow = {name: get_backend(name).slow for name in backend_names() if get_backend(name).slow}
    assert set(slow) == {"aoti", "executorch"}
    for name, text in slow.items():
        note = _note(w, name)
        if w.view.backend_boxes[name].disabled:
            continue  # unavailable here: the row says why instead
        assert "enn-wizard-slow" in note and "a minute or more" in text and text in note, name
    assert "enn-wizard-slow" not in _note(w, "onnx")


def test_the_run_step_says_what_run_will_do_before_it_starts(tmp_path):
    w = wizard({"net": _net()}, backends=["onnx", "pt2"], out_dir=tmp_path)
    w.next()
    w.next()
    assert w.step == "run"
    label = w.view.overall_label.value
    assert label == "ready: onnx, pt2 (press Run)" and "0/0" not in label
    w.state.backends = []
    assert w.view.overall_label.value == "no backend chosen (step 2)"


def test_a_wrong_checkpoint_path_gets_a_did_you_mean(tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "model.safetensors").write_bytes(b"x")
    (tmp_path / "runs" / "notes.txt").write_text("not a checkpoint")
    monkeypatch.chdir(tmp_path)
    w = wizard({}, checkpoint="runs/modle.safetensors")
    w.view.next_button.click()
    message = w.state.messages["model"]
    assert "Checkpoint `runs/modle.safetensors` does not exist; did you mean `runs/model.safetensors`?" in message
    # a wrong folder: the nearest existing one is searched
    w.state.checkpoint = "runz/model.safetensors"
    assert w.state.check("model").startswith("Checkpoint `runz/model.safetensors` does not exist. ")
    w.state.checkpoint = "runs/nothing_like_it.bin"
    assert "did you mean" not in w.state.check("model")


def test_the_latency_column_names_its_batch_size():
    row = {"backend": "onnx", "status": "ok", "cached": False, "artifact": "", "sidecar": "", "size": 10,
           "max_abs_err": 1e-7, "parity": {}, "atol": 1e-4, "latency_ms": 0.25, "latency_batch": 8, "message": ""}
    table = results_table_html([row])
    assert "latency (batch)" in table and "0.25 ms (batch 8)" in table


def test_a_static_rendering_shows_a_sentence_not_the_widget_tree():
    w = wizard({"net": _net()}, backends=["onnx"])
    bundle = w._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"] == (
        "enn_nb export wizard, step 1 of 4 (model); backends: onnx "
        "(an interactive widget: run the notebook in Jupyter to use it)"
    )
