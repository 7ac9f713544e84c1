"""ENN-PyTorch (``enn_torch``): the ``enn_pytorch`` builder, its spec, and its export fast paths.

Imported only when an ``enn_torch`` model is met or the ``enn_pytorch`` builder is asked for.

- :func:`build_model` (builder ``enn_pytorch``, registered through the ``enn_nb.builders`` entry
  point) rebuilds with upstream's public ``new_model(in_dim, out_shape, coerce_model_config(config))``
  and sizes buffers that fitting resizes (the Scaler's) to the checkpoint's tensor table.
- :func:`spec_fields` is what ``ModelSpec.from_model`` reads from an upstream model.
- :func:`fast_paths` is the fast-path provider ``export_safe`` enters for upstream models, which
  declare no ``enn_fast_paths``: upstream's ``eager_for_export()``, its environment switches for
  FlexAttention, fused SDPA and the MSR kernels (set under a lock, restored exactly), and an
  exportable, exact piecewise-linear calibration in place of ``torch.bucketize`` (which upstream
  replaces by its affine fallback when traced, so the artifact would compute something else).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

from enn_nb.errors import MissingDependencyError, SpecError

if TYPE_CHECKING:
    import torch

    from enn_nb.engine.safe import Deviation
    from enn_nb.model.spec import ModelSpec

BUILDER = "enn_pytorch"
FUSER_TYPE = "__fuser__"
INSTALL = ("pip install --no-deps --ignore-requires-python enn_torch-<commit>.tar.gz tensordict==0.15.3 "
           "torchdata==0.11.0 pyvers==0.2.3 (or `pip install 'enn-nb[enn-torch]'` for the three dependencies)")

# Upstream's environment switches and what each selects while exporting.
ENV_SWITCHES = {
    "ENN_DISABLE_FLEX_ATTENTION": ("attention", "FlexAttention -> explicit attention: the ONNX exporter cannot "
                                   "convert flex_attention and other runtimes have no kernel for it"),
    "ENN_DISABLE_SDPA": ("attention", "fused scaled_dot_product_attention -> upstream's math path, which every "
                         "runtime represents"),
    "ENN_MSR_FORCE_TORCH": ("custom_kernel", "MSR Triton kernels -> their torch reference code (Triton kernels "
                            "have no fake implementation for torch.export)"),
}


def _upstream() -> Any:
    try:
        import enn_torch
    except ImportError as exc:
        raise MissingDependencyError(
            f"The `{BUILDER}` builder needs ENN-PyTorch (`enn_torch`), which is not installed ({exc}). Install it: "
            f"{INSTALL}.",
            package="enn_torch",
        ) from None
    return enn_torch


# -- builder -------------------------------------------------------------------------------------------
def build_model(spec: ModelSpec, *, shapes: Mapping[str, tuple[int, ...]] | None = None) -> torch.nn.Module:
    """An untrained upstream model for ``spec``, its fitted-size buffers sized to ``shapes``.

    Raises:
        SpecError: the spec lacks ``in_dim``/``out_shape`` (an upstream checkpoint without them).
        MissingDependencyError: ``enn_torch`` is not installed.
    """
    if spec.in_dim is None or spec.out_shape is None:
        raise SpecError(
            f"The `{BUILDER}` builder needs `in_dim` and `out_shape`; this spec has in_dim={spec.in_dim!r}, "
            f"out_shape={spec.out_shape!r}. Pass `model=enn_torch.new_model(in_dim, out_shape, config)` instead."
        )
    _upstream()
    from enn_torch import new_model
    from enn_torch.core.config import coerce_model_config

    model = new_model(spec.in_dim, spec.out_shape, coerce_model_config(dict(spec.config or {})))
    tasks = _full_tasks(spec)
    if tasks and callable(getattr(model, "rebuild_tasks_from_specs", None)) and model.task_specs() != tasks:
        model.rebuild_tasks_from_specs(tasks)
    if shapes:
        size_buffers(model, shapes)
    return model


def size_buffers(model: torch.nn.Module, shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Give every buffer whose checkpoint shape differs a zero tensor of that shape; returns their names.

    Fitting changes buffer shapes (``scaler.y_mean`` [1] -> [out_dim], ``scaler.pw_x`` [1, 1] -> [C, K]);
    the values come with the load. Parameters are never resized: a differing one is a real mismatch.
    """
    import torch

    resized = []
    for name, buf in list(model.named_buffers()):
        want = shapes.get(name)
        if want is None or tuple(buf.shape) == tuple(want):
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        owner._buffers[leaf] = torch.zeros(tuple(want), dtype=buf.dtype, device=buf.device)
        resized.append(name)
    return resized


