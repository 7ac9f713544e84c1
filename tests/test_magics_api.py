"""The magics over the real API: files written, objects bound, HTML reprs, provenance, export errors."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from IPython.core.error import UsageError

import enn_nb
from enn_nb.checkpoint import Loaded, Manifest
from enn_nb.engine import ExportReport

from tests.fixtures.magics import run_cell
from tests.fixtures.models import tiny_mlp_with_spec


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# -- %enn_save / %enn_inspect / %enn_load ----------------------------------------------------------
def test_save_in_three_formats_with_metadata_and_provenance(ip, trained_model, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("JPY_SESSION_NAME", "notebooks/demo.ipynb")
    ip.user_ns["model"] = trained_model
    cells = {
        "pt": "%enn_save model ckpt/model.pt --meta run=3 note='first try' lr=1e-3",
        "safetensors": "%enn_save model ckpt/model.safetensors --meta run=3",
        "dcp": "%enn_save model ckpt/model_dcp --format dcp",
    }
    for fmt, source in cells.items():
        count = ip.execution_count
        manifest = run_cell(ip, source)
        assert isinstance(manifest, Manifest) and manifest.format == fmt
        record = manifest.spec.metadata["provenance"]
        assert record["cell_sha256"] == sha(source)
        assert record["execution_count"] == count
        assert record["notebook"] == "notebooks/demo.ipynb"
        assert record["magic"] == "%enn_save"
        assert ip.user_ns["_"] is manifest  # the displayhook bound it, as in a notebook
    assert (tmp_path / "ckpt" / "model.pt").is_file()
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    assert (tmp_path / "ckpt" / "model_dcp").is_dir()
    # the manifest on disk says the same (header only)
    on_disk = enn_nb.inspect(tmp_path / "ckpt" / "model.pt")
    assert on_disk.spec.metadata["run"] == 3 and on_disk.spec.metadata["note"] == "first try"
    assert on_disk.spec.metadata["lr"] == pytest.approx(1e-3)
    assert on_disk.spec.metadata["provenance"]["cell_sha256"] == sha(cells["pt"])
    assert on_disk.spec.builder == "enn_nb.reference"


def test_save_shows_one_line_and_the_table_on_demand(ip, trained_model) -> None:
    ip.user_ns["model"] = trained_model
    saved = run_cell(ip, "%enn_save model one/model.safetensors --meta run=1")
    line = repr(saved)
    params = sum(p.numel() for p in trained_model.state_dict().values())
    assert "\n" not in line and line.startswith("saved one/model.safetensors (safetensors): enn_nb.reference")
    assert f"{params:,} parameters" in line and saved.content_hash[:12] in line
    html = saved._repr_html_()
    assert html.startswith("<details") and "<table class='enn-nb-tensors'>" in html  # folded, one click away
    full = str(saved)  # print() gives the whole manifest
    assert full == str(saved.table()) and len(full.splitlines()) > 10 and "blake3:" in full


def test_inspect_returns_the_manifest_as_html(ip, trained_model) -> None:
    ip.user_ns["model"] = trained_model
    ip.run_line_magic("enn_save", "model m.safetensors --meta owner=me")
    manifest = ip.run_line_magic("enn_inspect", "m.safetensors")
    assert isinstance(manifest, Manifest)
    html = manifest._repr_html_()
    assert "enn_nb.reference" in html and "safetensors" in html and "owner" in html
    assert manifest.tensors and sum(t.nbytes for t in manifest.tensors) > 0


def test_load_binds_the_model_and_never_clobbers_a_variable(ip, trained_model, capsys) -> None:
    ip.user_ns["model"] = trained_model
    ip.run_line_magic("enn_save", "model ckpt/model.safetensors")
    x = torch.rand(5, trained_model.in_dim)
    x[:, -2:] = 1.0  # the categorical code columns hold small integers

    loaded = ip.run_line_magic("enn_load", "ckpt/model.safetensors --into restored")
    assert isinstance(loaded, Loaded) and loaded.verified
    assert ip.user_ns["restored"] is loaded.model
    with torch.no_grad():  # FlexAttention has no backward on CPU
        assert torch.equal(loaded.model.forward_export(x), trained_model.forward_export(x))

    # derived from the file name: `model` is taken by a variable the magic did not bind
    first = ip.run_line_magic("enn_load", "ckpt/model.safetensors")
    assert ip.user_ns["model"] is trained_model
    assert ip.user_ns["model_loaded"] is first.model
    second = ip.run_line_magic("enn_load", "ckpt/model.safetensors --no-verify --non-strict")
    assert ip.user_ns["model_loaded"] is second.model and not second.verified  # rebinds its own name
    assert "`model_loaded` = ReferenceModel" in capsys.readouterr().out


def test_load_into_an_existing_module_and_optimizer_state(ip) -> None:
    net, spec = tiny_mlp_with_spec()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(3, 6)).sum().backward()
    opt.step()
    ip.user_ns.update(net=net, opt=opt, spec=spec)
    manifest = ip.run_line_magic("enn_save", "net plain.pt --spec spec --optimizer opt")
    assert manifest.spec.in_dim == 6 and manifest.optimizer is not None

    fresh, _ = tiny_mlp_with_spec()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    ip.user_ns["fresh"] = fresh
    loaded = ip.run_line_magic("enn_load", "plain.pt --model fresh --into back")
    assert ip.user_ns["back"] is fresh
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), net.state_dict().values()))
    assert loaded.optimizer_state is not None and "state" in loaded.optimizer_state


def test_checkpoint_errors_are_one_line(ip, tmp_path) -> None:
    (tmp_path / "notes.safetensors").write_text("not a checkpoint")
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("enn_inspect", "notes.safetensors")
    assert "\n" not in str(info.value) and "notes.safetensors" in str(info.value)
    assert isinstance(info.value.__cause__, enn_nb.errors.CheckpointError)


# -- %%enn_export -------------------------------------------------------------------------------
def test_export_cell_writes_artifacts_binds_the_report_and_records_provenance(ip, tmp_path, capsys) -> None:
    net, spec = tiny_mlp_with_spec()
    ip.user_ns.update(net=net, spec=spec, x_example=torch.randn(3, 6))
    source = (
        "%%enn_export net --spec spec --out exports --as report\n"
        "backends: [onnx, pt2]\n"
        "example_inputs: x_example\n"
        "batch_range: [1, 4, 16]\n"
        "tolerances:\n  onnx: {atol: 2e-5}\n"
        "options:\n  onnx: {opset: 20}\n"
        "isolate: false\n"
        "cache: false\n"
        "stem: tiny\n"
        "metadata: {purpose: test}\n"
    )
    count = ip.execution_count
    report = run_cell(ip, source)
    assert isinstance(report, ExportReport)
    assert ip.user_ns["report"] is report and ip.user_ns["_"] is report
    assert [r.status for r in report.results] == ["ok", "ok"]
    assert (tmp_path / "exports" / "tiny.onnx").is_file() and (tmp_path / "exports" / "tiny.pt2").is_file()
    html = report._repr_html_()
    assert "tiny.onnx" in html and "tiny.pt2" in html

    sidecar = json.loads(Path(report["onnx"].sidecar).read_text())
    assert sidecar["provenance"]["cell_sha256"] == sha(source)
    assert sidecar["provenance"]["execution_count"] == count
    assert sidecar["provenance"]["magic"] == "%%enn_export"
    assert sidecar["parity"]["tolerance"]["atol"] == pytest.approx(2e-5)
    assert sidecar["metadata"]["purpose"] == "test"
    # the progress bars went to stderr (tqdm's text bars outside a kernel)
    err = capsys.readouterr().err
    assert "[1/2] onnx" in err and "[2/2] pt2" in err and "done ok" in err


def test_export_uses_the_config_settings(ip, tmp_path) -> None:
    net, spec = tiny_mlp_with_spec()
    ip.user_ns.update(net=net, spec=spec)
    ip.run_line_magic("config", 'EnnMagics.out_dir = "configured"')
    ip.run_line_magic("config", "EnnMagics.default_backends = ['pt2']")
    ip.run_line_magic("config", "EnnMagics.isolate = False")
    ip.run_line_magic("config", "EnnMagics.progress = False")
    ip.run_line_magic("config", "EnnMagics.tolerances = {'pt2': {'atol': 0.0, 'rtol': 0.0}}")
    report = ip.run_line_magic("enn_export", "net --spec spec")  # the line form takes no body
    assert report.backends == ["pt2"] and report["pt2"].status == "ok"
    assert Path(report.out_dir).resolve() == (tmp_path / "configured").resolve()
    assert json.loads(Path(report["pt2"].sidecar).read_text())["parity"]["tolerance"] == {"atol": 0.0, "rtol": 0.0}


def test_export_from_a_checkpoint_path(ip, trained_model, tmp_path) -> None:
    ip.user_ns["model"] = trained_model
    ip.run_line_magic("enn_save", "model ckpt/model.safetensors")
    ip.run_line_magic("config", "EnnMagics.progress = False")
    body = "backends: pt2\nisolate: false\n"
    report = ip.run_cell_magic("enn_export", "ckpt/model.safetensors --out from_ckpt", body)
    assert report["pt2"].status == "ok"
    assert report.source.get("kind") == "checkpoint"


def test_export_strict_mismatch_is_one_line_with_the_numbers(ip) -> None:
    # GELU, LayerNorm and softmax kernels differ between torch and onnxruntime in the last bits
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 32), torch.nn.GELU(), torch.nn.LayerNorm(32), torch.nn.Linear(32, 8), torch.nn.Softmax(-1)
    ).eval()
    ip.user_ns.update(net=net, spec=enn_nb.ModelSpec(in_dim=4, out_shape=(8,)))
    ip.run_line_magic("config", "EnnMagics.progress = False")
    body = "backends: [onnx]\ntolerances: {atol: 0, rtol: 0}\nstrict: true\nisolate: false\ncache: false\n"
    with pytest.raises(UsageError) as info:
        ip.run_cell_magic("enn_export", "net --spec spec --out strict", body)
    message = str(info.value)
    assert "\n" not in message
    if isinstance(info.value.__cause__, enn_nb.errors.ParityError):
        assert "max abs error" in message and "`onnx`" in message
    else:  # onnxruntime happened to reproduce eager bit for bit: nothing to flag
        pytest.fail(f"expected a ParityError at zero tolerance, got {info.value.__cause__!r}")


def test_unknown_backend_suggests_the_closest(ip) -> None:
    net, spec = tiny_mlp_with_spec()
    ip.user_ns.update(net=net, spec=spec)
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("enn_export", "net --spec spec --backends onnxx")
    message = str(info.value)
    assert "Unknown backend `onnxx`" in message and "Did you mean `onnx`?" in message and "pt2" in message
    with pytest.raises(UsageError, match="Unknown backend `tflite`"):
        ip.run_cell_magic("enn_export", "net --spec spec", "options: {tflite: {x: 1}}")


@pytest.mark.parametrize(
    ("backend", "hidden", "extra"), [("onnx", "onnxscript", "onnx"), ("coreml", "coremltools", "coreml")]
)
def test_missing_package_names_the_install_line(ip, monkeypatch, backend: str, hidden: str, extra: str) -> None:
    net, spec = tiny_mlp_with_spec()
    ip.user_ns.update(net=net, spec=spec)
    monkeypatch.setitem(sys.modules, hidden, None)
    with pytest.raises(UsageError) as info:
        ip.run_cell_magic("enn_export", f"net --spec spec --backends {backend}", "isolate: false")
    message = str(info.value)
    assert "\n" not in message
    assert f"`{hidden}` is not installed" in message and f"%pip install 'enn-nb[{extra}]'" in message
    assert isinstance(info.value.__cause__, enn_nb.errors.MissingDependencyError)


def test_export_all_lists_unavailable_backends_without_failing_and_available_skips_them(ip, monkeypatch,
                                                                                     tmp_path) -> None:
    from enn_nb.surfaces.notebook import _magic_logic as logic

    monkeypatch.setitem(sys.modules, "coremltools", None)
    from enn_nb.engine.registry import backend_names, backends

    rows = backends()
    settings = {"out_dir": str(tmp_path), "dynamic_batch": True, "batch_range": [1, 8, 64], "verify": True,
                "isolate": False, "cache": False, "tolerances": {}}
    every = logic.export_settings({}, settings, ["all"])  # `all` means every registered backend, everywhere
    assert list(every.names) == backend_names() and "coreml" in every.names
    assert not every.named and not every.fails("unavailable") and every.fails("mismatch")
    here = logic.export_settings({}, settings, ["available"])
    assert list(here.names) == [r.name for r in rows if r.available] and "coreml" not in here.names
    assert "coreml" in here.skipped
    with pytest.raises(enn_nb.errors.MissingDependencyError, match="coremltools"):
        logic.export_settings({}, settings, ["coreml"])  # named: it must convert here


# -- %enn_backends / %enn_wizard ------------------------------------------------------------------
def test_backends_table(ip, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "coremltools", None)
    table = ip.run_line_magic("enn_backends", "")
    names = [row.name for row in table]
    assert {"onnx", "ort", "pt2", "aoti", "coreml", "tensorrt"} <= set(names)
    html = table._repr_html_()
    assert "<table" in html and all(name in html for name in names)
    # the text/plain form (nbconvert, terminals) is the same table, not a list of BackendInfo(...)
    text = repr(table)
    assert "BackendInfo(" not in text
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["backend", "suffix", "available"] and len(lines) == len(names) + 2
    assert any(line.split()[:3] == ["coreml", ".mlpackage", "no"] for line in lines)
    for row in table:
        assert (row.reason is None) == row.available, row
    coreml = next(row for row in table if row.name == "coreml")
    assert not coreml.available and "`coremltools` is not installed" in coreml.reason
    assert coreml.install == "%pip install 'enn-nb[coreml]'"


def test_wizard_magic_opens_the_wizard_with_the_settings(ip, trained_model) -> None:
    pytest.importorskip("ipywidgets")
    ip.user_ns["model"] = trained_model
    ip.run_line_magic("config", 'EnnMagics.out_dir = "wizard_out"')
    ip.run_line_magic("config", "EnnMagics.default_backends = ['onnx']")
    wiz = ip.run_line_magic("enn_wizard", "model")
    assert type(wiz).__name__ == "Wizard"
    assert wiz.state.variable == "model" and wiz.state.out_dir == "wizard_out"
    assert wiz.state.backends == ["onnx"]
    with pytest.raises(UsageError, match="No variable `modle`"):
        ip.run_line_magic("enn_wizard", "modle")
