"""Real ENN-PyTorch (enn_torch) material for the upstream tests: a tiny trained model and its checkpoints.

``python -m tests._upstream OUT`` builds a tiny upstream model, fits its Scaler (affine, then
piecewise), trains it 3 AdamW steps and saves it with upstream's own functions in every layout it
writes, plus ``expected.pt`` (inputs, state, outputs, optimizer state) to compare loads against.
The tests load those files in other processes, which never import enn_torch themselves.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import time
import types
from pathlib import Path
from typing import Any

INSTALL_HINT = ("ENN-PyTorch is not installed: `pip install --no-deps --ignore-requires-python "
                "shared/upstream/enn_torch-*.tar.gz tensordict==0.15.3 torchdata==0.11.0 pyvers==0.2.3` "
                "(what `.ci/env.sh` does when `../shared/upstream/` exists)")
IN_DIM, OUT_SHAPE = 6, (3,)
# Layout name -> path inside OUT (what each test loads).
LAYOUTS = {
    "pt": "up.pt",
    "safetensors-header": "header.safetensors",
    "safetensors-sidecar": "sidecar.safetensors",
    "safetensors-legacy": "legacy.safetensors",
    "dcp": "dcp",
    "dcp-meta-in-parent": "run/ckpt/epoch_1",
    "training-dcp": "train",
    "training-bare-pt": "train/model.pt",
}
HAS_OPTIMIZER = {"pt"}


def available() -> bool:
    return importlib.util.find_spec("enn_torch") is not None


def tiny_model(seed: int = 0) -> Any:
    import torch
    from enn_torch import new_model
    from enn_torch.core.config import ModelConfig

    torch.manual_seed(seed)
    config = ModelConfig(d_model=16, heads=2, spatial_depth=1, temporal_depth=1, spatial_latents=4,
                         temporal_latents=4, dropout=0.0)
    return new_model(IN_DIM, OUT_SHAPE, config)


def trained(mode: str = "piecewise", seed: int = 0) -> tuple[Any, Any, Any]:
    """(model, optimizer, inputs): statistics fitted, 3 AdamW steps, calibration fitted (affine, then piecewise)."""
    import torch

    model = tiny_model(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(32, IN_DIM, generator=gen)
    y = torch.randn(32, *OUT_SHAPE, generator=gen) * 2 + 1
    model.scaler.update_x(x)
    model.scaler.update_y(y)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        loss = ((model.forward_export(x) - y) ** 2).mean()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        z = model.scaler.normalize_y(model.forward_export(x))
    model.scaler.fit(z, model.scaler.normalize_y(y), mode="affine")
    if mode == "piecewise":
        with torch.no_grad():
            z = model.scaler.normalize_y(model.forward_export(x))
        model.scaler.fit(z, model.scaler.normalize_y(y), mode="piecewise", num_bins=6)
    return model, optimizer, x


def write_all(out: Path) -> None:
    """Every upstream layout of one trained model, written by upstream's functions, and ``expected.pt``."""
    import torch
    from enn_torch import save_model
    from enn_torch.runtime.workflows import _save_model_checkpoint, export_safetensors_single

    model, optimizer, x = trained("piecewise")
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, out / LAYOUTS["pt"], optimizer=optimizer, extra={"run": "t1", "note": "tiny"})
    # Upstream's safetensors writers refuse the model's aliased tensors unless handed clones.
    cloned = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_model(model, out / LAYOUTS["safetensors-sidecar"], state_dict=cloned)
    legacy = out / LAYOUTS["safetensors-legacy"]
    save_model(model, legacy, state_dict=cloned)
    legacy.with_name(legacy.name + ".json").unlink()  # only `<stem>.json` is left
    (out / "sidecar.json").unlink()  # the sidecar layout keeps only `<name>.safetensors.json`
    meta = json.loads((out / "sidecar.safetensors.json").read_text())
    export_meta = {"format": "enn-export-safetensors-v1", "created_time": time.time(), "run_id": "run-7",
                   "in_dim": IN_DIM, "out_shape": list(OUT_SHAPE), "config": meta["config"]}
    export_safetensors_single(types.SimpleNamespace(state_dict=lambda: cloned), out / LAYOUTS["safetensors-header"],
                              meta=export_meta)
    (out / LAYOUTS["dcp"]).mkdir()
    save_model(model, out / LAYOUTS["dcp"])
    nested = out / LAYOUTS["dcp-meta-in-parent"]
    nested.mkdir(parents=True)
    save_model(model, nested)
    (nested / "meta.json").rename(out / "run" / "meta.json")  # two folders up
    _save_model_checkpoint(model, out / LAYOUTS["training-dcp"], save_dcp=True, save_pt=True)
    with torch.no_grad():
        expected = {
            "x": x,
            "state": cloned,
            "forward_export": model.forward_export(x),
            "forward": [t for t in model(x) if isinstance(t, torch.Tensor)],
            "optimizer": optimizer.state_dict(),
            "calib_mode": model.scaler.calib_mode,
        }
    torch.save(expected, out / "expected.pt")


def copy_layouts(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)


if __name__ == "__main__":
    write_all(Path(sys.argv[1]))
