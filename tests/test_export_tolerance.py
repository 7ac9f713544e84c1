"""Parity tolerances: one parser in the core, partial overrides, a "*" default, and the dtype floor kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import enn_nb
from enn_nb.engine.registry import get_backend
from enn_nb.engine.tolerance import DTYPE_TOLERANCE, Bounds, Tolerances, parse_tolerances
from enn_nb.errors import SpecError

from tests.fixtures.models import TinyMLP



@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, {}),
        ((1e-3, 2e-3), {"*": {"atol": 1e-3, "rtol": 2e-3}}),
        ((1e-3, None), {"*": {"atol": 1e-3}}),
        ({"atol": 0}, {"*": {"atol": 0.0}}),
        ({"onnx": [0, 0], "*": {"rtol": "1e-2"}}, {"*": {"rtol": 1e-2}, "onnx": {"atol": 0.0, "rtol": 0.0}}),
    ],
)
def test_every_accepted_form_reads_the_same(given, expected):
    assert parse_tolerances(given).to_dict() == expected


def test_a_bound_left_out_is_the_backends_own_raised_by_the_dtype_floor():
    tol = parse_tolerances({"*": {"atol": 1e-3}, "onnx": {"rtol": 1e-2}})
    default = (1e-5, 1e-5)
    assert tol.resolve("pt2", default) == (1e-3, 1e-5)
    assert tol.resolve("onnx", default) == (1e-3, 1e-2)  # its own rtol, "*"'s atol
    # fp16 outputs raise the bounds the user did not give, never the ones given
    assert tol.resolve("pt2", default, ["float16"]) == (1e-3, DTYPE_TOLERANCE["float16"][1])
    assert Tolerances().resolve("pt2", default, ["bfloat16"]) == DTYPE_TOLERANCE["bfloat16"]
    assert tol.given("ort") == Bounds(atol=1e-3)


@pytest.mark.parametrize(
    ("given", "match"),
    [
        ({"pt2": "tight"}, r"`tolerances.pt2` is 'tight'; give \(atol, rtol\)"),
        ({"onnx": {"atol": "lots"}}, r"`tolerances.onnx.atol: 'lots'` must be a finite number >= 0"),
        ((1e-3, -1), r"`tolerances.rtol: -1` must be a finite number >= 0"),
        ({"onnx": {"atl": 1}}, r"`tolerances.onnx` is \{'atl': 1\}"),
        ((float("inf"), 0), "finite"),
    ],
)
def test_bad_tolerances_name_the_part_and_the_forms(given, match):
    with pytest.raises(SpecError, match=match):
        parse_tolerances(given)


class HalfOut(torch.nn.Module):
    """fp32 in, fp16 out: parity must use the fp16 floor for any bound the user leaves out."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = TinyMLP()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).to(torch.float16)


def test_atol_alone_keeps_each_backends_default_rtol_with_its_floor(tmp_path):
    # The bug this fixes: front ends filled the missing rtol from the fp32 default and the engine then
    # took the pair as the user's, so the fp16 floor on rtol was silently dropped.
    report = enn_nb.export(HalfOut(), "pt2", out_dir=tmp_path, example_inputs=torch.randn(2, 6), isolate=False,
                           cache=False, tolerances={"atol": 1e-3})
    sidecar = json.loads(Path(report["pt2"].sidecar).read_text())
    default_rtol = get_backend("pt2").default_tolerance[1]
    assert sidecar["parity"]["tolerance"] == {"atol": 1e-3, "rtol": max(default_rtol, DTYPE_TOLERANCE["float16"][1])}
    assert report["pt2"].status == "ok" and sidecar["parity"]["status"] == "passed"


def test_the_magics_pass_a_partial_tolerance_through_unchanged(tmp_path):
    from enn_nb.surfaces.notebook import _magic_logic as logic

    settings = {"out_dir": str(tmp_path), "dynamic_batch": True, "batch_range": [1, 8, 64], "verify": True,
                "isolate": False, "cache": False, "tolerances": {}}
    body = logic.parse_export_body("tolerances: {atol: 1e-3}\n")
    chosen = logic.export_settings(body, settings, ["pt2"])
    assert chosen.tolerances.to_dict() == {"*": {"atol": 1e-3}}  # parsed once, nothing filled in
    report = enn_nb.export(HalfOut(), settings=chosen, example_inputs=torch.randn(2, 6))
    assert report["pt2"].parity["tolerance"]["rtol"] == DTYPE_TOLERANCE["float16"][1]