def _full_tasks(spec: ModelSpec) -> list[dict[str, Any]] | None:
    """The upstream task list: the spec's tasks plus the ``__fuser__`` entry kept in the metadata."""
    if not spec.tasks:
        return None
    fuser = ((spec.metadata or {}).get("enn_pytorch") or {}).get("fuser")
    return [*spec.tasks, fuser] if isinstance(fuser, dict) else list(spec.tasks)


# -- spec ------------------------------------------------------------------------------------------------
def spec_fields(model: Any) -> dict[str, Any]:
    """What ``ModelSpec.from_model`` takes from an upstream model: builder, config, tasks without the fuser."""

    out: dict[str, Any] = {"builder": BUILDER}
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        from enn_nb.checkpoint.upstream import lenient

        out["config"] = lenient(dataclasses.asdict(config))
    specs = model.task_specs() if callable(getattr(model, "task_specs", None)) else None
    if isinstance(specs, list):
        from enn_nb.checkpoint.upstream import lenient

        out["tasks"] = [lenient(t) for t in specs if not (isinstance(t, Mapping) and t.get("type") == FUSER_TYPE)]
        fuser = [lenient(t) for t in specs if isinstance(t, Mapping) and t.get("type") == FUSER_TYPE]
        if fuser:
            out["metadata"] = {"enn_pytorch": {"fuser": fuser[-1]}}
    return out


# -- export fast paths ---------------------------------------------------------------------------------------
@contextmanager
def fast_paths(model: Any) -> Iterator[list[Deviation]]:
    """Switch an upstream model to its exportable paths for the block; yields the deviations made."""
    from enn_nb.engine.safe import Deviation

    deviations: list[Deviation] = []
    with ExitStack() as stack:
        eager = getattr(model, "eager_for_export", None)
        if callable(eager):
            stack.enter_context(eager())
            deviations.append(Deviation(
                "eager_for_export()", "compiled", "fused/compiled fuser perceiver", "eager perceiver",
                "upstream's own export context: the eager twins of compiled submodules are swapped in"))
        before = stack.enter_context(_ENV.switched())
        for name, (kind, reason) in ENV_SWITCHES.items():
            deviations.append(Deviation(f"env:{name}", kind, before.get(name), "1",
                                        f"{reason} (set for the block under a lock, restored exactly)"))
        deviations += stack.enter_context(_exact_piecewise(model))
        yield deviations


