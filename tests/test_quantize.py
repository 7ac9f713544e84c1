"""Quantized exports: the one ``quantize`` setting, each runtime's own quantizer, labels read back from the
artifact, accuracy against the float model with a budget (``degraded``), and bad calibration data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import enn_nb
from enn_nb.engine import sidecar as sc
from enn_nb.engine.quantize import calibration as qcal
from enn_nb.engine.quantize.accuracy import measure, over_budget
from enn_nb.engine.quantize.modes import parse_budget, parse_quantize
from enn_nb.errors import CalibrationError, InputMismatchError, QuantizeModeError
from enn_nb.reference import zoo
from enn_nb.model.signature import parse


class SmallCNN(nn.Module):
    """An outside-style 1-D CNN forecaster: ``values [B, 8, 32]`` -> ``[B, 4]``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv1 = nn.Conv1d(8, 32, 3, padding=1)
        self.conv2 = nn.Conv1d(32, 32, 3, padding=1)
        self.head = nn.Linear(32 * 32, 4)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(values))))
        return self.head(x.flatten(1))


class Outlier(nn.Module):
    """A hidden unit whose activation is ~1000x the others: one int8 scale for the whole tensor crushes the rest."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.a = nn.Linear(16, 64)
        self.b = nn.Linear(64, 4)
        with torch.no_grad():
            self.a.weight[0].mul_(2000.0)
            self.b.weight[:, 0].div_(2000.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def _sidecar(result) -> dict:  # noqa: ANN001
    return json.loads(Path(result.sidecar).read_text())


# -- the setting, refused before any work ------------------------------------------------------------------------
def test_unsupported_mode_is_refused_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "never"
    with pytest.raises(QuantizeModeError) as err:
        enn_nb.export(nn.Linear(4, 2), ["onnx", "tensorflow"], out_dir=out, example_inputs=(torch.randn(2, 4),),
                      quantize="int8")
    message = str(err.value)
    assert "`tensorflow` cannot export quantize='int8'" in message and "no quantization" in message
    assert "Backends here that do: onnx" in message
    assert err.value.known == [] and not out.exists()  # refused in the settings step: not even out_dir
    with pytest.raises(QuantizeModeError, match="'fp16'.*supports 'int8-weights', 'int8'") as err:
        parse_quantize({"executorch": "fp16"}, ["executorch"])
    assert err.value.known == ["int8-weights", "int8"]
    with pytest.raises(QuantizeModeError, match="Did you mean `int8`"):
        parse_quantize("int9", ["onnx"])
    assert parse_quantize({"coreml": "fp16+int8-weights".split("+")}, ["onnx", "coreml"]) == {
        "coreml": ("fp16", "int8-weights")}
    assert parse_quantize("fp16,int8", ["onnx"]) == {"onnx": ("fp16", "int8")}


def test_budget_and_accuracy_figures() -> None:
    assert parse_budget(None)["rmse_rel"] == 0.03 and parse_budget(0.1)["rmse_rel"] == 0.1
    with pytest.raises(ValueError, match="finite number"):
        parse_budget({"max_abs": -1})
    expected = [[np.linspace(-1, 1, 200, dtype=np.float32).reshape(100, 2)]]
    got = [[expected[0][0] + 0.01]]
    figures = measure(expected, got, ["y"], metric=lambda e, g: float(np.abs(e[0] - g[0]).mean()))
    out = figures["outputs"][0]
    assert out["max_abs"] == pytest.approx(0.01, rel=1e-3) and out["rmse"] == pytest.approx(0.01, rel=1e-3)
    assert out["rmse_rel"] == pytest.approx(0.01 / expected[0][0].std(), rel=1e-3)
    assert figures["metric"] == pytest.approx(0.01, rel=1e-3) and figures["rows"] == 100
    assert over_budget(figures, parse_budget(None)) == []
    broken = over_budget(figures, parse_budget({"rmse_rel": 0.001, "metric": 0.001}))
    assert len(broken) == 2 and "`y`: RMSE" in broken[0] and "budget 0.10%" in broken[0]


# -- calibration data ---------------------------------------------------------------------------------------------
SIGS = [parse("x:float32[B, 4]")]


def test_calibration_forms_and_bad_data(tmp_path: Path) -> None:
    batches = [torch.randn(8, 4) for _ in range(6)]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.cat(batches), torch.zeros(48)),
                                         batch_size=8)
    assert len(qcal.collect(loader, SIGS, "calibration")) == 6  # (inputs, target) pairs give their inputs
    assert len(qcal.collect(lambda: iter(batches), SIGS, "calibration")) == 6
    assert len(qcal.collect(torch.randn(16, 4), SIGS, "calibration")) == 1
    path = qcal.save_inputs(tmp_path / "calib.safetensors", [(b,) for b in batches], ["x"])
    read = qcal.collect(path, SIGS, "calibration")
    assert len(read) == 6 and torch.equal(read[3][0], batches[3])

    with pytest.raises(InputMismatchError) as err:  # one error naming the expected and received signature
        qcal.collect([torch.randn(8, 5)], SIGS, "calibration")
    assert "Expected (x: float32[batch, 4]), received (x: float32[8, 5])" in str(err.value)
    with pytest.raises(CalibrationError, match="empty"):
        qcal.collect(iter([]), SIGS, "calibration")
    nan = torch.randn(8, 4)
    nan[2, 1] = float("nan")
    with pytest.raises(CalibrationError, match="1 NaN/inf"):
        qcal.collect([torch.randn(8, 4), nan], SIGS, "calibration")

    def endless():
        while True:
            yield torch.randn(2, 4)

    with pytest.warns(UserWarning, match=f"more than {qcal.CAP} batches"):
        assert len(qcal.collect(endless(), SIGS, "calibration")) == qcal.CAP
    with pytest.raises(CalibrationError, match="not a .safetensors"):
        qcal.collect(tmp_path / "calib.npy", SIGS, "calibration")


def test_bad_calibration_writes_nothing(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(CalibrationError, match="NaN"):
        enn_nb.export(model, ["onnx"], out_dir=tmp_path, example_inputs=(torch.randn(2, 4),), quantize="int8",
                      calibration=[torch.full((4, 4), float("nan"))])
    assert [p.name for p in tmp_path.iterdir()] == []


# -- through the engine -------------------------------------------------------------------------------------------
def test_onnx_int8_from_a_dataloader_reads_back_and_is_within_budget(trained_model, tmp_path: Path) -> None:
    x = torch.randn(256, trained_model.in_dim)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=32)
    report = enn_nb.export(trained_model, ["onnx"], out_dir=tmp_path, quantize="int8", calibration=loader,
                           isolate=False, accuracy_metric=lambda e, g: float(np.abs(e[0] - g[0]).mean()))
    float_row, q = report["onnx"], report["onnx:int8"]
    assert float_row.status == "ok" and q.status == "ok" and q.verified
    assert Path(q.artifact).name == "model.int8.onnx" and q.size_bytes < float_row.size_bytes
    block = _sidecar(q)["quantization"]
    held = block["artifact"]
    assert held["qdq_nodes"] > 0 and held["int8_tensors"] > 0 and held["activation_dtype"] == "int8"
    assert held["int8_weight_fraction"] > 0.8
    # the weights themselves shrink to under 0.35x (int8 + per-channel scales; ~0.32x measured): the rest of the
    # file is the QDQ graph, which on this ~18k-weight model outweighs them
    from enn_nb.engine.quantize.readback import read_back

    assert held["weight_bytes"] <= 0.35 * read_back(Path(float_row.artifact))["weight_bytes"], held
    import onnx

    for row in (float_row, q):  # no exporter debugging metadata (stack traces...) in either; the essentials stay
        model = onnx.load(str(row.artifact))
        assert not [n.name for n in model.graph.node if n.metadata_props], row.artifact
        assert any(p.key == "enn_nb.schema" for p in model.metadata_props)
    assert block["data"]["calibration"]["source"] == "user" and block["drawn_inputs"] is False
    assert block["data"]["evaluation"]["source"] == "held-back calibration"
    assert block["data"]["evaluation"]["rows"] == 64 and block["data"]["calibration"]["rows"] == 192
    acc = block["accuracy"]
    assert acc["status"] == "within budget" and 0 < acc["outputs"][0]["rmse_rel"] <= 0.03
    assert acc["metric"] > 0 and "quantize_static" in block["quantizer_call"]
    assert "onnxruntime" in block["quantizer_versions"]
    assert "model.int8.onnx" not in str(report["onnx"].artifact)
    text = str(report)
    assert "Quantized artifacts" in text and "held-back calibration" in text
    # verify re-measures it against the float model's outputs recorded in the export's vectors file
    checked = enn_nb.verify(q.artifact)
    again = checked.accuracy
    assert again["rows"] == 8 and "model.vectors.safetensors" in again["evaluated_on"] and not checked.problems
    assert again["recorded"] == acc and math.isfinite(again["outputs"][0]["rmse_rel"])
    assert checked.status == ("degraded" if again["over_budget"] else "passed") and checked.parity == {}
    assert checked.ok == (checked.status == "passed") and "re-measured on" in str(checked)


def test_outlier_model_comes_back_degraded_with_figures(tmp_path: Path) -> None:
    model = Outlier().eval()
    report = enn_nb.export(model, ["onnx"], out_dir=tmp_path, example_inputs=(torch.randn(2, 16),), quantize="int8",
                           calibration=torch.randn(128, 16), isolate=False)
    q = report["onnx:int8"]
    assert q.status == "degraded" and report.failed == [q] and Path(q.artifact).exists()
    acc = q.quantization["accuracy"]
    assert acc["outputs"][0]["rmse_rel"] > 0.03 and "of the float output's std" in acc["over_budget"][0]
    with pytest.raises(enn_nb.errors.AccuracyBudgetError, match="over its accuracy budget") as err:
        enn_nb.export(model, ["onnx"], out_dir=tmp_path / "strict", example_inputs=(torch.randn(2, 16),),
                      quantize="int8", calibration=torch.randn(128, 16), isolate=False, strict=True)
    assert err.value.figures["outputs"][0]["rmse_rel"] > 0.03
    # verify: degraded (recorded over budget at export), never "passed"; exit 1 on the CLI
    from enn_nb.cli import main

    checked = enn_nb.verify(q.artifact)
    assert checked.status == "degraded" and not checked.ok and "recorded over budget at export" in checked.reason
    assert main(["verify", str(q.artifact)]) == 1
    float_side = tmp_path / "model.onnx.enn.json"
    float_side.rename(tmp_path / "elsewhere.json")  # without the float sidecar there is nothing to measure against
    with pytest.raises(enn_nb.errors.ExportError, match="`model.onnx.enn.json` names, and that sidecar is not beside it"):
        enn_nb.verify(q.artifact)
    (tmp_path / "elsewhere.json").rename(float_side)
    side = Path(q.sidecar)
    kept = side.read_text()
    forged = json.loads(kept)
    forged["quantization"]["budget"] = {"rmse_rel": "lots"}
    side.write_text(json.dumps(forged))
    with pytest.raises(enn_nb.errors.ExportError, match="records no valid accuracy budget"):
        enn_nb.verify(q.artifact)
    side.write_text(kept)
    Path(q.artifact).write_bytes(Path(q.artifact).read_bytes() + b"\0")
    damaged = enn_nb.verify(q.artifact)
    assert damaged.status == "failed" and "has " in damaged.problems[0] and damaged.accuracy is None


def test_a_float_artifact_under_a_quantized_name_is_a_named_failure(tmp_path: Path) -> None:
    from enn_nb.engine.registry import register_backend, unregister_backend
    from tests.fixtures.backends import AbortingQuantizerBackend, FloatQuantizerBackend, HangingQuantizerBackend

    misbehaving = (FloatQuantizerBackend, AbortingQuantizerBackend, HangingQuantizerBackend)
    for cls in misbehaving:
        register_backend(cls, replace=True)
    try:
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        with pytest.warns(UserWarning, match="no calibration data"):
            # qhang's limit covers its float plan too (a saved program, done in a second or two): generous for
            # a loaded machine, short next to the quantizer's forever
            report = enn_nb.export(model, ["qfloat", "qabort", "qhang"], out_dir=tmp_path,
                                   example_inputs=(torch.randn(2, 4),), quantize="int8",
                                   options={"qhang": {"timeout_s": 10}})
    finally:
        for cls in misbehaving:
            unregister_backend(cls.name)
    silent = report["qfloat:int8"]
    assert silent.status == "failed" and silent.error_type == "QuantizationError"
    assert "weights are all float" in silent.error and silent.artifact is None
    assert not (tmp_path / "model.int8.onnx").exists()
    crashed = report["qabort:int8"]
    assert crashed.status == "crashed" and crashed.signal == "SIGABRT"
    assert report["qabort"].status == "ok" and report["qfloat"].status == "ok"  # the float artifacts are untouched
    assert _sidecar(silent)["quantization"]["drawn_inputs"] is True
    # a quantizer that hangs times out like any other lane; the float artifact of the same export is untouched
    hung, hung_float = report["qhang:int8"], report["qhang"]
    assert (hung.status, hung.stage, hung.error_type) == ("timeout", "convert", "Timeout"), hung.error
    assert "did not finish within 10 s" in hung.error and hung.artifact is None
    assert "calibrating forever" in _sidecar(hung)["error"]["log_tail"]
    assert not (tmp_path / "model.int8.qhang.pt2").exists()
    assert hung_float.status == "ok" and hung_float.verified
    assert sc.check_files(_sidecar(hung_float), tmp_path, Path(hung_float.artifact)) == []  # whole, as recorded


@pytest.mark.slow
def test_cli_quantize_with_a_calibration_file(tmp_path: Path, trained_model, capsys) -> None:
    from enn_nb.cli import main

    ckpt = tmp_path / "ref.safetensors"
    enn_nb.save(trained_model, ckpt)
    calib = qcal.save_inputs(tmp_path / "calib.safetensors", [(torch.randn(32, trained_model.in_dim),) for _ in range(4)],
                             ["features"])
    args = ["export", str(ckpt), "-b", "onnx", "-o", str(tmp_path / "out"), "--no-isolate"]
    assert main([*args, "--quantize", "onnx=int8-weights+int8", "--calibration", str(calib), "--json"]) == 0
    rows = {r["backend"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert rows["onnx:int8"]["quantization"]["data"]["calibration"] == {"source": "user", "batches": 3, "rows": 96}
    assert rows["onnx:int8"]["quantization"]["data"]["evaluation"]["source"] == "held-back calibration"
    assert "MatMulInteger" in rows["onnx:int8-weights"]["quantization"]["artifact"]["quantized_ops"]
    assert main([*args, "--quantize", "int8", "--calibration", str(tmp_path / "missing.safetensors")]) != 0
    assert "missing.safetensors` does not exist" in capsys.readouterr().err
    # over the budget: exit 1 naming the row, unless --allow-degraded
    assert main([*args, "--quantize", "int8", "--calibration", str(calib), "--accuracy-budget", "0"]) == 1
    assert "onnx:int8 degraded" in capsys.readouterr().err
    assert main([*args, "--quantize", "int8", "--calibration", str(calib), "--accuracy-budget", "0",
                 "--allow-degraded"]) == 0


# -- every backend (slow: several conversions each) ----------------------------------------------------------
MODELS = {
    "reference": None,
    "gru": (zoo.gru_forecaster, zoo.example_inputs("gru_forecaster")),
    "cnn": (lambda: SmallCNN().eval(), (torch.randn(2, 8, 32),)),
}


@pytest.mark.slow
@pytest.mark.parametrize("which", list(MODELS))
def test_int8_on_onnx_executorch_litert(which: str, trained_model, tmp_path: Path) -> None:
    if MODELS[which] is None:
        model, example = trained_model, None
        calib = torch.randn(128, trained_model.in_dim)
    else:
        factory, example = MODELS[which]
        model = factory()
        calib = torch.randn(128, *example[0].shape[1:])
    report = enn_nb.export(model, ["onnx", "executorch", "litert"], out_dir=tmp_path, example_inputs=example,
                           quantize="int8", calibration=calib)
    formats = {"onnx": "onnx", "executorch": "pte", "litert": "tflite"}
    for backend, fmt in formats.items():
        q, f = report[f"{backend}:int8"], report[backend]
        assert f.status == "ok", f.error
        assert q.status in ("ok", "degraded"), (backend, q.error)
        held = _sidecar(q)["quantization"]["artifact"]
        assert held["format"] == fmt and held["int8_tensors"] > 0 and held["activation_dtype"] == "int8", held
        if which == "gru" and held["int8_weight_fraction"] < 0.5:
            # onnxruntime's and XNNPACK's static quantizers leave the recurrent cell in float (only the head is
            # int8): the label read back says so, with the ops left in float, instead of claiming "int8"
            assert held["float_ops"], held
            continue
        assert held["int8_weight_fraction"] > 0.5, (backend, held)
        if which != "gru":  # ai_edge_quantizer's int8 GRU (unrolled over 12 steps) came out larger than the float one
            assert q.size_bytes < f.size_bytes, (backend, q.size_bytes, f.size_bytes)
        acc = q.quantization["accuracy"]
        assert acc["rows"] > 0 and all(math.isfinite(o["rmse_rel"]) for o in acc["outputs"])
    assert report["onnx:int8"].quantization["artifact"]["qdq_nodes"] > 0
    if which == "gru":
        assert "GRU" in report["onnx:int8"].quantization["artifact"]["float_ops"]


@pytest.mark.slow
def test_coreml_fp16_and_int8_weights_from_the_spec(trained_model, tmp_path: Path) -> None:
    report = enn_nb.export(trained_model, ["coreml"], out_dir=tmp_path, quantize=["fp16", "int8-weights"])
    base = report["coreml"]
    fp16, w8 = report["coreml:fp16"], report["coreml:int8-weights"]
    assert fp16.status == "ok" and w8.status == "ok"
    held16, held8 = fp16.quantization["artifact"], w8.quantization["artifact"]
    assert held16["format"] == "mlpackage" and held16["fp16_weight_fraction"] > 0.9
    assert held16["activation_dtype"] == "float16"
    assert held8["int8_tensors"] > 0 and held8["int8_weight_fraction"] > 0.5 and held8["activation_dtype"] == "float32"
    assert "constexpr_affine_dequantize" in held8["quantized_ops"] or held8["quantized_ops"]
    assert fp16.size_bytes < base.size_bytes and w8.size_bytes < base.size_bytes
    assert not w8.verified and "macOS" in w8.verification.reason  # converted and read back, not run here


# -- the other surfaces: the magic's body, the wizard's targets step ---------------------------------------------
def test_magic_body_and_wizard_take_the_quantize_setting(tmp_path: Path) -> None:
    from enn_nb.surfaces.notebook import _magic_logic as logic
    from enn_nb.surfaces.notebook.wizard_state import WizardState

    calib = [torch.randn(8, 4)]
    body = logic.parse_export_body("quantize: {onnx: int8, coreml: [fp16]}\ncalibration: calib\naccuracy_budget: 0.05\n"
                                   "eval_data: held.safetensors\n")
    config = {"out_dir": str(tmp_path), "dynamic_batch": True, "batch_range": (1, 8, 64), "verify": True,
              "isolate": True, "cache": True, "tolerances": {}}
    chosen = logic.export_settings(body, config, ["onnx", "coreml"], namespace={"calib": calib})
    assert chosen.quantize == {"onnx": ("int8",), "coreml": ("fp16",)} and chosen.calibration is calib
    assert chosen.accuracy_budget["rmse_rel"] == 0.05 and chosen.eval_data == Path("held.safetensors")
    with pytest.raises(QuantizeModeError, match="Did you mean `int8`"):
        logic.parse_export_body("quantize: int9\n")
    with pytest.raises(enn_nb.errors.UnknownNameError):
        logic.export_settings(logic.parse_export_body("calibration: calbi\n"), config, ["onnx"],
                              namespace={"calib": calib})

    state = WizardState({"calib": calib}, backends=["onnx", "tensorflow"], out_dir=str(tmp_path))
    state.quantize = ["int8", "fp16"]
    state.calibration = "calib"
    assert state.quantize_plan() == {"onnx": ["int8", "fp16"]}  # tensorflow supports none: it just makes none
    assert state.check("targets") == ""
    chosen = state.export_settings()
    assert chosen.quantize == {"onnx": ("int8", "fp16")} and chosen.calibration is calib
    state.backends = ["tensorflow"]
    problem = state.check("targets")
    assert "No chosen backend supports quantize mode `int8` (tensorflow: none)" in problem
    state.backends, state.calibration, state.accuracy_budget = ["onnx"], "nowhere", "-1"
    problem = state.check("targets")
    assert "`nowhere` is neither a .safetensors file nor a variable" in problem and "Accuracy budget `-1`" in problem


# -- pt2 / aoti: torchao's PT2E X86 Inductor quantizer ----------------------------------------------------------
def test_pt2_int8_reads_back_from_the_saved_program(trained_model, tmp_path: Path) -> None:
    report = enn_nb.export(trained_model, ["pt2"], out_dir=tmp_path, quantize=["int8", "int8-weights"],
                           calibration=torch.randn(128, trained_model.in_dim), isolate=False)
    base, q, w8 = report["pt2"], report["pt2:int8"], report["pt2:int8-weights"]
    assert base.status == "ok" and q.status == "ok" and w8.status == "ok", (q.error, w8.error)
    assert q.verified  # (no size check: on this ~19k-weight model the archive's graph outweighs the weights)
    held = _sidecar(q)["quantization"]["artifact"]
    assert held["format"] == "pt2" and held["qdq_nodes"] > 0 and held["int8_tensors"] > 0
    # the float copies of the quantized weights are not stored beside them (else int8 would be < half)
    assert held["activation_dtype"] == "uint8" and held["int8_weight_fraction"] > 0.6, held
    assert "linear" in held["quantized_ops"]
    assert w8.quantization["artifact"]["activation_dtype"] == "float32"  # dynamic: activations stay float
    assert "X86InductorQuantizer" in q.quantization["quantizer_call"]
    for row in (q, w8):
        acc = row.quantization["accuracy"]
        assert acc["rows"] > 0 and all(0 < o["rmse_rel"] <= 0.03 for o in acc["outputs"]), acc


@pytest.mark.slow
def test_aoti_int8_reads_back_the_program_it_compiled(trained_model, tmp_path: Path) -> None:
    report = enn_nb.export(trained_model, ["aoti"], out_dir=tmp_path, quantize="int8",
                           calibration=torch.randn(128, trained_model.in_dim), isolate=False)
    q = report["aoti:int8"]
    assert q.status == "ok" and q.verified, q.error
    held = q.quantization["artifact"]
    assert held["format"] == "exported program" and "AOTInductor compiled" in held["read_from"]
    assert held["qdq_nodes"] > 0 and held["int8_tensors"] > 0 and held["activation_dtype"] == "uint8"
    assert all(math.isfinite(o["rmse_rel"]) for o in q.quantization["accuracy"]["outputs"])
