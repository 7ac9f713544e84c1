"""One front-end contract: the same export request typed on each surface gives equal ``ExportSettings``."""

from __future__ import annotations

import pytest
import torch

from enn_nb.engine.registry import backend_names, backends
from enn_nb.engine.settings import ExportSettings
from enn_nb.surfaces.cli import build_parser
from enn_nb.surfaces.cli.export import export_settings as cli_settings
from enn_nb.surfaces.notebook import _magic_logic as logic
from enn_nb.surfaces.notebook.magics import EnnMagics
from enn_nb.surfaces.notebook.wizard import wizard
from enn_nb.surfaces.reports.sections import export_settings as report_settings


#: The wizard always states the ONNX opset it shows (20): every surface types it too.
OPSET = 20


def _magic(request: str, out: str) -> ExportSettings:
    """What ``%%enn_export net --out OUT`` with ``backends: ...`` in its body builds, with default configuration."""
    magics = EnnMagics(shell=None)
    configuration = {name: getattr(magics, name) for name in magics.trait_names(config=True)}
    body = logic.parse_export_body(f"backends: [{request}]\noptions: {{onnx: {{opset: {OPSET}}}}}\n")
    return logic.export_settings(body, configuration, logic.split_names(body["backends"]), out=out)


def _cli(request: str, out: str) -> ExportSettings:
    return cli_settings(build_parser().parse_args(["export", "model.pt", "--backends", request, "--out", out,
                                                   "--option", f"onnx.opset={OPSET}"]))


def _report(request: str, out: str) -> ExportSettings:
    # the export_report template's defaults: batch_sizes [1, 8, 64], atol/rtol None, options {}
    return report_settings(request, out, batch_sizes=[1, 8, 64], atol=None, rtol=None,
                           options={"onnx": {"opset": OPSET}})


def _wizard(request: str, out: str) -> ExportSettings:
    return wizard({"net": torch.nn.Linear(4, 2)}, backends=request, out_dir=out, opset=OPSET).state.export_settings()


def test_a_named_request_gives_equal_settings_on_the_four_surfaces(tmp_path) -> None:
    out = str(tmp_path / "exports")
    built = {surface.__name__: surface("onnx,pt2", out) for surface in (_magic, _cli, _report, _wizard)}
    assert built["_magic"].names == ("onnx", "pt2") and built["_magic"].named
    for surface, settings in built.items():
        assert settings == built["_magic"], surface
        assert [b.name for b in settings.instances] == ["onnx", "pt2"]  # each backend built once, here


@pytest.mark.parametrize("keyword", ["all", "available"])
def test_all_and_available_mean_the_same_on_every_surface(tmp_path, keyword: str, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "coremltools", None)  # one backend that cannot convert here
    out = str(tmp_path / "exports")
    built = {surface.__name__: surface(keyword, out) for surface in (_magic, _cli, _report)}
    for surface, settings in built.items():
        assert settings == built["_magic"], surface
    chosen = built["_magic"]
    assert not chosen.named
    if keyword == "all":  # every registered backend; coreml is exported as `unavailable`, not failing the request
        assert list(chosen.names) == backend_names() and "coreml" in chosen.names and not chosen.fails("unavailable")
    else:
        assert list(chosen.names) == [row.name for row in backends() if row.available] and "coreml" in chosen.skipped


def test_a_named_backend_that_cannot_convert_fails_the_request(tmp_path) -> None:
    named = ExportSettings.from_call("pt2", tmp_path)
    assert named.fails("unavailable") and named.fails("cancelled") and not named.fails("ok")
    assert not named.fails("deferred")
