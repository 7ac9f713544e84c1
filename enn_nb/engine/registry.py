"""The backend registry: built-ins as ``"module:Class"`` strings, plugins via the ``enn_nb.backends`` entry points."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from enn_nb._optional import PACKAGES, pip_line
from enn_nb._registry import Registry
from enn_nb.errors import MissingDependencyError, SpecError
from enn_nb.engine.backends.base import Backend
from enn_nb.table import Cell, Table

#: Built-in backends, in the order ``enn-nb backends`` lists them.
BUILTINS: dict[str, str] = {
    "onnx": "enn_nb.engine.backends.onnx:OnnxBackend",
    "ort": "enn_nb.engine.backends.ort:OrtBackend",
    "pt2": "enn_nb.engine.backends.pt2:Pt2Backend",
    "aoti": "enn_nb.engine.backends.aoti:AotiBackend",
    "executorch": "enn_nb.engine.backends.executorch:ExecutorchBackend",
    "litert": "enn_nb.engine.backends.litert:LitertBackend",
    "coreml": "enn_nb.engine.backends.coreml:CoremlBackend",
    "tensorflow": "enn_nb.engine.backends.tensorflow:TensorflowBackend",
    "tensorrt": "enn_nb.engine.backends.tensorrt:TensorrtBackend",
}

_registry: Registry[type[Backend]] = Registry(
    kind="backend",
    group="enn_nb.backends",
    how_to_register=(
        "Register one with `enn_nb.register_backend(MyBackend)` (a subclass of "
        "`enn_nb.engine.backends.base.Backend`) or an entry point in the `enn_nb.backends` group."
    ),
)
for _name, _ref in BUILTINS.items():
    _registry.register(_name, _ref)


def register_backend(backend: type[Backend] | str, obj: type[Backend] | str | None = None, *, replace: bool = False) -> type[Backend] | str:
    """Register a backend class.

    ``register_backend(MyBackend)`` uses ``MyBackend.name``; ``register_backend("name", MyBackend)``
    or ``register_backend("name", "package.module:MyBackend")`` name it explicitly.
    """
    if obj is None:
        if isinstance(backend, str):
            raise TypeError("`register_backend(name, cls)` needs the class (or a 'module:Class' string) as 2nd argument.")
        name, obj = backend.name, backend
    else:
        name = str(backend)
    if not isinstance(obj, str) and not (isinstance(obj, type) and issubclass(obj, Backend)):
        raise TypeError(
            f"`{name}` must be a subclass of `enn_nb.engine.backends.base.Backend` or a 'module:Class' string, "
            f"got {obj!r}."
        )
    _registry.register(name, obj, replace=replace)
    return obj


def unregister_backend(name: str) -> None:
    """Remove a registered backend (built-ins included, until the process restarts)."""
    _registry.unregister(name)


def backend_names() -> list[str]:
    return _registry.names()


def get_backend(name: str) -> Backend:
    """A fresh instance of the backend called ``name`` (a quantized row's label ``onnx:int8`` names ``onnx``).

    Raises:
        UnknownNameError: unknown name; the message suggests the closest and lists the known ones.
    """
    name = name.partition(":")[0]  # the row label of a quantized artifact (enn_nb.engine.quantize.modes.label)
    cls = _registry.get(name)
    instance = cls()
    if not instance.name:
        instance.name = name  # type: ignore[misc]  # a plugin registered under a name it lacks
    return instance


def resolve_names(backends: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"all"``, ``"onnx,ort"`` or ``["onnx", "ort"]`` -> a checked list of names (order kept, no duplicates)."""
    if isinstance(backends, str):
        if backends.strip() == "all":
            return backend_names()
        items = [b.strip() for b in backends.split(",")]
    else:
        items = [str(b).strip() for b in backends]
    names: list[str] = []
    for item in items:
        if not item:
            continue
        if item not in _registry:
            _registry.get(item)  # raises UnknownNameError with the suggestion
        if item not in names:
            names.append(item)
    if not names:
        known = ", ".join(backend_names())
        raise ValueError(f"`backends` is empty ({backends!r}); name at least one of: {known}, or 'all'.")
    return names


#: The words a ``backends`` request may use instead of names, and what each means (one meaning on every
#: surface: ``export()``, the magics, the wizard, the CLI, the report templates and the demo).
KEYWORDS: dict[str, str] = {
    "all": "every registered backend; one that cannot convert here is reported `unavailable` (with its install "
           "line) and does not fail the request",
    "available": "every backend that converts here; the others are left out (listed with the reason)",
}


def resolve_request(request: str | Sequence[str]) -> tuple[list[str], bool, dict[str, str]]:
    """``(names, named, skipped)`` of a ``backends=`` request: ``"all"``, ``"available"`` (see :data:`KEYWORDS`),
    ``"onnx,pt2"`` or ``["onnx", "pt2"]``. ``named``: the backends were asked for by name, so an unavailable
    one fails the request; ``skipped``: for ``"available"``, the backends left out and why.

    Raises:
        UnknownNameError: an unknown name (the closest is suggested).
        SpecError: nothing to export to.
    """
    words = [request] if isinstance(request, str) else list(request)
    word = str(words[0]).strip() if len(words) == 1 else ""
    if word == "available":
        table = backends()
        names = [row.name for row in table if row.available]
        if not names:
            raise SpecError("`available` matched no backend here; install one, e.g. %pip install 'enn-nb[onnx]', and "
                            "see `enn_nb.backends()`.")
        return names, False, {row.name: str(row.reason) for row in table if not row.available}
    if word == "all":
        return backend_names(), False, {}
    items = request.split(",") if isinstance(request, str) else [part for b in request for part in str(b).split(",")]
    return resolve_names(items), True, {}


@dataclasses.dataclass
class BackendInfo:
    """One row of :func:`backends`: what a backend makes, whether it converts and runs here, and why not.

    Attributes:
        missing: import names the backend needs to convert that are not installed (first one first).
        extra: the enn-nb extra that installs them; ``install`` is its ``%pip install`` line.
        reason: why it cannot convert here (None when ``available``); ``runtime_reason`` likewise for
            running the artifact (parity).
        error: the backend's module failed to import (a broken plugin).
        deferred: why a conversion here only prepares the artifact (TensorRT without TensorRT or CUDA):
            ``available`` (it converts) yet the table says ``no (deferred)``, the artifact is finished elsewhere.
        quantize: the ``quantize`` modes it supports (``Backend.quantize_modes``).
    """

    name: str
    suffix: str
    available: bool
    reason: str | None
    install: str
    description: str = ""
    extra: str = ""
    missing: tuple[str, ...] = ()
    runtime_available: bool = False
    runtime_reason: str | None = None
    error: str | None = None
    deferred: str | None = None
    quantize: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class BackendTable(list):
    """A list of :class:`BackendInfo` that renders as a table (HTML in a notebook, text in a terminal)."""

    def to_json(self) -> list[dict[str, Any]]:
        return [row.to_dict() for row in self]

    def table(self) -> Table:
        """The backends as a :class:`~enn_nb.table.Table`."""
        rows = [
            [Cell(r.name, code=True), r.suffix or "-", "no (deferred)" if r.available and r.deferred else r.available,
             r.runtime_available, ", ".join(r.quantize) or "-",
             r.reason or r.deferred or r.runtime_reason or r.error or r.description]
            for r in self
        ]
        return Table(("backend", "suffix", "available", "runtime here", "quantize", "install / reason"), rows,
                     css_class="enn-backends")

    def __str__(self) -> str:
        return str(self.table())

    # a notebook's text/plain form (nbconvert, terminals): the table, not a list of BackendInfo(...)
    __repr__ = __str__

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()


def backends() -> BackendTable:
    """Every registered backend: name, artifact suffix, whether it converts and runs here, and why not.

    Imports no heavy package: built-in backend modules import their converters only inside
    ``convert``/``load``; availability is decided with ``importlib.util.find_spec``.
    """
    table = BackendTable()
    for name in backend_names():
        try:
            backend = get_backend(name)
        except Exception as exc:  # a broken plugin must not hide the others
            table.append(
                BackendInfo(name, "", False, f"backend failed to load: {exc}", "", error=f"{type(exc).__name__}: {exc}")
            )
            continue
        table.append(info(name, backend))
    return table


def info(name: str, backend: Backend) -> BackendInfo:
    """The :class:`BackendInfo` of one registered backend."""
    reason = backend.unavailable_reason()
    runtime_reason = backend.runtime_unavailable_reason()
    return BackendInfo(
        name=name,
        suffix=backend.suffix,
        available=reason is None,
        reason=reason,
        install=backend.install_hint(),
        description=backend.description,
        extra=backend.extra,
        missing=tuple(backend.missing_packages()),
        runtime_available=runtime_reason is None,
        runtime_reason=runtime_reason,
        deferred=backend.deferred_reason() if reason is None else None,
        quantize=tuple(getattr(backend, "quantize_modes", None) or ()),
    )


def check_converts(name: str, backend: Backend) -> None:
    """Raise unless ``backend`` (registered as ``name``) can convert here.

    Raises:
        MissingDependencyError: its package is missing (``package``, ``extra`` and the install line).
        SpecError: it cannot run on this platform.
    """
    row = info(name, backend)
    if row.missing:
        dist = PACKAGES.get(row.missing[0], (row.missing[0], ""))[0]
        raise MissingDependencyError(
            f"Backend `{name}` cannot run here: `{row.missing[0]}` is not installed. Install it with: "
            f"{pip_line(extra=row.extra, dist=dist)}",
            package=dist, extra=row.extra,
        )
    if not row.available:
        raise SpecError(f"Backend `{name}` is not available here: {row.reason}")


def class_reference(cls: type) -> str:
    """``"module:Qualname"`` of a backend class, used to load it again in the isolated child."""
    return f"{cls.__module__}:{cls.__qualname__}"
