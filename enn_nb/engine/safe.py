"""The export-safe context: per-model switches from fast paths to exportable paths, restored exactly.

``with enn_nb.export_safe(model) as safe:`` switches, for the block only:

- every fast path the model declares (``enn_fast_paths``, see :mod:`enn_nb.model.fastpaths`) to its safe
  value: FlexAttention -> explicit math, custom ops without fake impls -> reference code,
  data-dependent calibration -> its static form...;
- generic switches that apply to any ``nn.Module``: ``torch.compile``-wrapped submodules
  (``OptimizedModule``) -> their eager originals, ``module.compile()`` -> the plain call,
  training flags (dropout...) -> eval, and the SDPA kernel choice -> math.

Every switch is recorded as a :class:`Deviation` (the sidecar's ``deviations``). On exit (also on an
exception) each switch is undone in reverse order, so attributes, submodules and flags are exactly
what they were.

A model that declares no fast paths may have a *provider* (:func:`enn_nb.model.fastpaths.provider_for`,
registered per library, e.g. ENN-PyTorch's in ``enn_nb.adapters.enn_torch``): its context is entered
for the block and each switch it makes is a deviation too. A provider may set process-wide switches
(ENN-PyTorch reads environment variables); it owns their locking and exact restoration.

Scope: switches are attributes of one model instance. Entering the context again for the same model
(nested, or from another thread) shares the switches already made; they are undone when the last
user leaves, so one thread's exit never turns fast paths back on under another thread's export.
enn_nb itself reads no environment variables and patches nothing in torch. The one process-wide setting
involved is torch's SDPA kernel selection (a torch API, ``torch.nn.attention.sdpa_kernel``): it is
reference-counted across all open blocks and restored when the last one closes.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

from enn_nb.model.fastpaths import declared_fast_paths, provider_for

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass(frozen=True)
class Deviation:
    """One switch the context made: what, of which kind, from which value to which, and why."""

    name: str
    kind: str
    from_: Any
    to: Any
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "from": _plain(self.from_), "to": _plain(self.to), "reason": self.reason}


@dataclasses.dataclass
class SafeState:
    """What ``export_safe`` yields.

    Attributes:
        model: the module to export: the model itself, or its eager original when the model is a
            ``torch.compile`` wrapper.
        deviations: every switch in effect.
    """

    model: Any
    deviations: list[Deviation]

    def to_list(self) -> list[dict[str, Any]]:
        return [d.to_dict() for d in self.deviations]


@dataclasses.dataclass
class _Entry:
    state: SafeState
    undo: list[Callable[[], None]]
    users: int = 0


_lock = threading.RLock()
_entries: dict[int, _Entry] = {}  # id(model) -> switches in effect; the entry keeps the model alive


@contextmanager
def export_safe(model: Any, *, sdpa: str | None = "math", eval_mode: bool = True) -> Iterator[SafeState]:
    """Switch ``model``'s fast paths to exportable paths for the duration of the block.

    Args:
        model: any ``torch.nn.Module`` (a ``torch.compile`` wrapper included).
        sdpa: SDPA kernel to force while the block is open (``"math"``), or None to leave it.
        eval_mode: switch every module in training mode to eval.

    Yields:
        SafeState: ``.model`` to export and ``.deviations`` made.
    """
    key = id(_unwrapped(model))  # a compile wrapper and its original share one set of switches
    with _lock:
        entry = _entries.get(key)
        if entry is None:
            entry = _apply(model, eval_mode=eval_mode)
            _entries[key] = entry
        entry.users += 1
    sdpa_entered = False
    try:
        if sdpa is not None:
            _SDPA.enter(sdpa)
            sdpa_entered = True
            deviations = [*entry.state.deviations, _SDPA.deviation(sdpa)]
        else:
            deviations = list(entry.state.deviations)
        yield SafeState(entry.state.model, deviations)
    finally:
        if sdpa_entered:
            _SDPA.exit()
        with _lock:
            entry.users -= 1
            if entry.users == 0:
                _entries.pop(key, None)
                _undo(entry.undo)


def is_active(model: Any) -> bool:
    """True while some ``export_safe`` block is open for this model instance."""
    with _lock:
        return id(model) in _entries


def _apply(model: Any, *, eval_mode: bool) -> _Entry:
    undo: list[Callable[[], None]] = []
    deviations: list[Deviation] = []
    try:
        target = model
        while _is_optimized_module(target):
            deviations.append(
                Deviation(
                    "<model>",
                    "compiled",
                    "torch.compile",
                    "eager",
                    "exporters trace the eager module; the compiled wrapper is skipped (outputs are the same function)",
                )
            )
            target = target._orig_mod
        _unwrap_compiled(target, undo, deviations)
        declared = declared_fast_paths(target)
        for path in declared:
            if not path.is_fast:
                continue
            old = path.current
            setattr(path.module, path.attr, path.safe_value)
            undo.append(_setter(path.module, path.attr, old))
            deviations.append(Deviation(path.name, path.kind, old, path.safe_value, path.reason))
        if not declared:
            deviations += _enter_provider(target, undo)
        # Switching a fast path can make the model unwrap compiled parts lazily; unwrap again.
        _unwrap_compiled(target, undo, deviations)
        if eval_mode and hasattr(target, "modules"):
            training = [m for m in target.modules() if getattr(m, "training", False)]
            for module in training:
                module.training = False  # per module: .eval() would recurse and lose mixed flags
                undo.append(_setter(module, "training", True))
            if training:
                deviations.append(
                    Deviation(
                        "training",
                        "mode",
                        True,
                        False,
                        f"{len(training)} module(s) in training mode switched to eval (dropout off, running statistics frozen)",
                    )
                )
    except BaseException:
        _undo(undo)
        raise
    return _Entry(SafeState(target, deviations), undo)


def _enter_provider(target: Any, undo: list[Callable[[], None]]) -> list[Deviation]:
    """Enter the model library's fast-path provider, if one is registered; its exit joins ``undo``."""

    provider = provider_for(target)
    if provider is None:
        return []
    stack = ExitStack()
    made = stack.enter_context(provider(target))
    undo.append(stack.close)
    return list(made)


