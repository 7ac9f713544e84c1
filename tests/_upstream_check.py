"""Run in a fresh process: load every upstream layout with enn_nb's defaults and compare with ``expected.pt``.

``python -m tests._upstream_check DIR OUT_JSON``. The process imports enn_nb only; enn_torch is imported
by the ``enn_pytorch`` builder when the first model is built, never before (checked and reported).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

FORMATS = {"pt": "x.pt", "safetensors": "x.safetensors", "dcp": "x_dcp"}


def ensure_project_builders() -> list[str]:
    """Register the builders pyproject.toml declares as entry points when the installed metadata lacks them.

    The shared development environment's editable install may carry another checkout's metadata;
    a clean install of this project (CI) has them and this registers nothing.
    """
    import tomllib

    from enn_nb.spec import _builders

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    declared = project["project"]["entry-points"]["enn_nb.builders"]
    added = [name for name in declared if name not in _builders]
    for name in added:
        _builders.register(name, declared[name])
    return added


def _outputs(model: Any, x: Any) -> tuple[Any, list[Any]]:
    import torch

    with torch.no_grad():
        return model.forward_export(x), [t for t in model(x) if isinstance(t, torch.Tensor)]


def _same_outputs(model: Any, expected: dict[str, Any]) -> bool:
    import torch

    fe, fw = _outputs(model, expected["x"])
    return torch.equal(fe, expected["forward_export"]) and len(fw) == len(expected["forward"]) and all(
        torch.equal(a, b) for a, b in zip(fw, expected["forward"]))


def _equal_tree(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(_equal_tree(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal_tree(x, y) for x, y in zip(a, b))
    return a == b


def check(root: Path, work: Path) -> dict[str, Any]:
    import torch

    import enn_nb
    from tests._upstream import HAS_OPTIMIZER, LAYOUTS

    result: dict[str, Any] = {"registered_from_pyproject": ensure_project_builders(), "layouts": {},
                              "enn_torch_before_first_build": "enn_torch" in sys.modules}
    expected = torch.load(root / "expected.pt", weights_only=True)
    for name, rel in LAYOUTS.items():
        path = root / rel
        manifest = enn_nb.inspect(path)
        loaded = enn_nb.load(path)
        state = loaded.model.state_dict()
        row: dict[str, Any] = {
            "source": manifest.source,
            "tasks": [t.get("name") for t in manifest.spec.tasks or []],
            "enn_pytorch": manifest.metadata.get("enn_pytorch"),
            "bit_exact_weights": sorted(state) == sorted(expected["state"]) and all(
                torch.equal(state[k], v) and state[k].dtype == v.dtype for k, v in expected["state"].items()),
            "outputs_equal": _same_outputs(loaded.model, expected),
            "calib_mode": loaded.model.scaler.calib_mode,
            "restore_check": loaded.restore_check,
            "optimizer_equal": _equal_tree(loaded.optimizer_state, expected["optimizer"]) if name in HAS_OPTIMIZER else None,
            "converted": {},
        }
        for fmt, dst_name in FORMATS.items():  # every upstream layout into every enn_nb format
            dst = work / f"{name}-{dst_name}"
            enn_nb.convert(path, dst)
            back = enn_nb.load(dst)
            row["converted"][fmt] = {"outputs_equal": _same_outputs(back.model, expected),
                                     "format": back.manifest.format, "layout": (back.manifest.source or {}).get("layout")}
        result["layouts"][name] = row
    # enn_nb.save of the restored upstream model (aliased tensors and all) in every format
    up = enn_nb.load(root / LAYOUTS["pt"])
    result["saved"] = {}
    for fmt, dst_name in FORMATS.items():
        dst = work / f"saved-{dst_name}"
        manifest = enn_nb.save(up.model, dst, optimizer=up.optimizer_state)
        back = enn_nb.load(dst)
        result["saved"][fmt] = {
            "builder": manifest.spec.builder,
            "tasks": [t.get("name") for t in manifest.spec.tasks or []],
            "fuser_kept": (manifest.metadata.get("enn_pytorch") or {}).get("fuser", {}).get("type"),
            "self_check": manifest.self_check is not None,
            "restore_check": back.restore_check,
            "outputs_equal": _same_outputs(back.model, expected),
            "optimizer_equal": _equal_tree(back.optimizer_state, expected["optimizer"]),
            "aliased_pairs": _aliased_pairs(back.model),
        }
    return result


def _aliased_pairs(model: Any) -> int:
    seen: dict[int, str] = {}
    pairs = 0
    for _name, t in model.state_dict(keep_vars=True).items():
        ptr = t.untyped_storage().data_ptr() if t.numel() else 0
        if ptr and ptr in seen:
            pairs += 1
        elif ptr:
            seen[ptr] = _name
    return pairs


if __name__ == "__main__":
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    work = out.parent / "work"
    work.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(check(root, work), indent=1, default=str))
