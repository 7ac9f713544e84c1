"""The fast-path protocol: how a model declares the paths the export-safe context must switch.

A model lists its fast paths by implementing ``enn_fast_paths(self) -> Iterable[FastPath]``. Each
:class:`FastPath` is a plain attribute switch on one submodule: ``setattr(module, attr, safe_value)``
selects the path external runtimes can represent, and the previous value is put back on exit. The
switch is per model instance (no globals, no environment variables, no patching of torch), which is
what makes nested and concurrent use of ``enn_nb.export_safe`` safe.

Example::

    class MyBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.use_triton = True

        def enn_fast_paths(self):
            yield FastPath("my_block.triton", self, "use_triton", False,
                           reason="Triton kernels have no fake implementation for torch.export")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from enn_nb._registry import Registry

# Vocabulary of kinds, shown in sidecars' ``deviations``.
KINDS = ("attention", "custom_kernel", "calibration", "compiled", "mode", "other")


@dataclasses.dataclass
class FastPath:
    """One switchable fast path of a model.

    Attributes:
        name: stable identifier shown in errors and sidecars, e.g. ``"blocks.0.attn.impl"``.
        module: the object owning the switch (usually a submodule).
        attr: the attribute that selects the path.
        safe_value: the value selecting the exportable path.
        reason: why it is switched (which runtime or exporter cannot represent the fast path).
        kind: one of :data:`KINDS`.
        markers: substrings of exporter error messages that point at this fast path (used to turn a
            failure with the fast path on into an error that names it), e.g. ``("flex_attention",)``.
    """

    name: str
    module: Any
    attr: str
    safe_value: Any
    reason: str = ""
    kind: str = "other"
    markers: tuple[str, ...] = ()

    @property
    def current(self) -> Any:
        return getattr(self.module, self.attr)

    @property
    def is_fast(self) -> bool:
        return self.current != self.safe_value


def declared_fast_paths(model: Any) -> list[FastPath]:
    """Every FastPath a model (or any of its submodules) declares through ``enn_fast_paths``."""
    found: list[FastPath] = []
    seen: set[int] = set()
    switches: set[tuple[int, str]] = set()
    modules = model.modules() if hasattr(model, "modules") else [model]
    for module in modules:
        fn = getattr(module, "enn_fast_paths", None)
        if not callable(fn) or id(module) in seen:
            continue
        seen.add(id(module))
        for path in fn():
            if not isinstance(path, FastPath):
                raise TypeError(
                    f"`{type(module).__name__}.enn_fast_paths()` yielded a {type(path).__name__}; "
                    "it must yield `enn_nb.model.fastpaths.FastPath` objects."
                )
            if (id(path.module), path.attr) not in switches:  # a parent may re-declare a child's
                switches.add((id(path.module), path.attr))
                found.append(path)
    return found


# -- providers: fast paths for models that declare none themselves -----------------------------------------
#: A provider is ``fn(model) -> context manager yielding a list of enn_nb.engine.safe.Deviation``: it
#: switches the model's library-specific fast paths for the block and undoes them on exit.
Provider = Callable[[Any], AbstractContextManager[list[Any]]]

_providers: Registry[Provider] = Registry(
    kind="fast-path provider",
    group="enn_nb.fast_path_providers",
    how_to_register=(
        "Register one with `enn_nb.model.fastpaths.register_provider(\"package\", fn)` (the top-level package of the "
        "model classes it handles) or an entry point in the `enn_nb.fast_path_providers` group."
    ),
)
_providers.register("enn_torch", "enn_nb.adapters.enn_torch:fast_paths")


def register_provider(package: str, provider: Provider | str, *, replace: bool = False) -> None:
    """Use ``provider`` for models whose class comes from the top-level package ``package``."""
    _providers.register(package, provider, replace=replace)


def provider_for(model: Any) -> Provider | None:
    """The fast-path provider for a model that declares no ``enn_fast_paths`` (by its class's package)."""
    package = type(model).__module__.partition(".")[0]
    return _providers.get(package) if package in _providers else None
