"""Real ENN-PyTorch (enn_torch) models end to end: every upstream layout restores, exports keep calibration.

The checkpoints are written by upstream's own functions (tests/fixtures/upstream.py) and loaded in a fresh
process that imports only enn_nb (tests/fixtures/upstream_check.py). Without enn_torch installed every test
here skips with one line naming what to install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.fixtures.upstream import INSTALL_HINT, LAYOUTS, available

pytestmark = pytest.mark.skipif(not available(), reason=INSTALL_HINT)

ROOT = Path(__file__).resolve().parents[1]
ENV_NAMES = ("ENN_DISABLE_FLEX_ATTENTION", "ENN_DISABLE_SDPA", "ENN_MSR_FORCE_TORCH")


def _run(module: str, *args: str, timeout: int = 600) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def upstream_files(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("enn_torch") / "layouts"
    _run("tests.fixtures.upstream", str(out))
    return out


@pytest.fixture(scope="module")
def checked(upstream_files, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("enn_torch_check") / "result.json"
    _run("tests.fixtures.upstream_check", str(upstream_files), str(out))
    return json.loads(out.read_text())


@pytest.fixture
def project_builders():
    from tests.fixtures.upstream_check import ensure_project_builders

    added = ensure_project_builders()
    yield
    from enn_nb.model.spec import _builders

    for name in added:
        _builders.unregister(name)


def test_upstream_writes_every_layout_the_issue_names(upstream_files):
    assert (upstream_files / "train" / "__0.metadata").exists() and not (upstream_files / "train" / ".metadata").exists()
    assert (upstream_files / "legacy.json").exists() and not (upstream_files / "legacy.safetensors.json").exists()
    assert (upstream_files / "run" / "meta.json").exists() and not (upstream_files / "run/ckpt/epoch_1/meta.json").exists()
    import torch

    payload = torch.load(upstream_files / "up.pt", weights_only=False)  # upstream's own file, read in full
    assert type(payload["pytorch_version"]).__name__ == "TorchVersion"
    assert payload["tasks"][-1]["type"] == "__fuser__"


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_loads_with_defaults_in_a_fresh_process(checked, layout):
    assert checked["enn_torch_before_first_build"] is False  # the loading process never imported it itself
    row = checked["layouts"][layout]
    assert row["bit_exact_weights"] and row["outputs_equal"]  # forward_export and forward, bit for bit
    assert row["calib_mode"] == "piecewise"  # restored by the Scaler's own _load_from_state_dict (DCP too)
    assert row["source"]["layout"] == "enn-pytorch" and row["source"]["variant"]
    assert "__fuser__" not in row["tasks"]
    if layout == "pt":
        assert row["optimizer_equal"] is True
        kept = row["enn_pytorch"]
        assert kept["version"] == 1 and kept["extra"] == {"run": "t1", "note": "tiny"}
        assert isinstance(kept["pytorch_version"], str) and kept["fuser"]["type"] == "__fuser__"
        assert row["source"]["missing_fields"] == []
    if layout == "safetensors-header":  # export_safetensors_single: upstream's extra keys are kept
        assert row["enn_pytorch"]["format"] == "enn-export-safetensors-v1" and row["enn_pytorch"]["run_id"] == "run-7"
        assert "created_time" in row["enn_pytorch"]
        assert set(row["source"]["missing_fields"]) == {"version", "pytorch_version", "extra", "tasks"}
    if layout.startswith("training"):
        assert row["enn_pytorch"]["format"] == "enn-model-meta-v1"
    for fmt, conv in row["converted"].items():
        assert conv["outputs_equal"] and conv["format"] == fmt, (layout, fmt)
        assert conv["restore_check"] == "passed", (layout, fmt)  # vectors recorded while converting


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("fmt", ["pt", "safetensors", "dcp"])
def test_enn_nb_save_of_an_upstream_model_round_trips(checked, fmt):
    row = checked["saved"][fmt]
    assert row["builder"] == "enn_pytorch" and row["fuser_kept"] == "__fuser__"
    assert row["tasks"] == ["template_spatial", "template_temporal"]
    assert row["aliased_pairs"] == 35  # the rebuilt model shares fuser.perceiver's tensors again
    assert row["self_check"] and row["restore_check"] == "passed"
    assert row["outputs_equal"] and row["optimizer_equal"]


def test_the_builder_is_the_projects_entry_point():
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["enn_nb.builders"]
    assert declared == {"enn_pytorch": "enn_nb.adapters.enn_torch:build_model"}
    from importlib.metadata import distribution

    dist = distribution("enn-nb")
    if Path(str(dist.locate_file(""))).resolve() != ROOT and "__editable__" not in str(dist.locate_file("")):
        pytest.skip("the installed enn-nb metadata belongs to another checkout")
    names = {ep.name: ep.value for ep in dist.entry_points if ep.group == "enn_nb.builders"}
    if names:  # installed from this tree: the entry point is what enn_nb.builders() lists
        assert names["enn_pytorch"] == declared["enn_pytorch"]


def test_missing_enn_torch_names_what_to_install(monkeypatch):
    from enn_nb.adapters.enn_torch import build_model
    from enn_nb.errors import MissingDependencyError
    from enn_nb.model.spec import ModelSpec

    monkeypatch.setitem(sys.modules, "enn_torch", None)
    with pytest.raises(MissingDependencyError, match=r"enn_torch.*tensordict==0\.15\.3"):
        build_model(ModelSpec(in_dim=6, out_shape=(3,)))


def test_piecewise_substitute_equals_bucketize_bit_for_bit():
    import torch

    from enn_nb.adapters.enn_torch import piecewise_linear
    from tests.fixtures.upstream import trained

    model, _opt, _x = trained("piecewise")
    scaler = model.scaler
    knots = scaler.pw_x.to(torch.float32)
    z = torch.randn(64, 3, dtype=torch.float32) * 3
    z[:6] = knots[:, :6].T  # exactly on the knots
    z[6] = knots[:, 0] - 5  # below the first and above the last knot
    z[7] = knots[:, -1] + 5
    for dtype in (torch.float32, torch.float64):
        zz = z.to(dtype)
        assert torch.equal(piecewise_linear(zz, scaler.pw_x, scaler.pw_y, eps=scaler.eps), scaler._piecewise(zz))
    four = torch.randn(10, 4, dtype=torch.float64)  # more columns than fitted: the last column's knots
    assert torch.equal(piecewise_linear(four, scaler.pw_x, scaler.pw_y, eps=scaler.eps), scaler._piecewise(four))


def test_provider_switches_are_restored_exactly_and_shared_across_threads(monkeypatch):
    import enn_nb
    from tests.fixtures.upstream import trained

    monkeypatch.setenv("ENN_DISABLE_SDPA", "0")
    monkeypatch.delenv("ENN_DISABLE_FLEX_ATTENTION", raising=False)
    monkeypatch.delenv("ENN_MSR_FORCE_TORCH", raising=False)
    a, _, _ = trained("piecewise", seed=0)
    b, _, _ = trained("affine", seed=1)
    inside_a = threading.Event()
    release = threading.Event()
    seen: dict[str, object] = {}

    def hold_a() -> None:
        with enn_nb.export_safe(a) as safe:
            seen["a"] = {d.name: (d.from_, d.to) for d in safe.deviations}
            seen["calibrate_patched"] = "calibrate" in a.scaler.__dict__
            inside_a.set()
            release.wait(60)

    thread = threading.Thread(target=hold_a)
    thread.start()
    assert inside_a.wait(60)
    with enn_nb.export_safe(b) as safe:
        names_b = [d.name for d in safe.deviations]
        assert all(os.environ[n] == "1" for n in ENV_NAMES)
    assert all(os.environ[n] == "1" for n in ENV_NAMES)  # model a's block is still open
    release.set()
    thread.join(60)
    assert os.environ["ENN_DISABLE_SDPA"] == "0"  # the value from before, not "unset" or "1"
    assert "ENN_DISABLE_FLEX_ATTENTION" not in os.environ and "ENN_MSR_FORCE_TORCH" not in os.environ
    assert seen["a"]["env:ENN_DISABLE_SDPA"] == ("0", "1")
    assert seen["a"]["env:ENN_DISABLE_FLEX_ATTENTION"] == (None, "1")
    assert "scaler.calibrate" in seen["a"] and seen["calibrate_patched"] is True
    assert "scaler.calibrate" not in names_b  # affine calibration exports as it is
    assert "eager_for_export()" in names_b
    assert "calibrate" not in a.scaler.__dict__  # the substitute is gone again


@pytest.mark.slow
def test_piecewise_model_exports_with_parity_and_named_deviations(tmp_path):
    import enn_nb
    from tests.fixtures.upstream import trained

    model, _opt, _x = trained("piecewise")
    report = enn_nb.export(model, ["onnx", "pt2", "executorch"], out_dir=tmp_path, cache=False)
    by_name = {r.backend: r for r in report.results}
    for name in ("onnx", "pt2", "executorch"):
        assert by_name[name].status == "ok", by_name[name].summary()
        assert by_name[name].max_abs_err is not None and by_name[name].max_abs_err < 1e-4
    named = {d["name"]: d for d in report.deviations}
    assert {"eager_for_export()", "scaler.calibrate", *(f"env:{n}" for n in ENV_NAMES)} <= set(named)
    assert named["scaler.calibrate"]["kind"] == "calibration" and "piecewise" in named["scaler.calibrate"]["to"]
    sidecar = json.loads((tmp_path / "model.onnx.enn.json").read_text())
    assert {d["name"] for d in sidecar["deviations"]} >= {"scaler.calibrate", "env:ENN_DISABLE_FLEX_ATTENTION"}
    assert all(n not in os.environ for n in ENV_NAMES)


@pytest.mark.slow
def test_without_the_substitute_the_traced_piecewise_model_would_mismatch(tmp_path):
    """Why the substitute exists: upstream's traced calibration is its affine fallback."""
    import torch

    from enn_nb.adapters.enn_torch import _exact_piecewise
    from enn_nb.engine.wrapper import export_module
    from tests.fixtures.upstream import trained

    model, _opt, x = trained("piecewise")
    with torch.no_grad():
        eager = model.forward_export(x[:4])
    with model.eager_for_export(), torch.no_grad():
        plain = torch.export.export(export_module(model), (x[:4],)).module()(x[:4])
        with _exact_piecewise(model):
            kept = torch.export.export(export_module(model), (x[:4],)).module()(x[:4])
    assert float((plain - eager).abs().max()) > 1e-2
    assert float((kept - eager).abs().max()) < 1e-5