class _EnvSwitch:
    """Upstream reads environment variables, which are process-wide: counted users, restored by the last."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._before: dict[str, str | None] = {}

    @contextmanager
    def switched(self) -> Iterator[dict[str, str | None]]:
        with self._lock:
            if self._users == 0:
                self._before = {name: os.environ.get(name) for name in ENV_SWITCHES}
                for name in ENV_SWITCHES:
                    os.environ[name] = "1"
            self._users += 1
            before = dict(self._before)
        try:
            yield before
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    for name, value in self._before.items():
                        if value is None:
                            os.environ.pop(name, None)
                        else:
                            os.environ[name] = value


_ENV = _EnvSwitch()


@contextmanager
def _exact_piecewise(model: Any) -> Iterator[list[Deviation]]:
    """Every Scaler calibrating piecewise gets an exportable ``calibrate`` for the block."""
    from enn_nb.engine.safe import Deviation

    patched: list[tuple[Any, Any]] = []
    deviations = []
    try:
        for name, module in model.named_modules():
            if type(module).__name__ != "Scaler" or getattr(module, "calib_mode", None) not in ("piecewise", "ab"):
                continue
            if not _has_knots(module):
                continue
            patched.append((module, module.__dict__.get("calibrate", _MISSING)))
            module.calibrate = _calibrate_with_knots(module, type(module).calibrate.__get__(module))
            deviations.append(Deviation(
                f"{name}.calibrate", "calibration",
                f"{module.calib_mode} calibration with torch.bucketize (traced, upstream falls back to affine)",
                f"{module.calib_mode} calibration as knot comparisons summed to an index + gather (same values)",
                "keeps the fitted piecewise-linear calibration in the artifact: upstream's traced path would "
                "silently compute the affine fallback instead"))
        yield deviations
    finally:
        for module, old in reversed(patched):
            if old is _MISSING:
                module.__dict__.pop("calibrate", None)
            else:
                module.calibrate = old


_MISSING = object()


def _has_knots(scaler: Any) -> bool:
    pw_x, pw_y = scaler.pw_x, scaler.pw_y
    return pw_x.dim() == 2 and pw_y.dim() == 2 and min(pw_x.shape[1], pw_y.shape[1]) >= 2 and pw_x.numel() >= 2


def _calibrate_with_knots(scaler: Any, original: Any) -> Any:
    def calibrate(z_raw: torch.Tensor, *, apply_output_ab: bool = True) -> torch.Tensor:
        if scaler.calib_mode not in ("piecewise", "ab") or not _has_knots(scaler) or z_raw.numel() == 0:
            return original(z_raw, apply_output_ab=apply_output_ab)
        z = piecewise_linear(z_raw, scaler.pw_x, scaler.pw_y, eps=scaler.eps)
        return scaler._apply_output_ab(z) if apply_output_ab else z

    return calibrate


def piecewise_linear(z_raw: torch.Tensor, knots_x: torch.Tensor, knots_y: torch.Tensor, *, eps: float) -> torch.Tensor:
    """Per-column piecewise-linear map through ``(knots_x[c], knots_y[c])``, exportable and exact.

    The segment index is the number of knots strictly below the value (what ``torch.bucketize``
    with ``right=False`` returns on sorted knots), clamped to ``[1, K-1]``, then the segment ends
    are gathered and interpolated as ``y0 + (z - x0) / (x1 - x0 + eps) * (y1 - y0)``. Columns past
    the fitted ones reuse the last fitted column. Comparisons, sum and gather exist in every runtime.
    """
    import torch

    k = int(min(knots_x.shape[1], knots_y.shape[1]))
    shape = z_raw.shape
    z = z_raw.unsqueeze(-1) if z_raw.dim() == 1 else z_raw
    z = z.reshape(-1, int(z.shape[-1]))
    fitted = int(knots_x.shape[0])
    cols = [min(j, fitted - 1) for j in range(int(z.shape[1]))]
    kx = knots_x[cols, :k].to(device=z.device, dtype=z.dtype)
    ky = knots_y[cols, :k].to(device=z.device, dtype=z.dtype)
    idx = (z.unsqueeze(-1) > kx).to(torch.int64).sum(-1).clamp(1, k - 1).unsqueeze(-1)
    gx = kx.unsqueeze(0).expand(z.shape[0], -1, -1)
    gy = ky.unsqueeze(0).expand(z.shape[0], -1, -1)
    x0 = torch.gather(gx, 2, idx - 1).squeeze(-1)
    x1 = torch.gather(gx, 2, idx).squeeze(-1)
    y0 = torch.gather(gy, 2, idx - 1).squeeze(-1)
    y1 = torch.gather(gy, 2, idx).squeeze(-1)
    t = (z - x0) / (x1 - x0 + eps)
    return (y0 + t * (y1 - y0)).reshape(shape)