def _unwrap_compiled(root: Any, undo: list[Callable[[], None]], deviations: list[Deviation]) -> None:
    """Replace ``OptimizedModule`` children by their originals and drop ``module.compile()`` wrappers."""
    if not hasattr(root, "named_modules"):
        return
    changed = True
    while changed:  # a compiled module may hold compiled children
        changed = False
        for parent_name, parent in list(root.named_modules()):
            for child_name, child in list(parent._modules.items()):
                if child is not None and _is_optimized_module(child):
                    parent._modules[child_name] = child._orig_mod
                    undo.append(_module_setter(parent, child_name, child))
                    full = f"{parent_name}.{child_name}" if parent_name else child_name
                    deviations.append(
                        Deviation(
                            full,
                            "compiled",
                            "torch.compile",
                            "eager",
                            "torch.compile wrappers are not traceable by exporters; the eager original computes the same function",
                        )
                    )
                    changed = True
            if getattr(parent, "_compiled_call_impl", None) is not None:
                old = parent._compiled_call_impl
                parent._compiled_call_impl = None
                undo.append(_setter(parent, "_compiled_call_impl", old))
                deviations.append(
                    Deviation(
                        parent_name or "<model>",
                        "compiled",
                        "module.compile()",
                        "eager",
                        "a module compiled in place runs its plain forward while exporting",
                    )
                )
                changed = True


def _unwrapped(model: Any) -> Any:
    while _is_optimized_module(model):
        model = model._orig_mod
    return model


def _is_optimized_module(obj: Any) -> bool:
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # nothing compiled if dynamo never loaded
    return eval_frame is not None and isinstance(obj, eval_frame.OptimizedModule)


def _setter(obj: Any, attr: str, value: Any) -> Callable[[], None]:
    def restore() -> None:
        setattr(obj, attr, value)

    return restore


def _module_setter(parent: Any, name: str, module: Any) -> Callable[[], None]:
    def restore() -> None:
        parent._modules[name] = module

    return restore


def _undo(undo: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []
    for fn in reversed(undo):
        try:
            fn()
        except BaseException as exc:  # restore everything we can, then report the first failure
            errors.append(exc)
    undo.clear()
    if errors:
        raise errors[0]


class _SdpaSwitch:
    """Reference-counted SDPA kernel selection (torch keeps it process-wide)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._ctx: Any = None
        self._before: list[str] = []

    def enter(self, kernel: str) -> None:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = {"math": SDPBackend.MATH}.get(kernel)
        if backend is None:
            raise ValueError(f"`sdpa` is {kernel!r}; allowed values: 'math' or None.")
        with self._lock:
            if self._users == 0:
                self._before = _enabled_sdpa_backends()
                self._ctx = sdpa_kernel([backend])
                self._ctx.__enter__()
            self._users += 1

    def exit(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._ctx is not None:
                ctx, self._ctx = self._ctx, None
                ctx.__exit__(None, None, None)

    def deviation(self, kernel: str) -> Deviation:
        return Deviation(
            "torch.sdpa_kernel",
            "attention",
            self._before,
            [kernel],
            "F.scaled_dot_product_attention is lowered to explicit matmul + softmax, which every runtime represents "
            "(affects models that call it; torch's setting is restored on exit)",
        )


def _enabled_sdpa_backends() -> list[str]:
    import torch

    flags = {
        "flash": torch.backends.cuda.flash_sdp_enabled(),
        "efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
        "math": torch.backends.cuda.math_sdp_enabled(),
        "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
    }
    return [name for name, on in flags.items() if on]


_SDPA = _SdpaSwitch()


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)


def state_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """Attributes, flags and submodule identities of a model, for before/after comparisons in tests."""
    out: dict[str, Any] = {}
    for name, module in model.named_modules():
        attrs = {
            k: v
            for k, v in vars(module).items()
            if not k.startswith("_") and isinstance(v, (bool, int, float, str, type(None)))
        }
        out[name or "<model>"] = {
            "type": type(module).__name__,
            "id": id(module),
            "training": module.training,
            "attrs": attrs,
            "children": {k: id(v) for k, v in module._modules.items()},
        }
    return out