@pytest.mark.slow
def test_magics_load_and_export_an_upstream_model_without_arguments(ip, upstream_files, tmp_path, project_builders,
                                                                     monkeypatch):
    monkeypatch.chdir(upstream_files)
    loaded = ip.run_line_magic("enn_load", "up.pt")
    model = loaded.model if hasattr(loaded, "model") else ip.user_ns["model"]
    assert type(model).__module__.startswith("enn_torch") and model.scaler.calib_mode == "piecewise"
    assert loaded.restore_check == "not_run"  # upstream files carry no recorded vectors
    ip.user_ns["up_model"] = model
    monkeypatch.chdir(tmp_path)
    report = ip.run_cell_magic("enn_export", "up_model", "backends: [pt2]")
    assert [r.status for r in report.results] == ["ok"]
    assert any(d["name"] == "scaler.calibrate" for d in report.deviations)


def test_checkpoint_report_shows_upstream_origin_and_restore_check(upstream_files, tmp_path, project_builders):
    import enn_nb
    from enn_nb.surfaces.reports.checkpoints import origin

    table = origin(enn_nb.inspect(upstream_files / "header.safetensors"))
    rows = dict((r[0], r[1]) for r in table.rows)
    assert rows["written by"] == "ENN-PyTorch (upstream)"
    assert rows["layout"] == "safetensors + header `enn_meta_json`"
    assert rows["fields present"] == "in_dim, out_shape, config"
    assert rows["fields missing"] == "version, pytorch_version, extra, tasks"
    assert rows["recorded vectors"] == "none" and rows["restore check"].startswith("not_run")
    saved = tmp_path / "saved.safetensors"
    enn_nb.save(enn_nb.load(upstream_files / "up.pt").model, saved)
    rows = dict((r[0], r[1]) for r in origin(enn_nb.inspect(saved)).rows)
    assert rows["written by"] == "enn_nb" and rows["recorded vectors"] == "batch 2, `forward_export`"
    assert rows["restore check"] == "passed (max abs err 0)"
