"""A model over ONNX's 2 GiB limit exports with external data, passes onnxruntime parity and re-verifies."""

from __future__ import annotations

import pytest
import torch

import enn_nb
from enn_nb.engine import sidecar as sc

from tests.fixtures.large_model import TWO_GIB, BigTable

pytest.importorskip("onnxruntime")


@pytest.mark.slow
def test_weights_over_2_gib_export_to_onnx_with_external_data(tmp_path):
    model = BigTable()
    assert model.table.numel() * 4 > TWO_GIB
    # In this process (isolate=False): the same conversion code, without shipping 2 GiB to a child.
    report = enn_nb.export(model, "onnx", out_dir=tmp_path, example_inputs=torch.randn(2, 4), isolate=False,
                           cache=False)
    result = report["onnx"]
    assert result.status == "ok", result.error
    artifact = tmp_path / "model.onnx"
    data = tmp_path / "model.onnx.data"
    assert artifact.stat().st_size < 1 << 20 and data.stat().st_size >= model.table.numel() * 4
    side = sc.read(artifact)
    assert side["format"]["external_data"] is True
    assert {f["path"]: f["role"] for f in side["files"]}["model.onnx.data"] == "external_data"
    assert side["parity"]["status"] == "passed" and side["parity"]["max_abs_err"] <= 1e-5
    del model, report  # free the table before verify loads the artifact once more
    checked = enn_nb.verify(artifact)
    assert checked.ok, checked
    # and the check is real: a changed byte in the weights file is found
    with open(data, "r+b") as fh:
        fh.seek(123)
        byte = fh.read(1)
        fh.seek(123)
        fh.write(bytes([byte[0] ^ 0xFF]))
    assert not enn_nb.verify(artifact).ok
