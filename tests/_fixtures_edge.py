"""Fixtures for the edge/vendor backend tests: an ExportJob of the reference model, built directly.

The engine (``enn_nb.engine.export``) builds the same job; these helpers let a backend be exercised
on its own (convert -> load -> parity -> metadata) with real runtimes and real files.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from enn_nb.engine.backends.base import Backend, Conversion, ExportJob
from enn_nb.fastpaths import declared_fast_paths
from enn_nb.reference import sample_features

ESSENTIALS = {
    "enn_nb.schema": "enn_nb.export/1",
    "enn_nb.model": "ReferenceModel",
    "enn_nb.in_dim": "38",
    "enn_nb.out_shape": "[4, 2]",
    "enn_nb.tasks": json.dumps(["load", "peak"]),
}


def export_safe_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with every declared fast path on its safe value, in eval mode."""
    safe = copy.deepcopy(model)
    for path in declared_fast_paths(safe):
        setattr(path.module, path.attr, path.safe_value)
    return safe.eval()


class ForwardExport(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.forward_export(features)


def features(model: Any, batch: int, seed: int) -> torch.Tensor:
    """Raw ``[batch, in_dim]`` features around the scaler's statistics, with valid codes."""
    return sample_features(model, batch, seed=seed)


def make_job(
    model: torch.nn.Module,
    workdir: Path,
    *,
    dynamic: bool = True,
    batch_range: tuple[int, int, int] = (1, 8, 64),
) -> ExportJob:
    """The job the engine would build: export-safe module, batch-2 example, lazy shared capture and ONNX."""
    from enn_nb.engine.capture import onnx_from_program

    safe = export_safe_copy(model)
    module = ForwardExport(safe).eval()
    example = (features(model, 2, seed=0),)
    workdir.mkdir(parents=True, exist_ok=True)
    cache: dict[str, Any] = {}

    def program() -> Any:
        if "ep" not in cache:
            shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
            cache["ep"] = torch.export.export(module, example, dynamic_shapes=shapes)
        return cache["ep"]

    def onnx_path() -> Path:
        path = workdir / "shared" / "model.onnx"
        if not path.exists():
            onnx_from_program(
                program(), path, input_names=["features"], output_names=["prediction"], essentials=ESSENTIALS
            )
        return path

    return ExportJob(
        module=module,
        example_inputs=example,
        dynamic_batch=dynamic,
        batch_range=batch_range,
        input_names=["features"],
        output_names=["prediction"],
        spec=None,
        essentials=dict(ESSENTIALS),
        workdir=workdir,
        get_exported_program=program,
        get_onnx_path=onnx_path,
    )


def eager(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """The reference: the trained model with its fast paths on, in eval mode."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model.forward_export(x).numpy()
    finally:
        model.train(was)


def parity(
    backend: Backend, conversion: Conversion, model: torch.nn.Module, *, batches: tuple[int, ...] | None = None
) -> dict[int, float]:
    """Max abs error of the artifact vs the eager model per batch size (1 and 7 when dynamic, else the
    capture batch twice with two draws); asserts the backend's default tolerance."""
    runner = backend.load(conversion.artifact, {})
    atol, rtol = backend.default_tolerance
    if batches is None:
        batches = (1, 7) if conversion.dynamic_batch else (2, 2)
    errors: dict[int, float] = {}
    for i, batch in enumerate(batches):
        x = features(model, batch, seed=100 + i)
        expected = eager(model, x)
        (got,) = runner([x.numpy()])
        assert got.shape == expected.shape, (got.shape, expected.shape)
        err = np.abs(got.astype(np.float64) - expected)
        assert np.all(err <= atol + rtol * np.abs(expected)), f"batch {batch}: max abs err {err.max():.3e}"
        errors[batch] = max(errors.get(batch, 0.0), float(err.max()))
    return errors
