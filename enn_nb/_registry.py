"""The one registry pattern: names -> objects, built-ins as ``"module:attr"`` strings, plugins via entry points."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from enn_nb.errors import UnknownNameError

T = TypeVar("T")


def closest(name: str, known: list[str]) -> str:
    """A ``did you mean`` suffix for an error message, or an empty string."""
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    return f" Did you mean `{match[0]}`?" if match else ""


class Registry(Generic[T]):
    """A holder of named objects.

    Built-ins are registered as ``"package.module:attr"`` strings so that listing names imports
    nothing; they are resolved on first :meth:`get`. Third parties register through the entry-point
    ``group``, read once on first use. Nothing here imports a dotted path read from a file: only names
    registered in code or by an installed distribution's entry points resolve.
    """

    def __init__(self, kind: str, group: str, how_to_register: str) -> None:
        self.kind = kind
        self.group = group
        self.how_to_register = how_to_register
        self._items: dict[str, T | str] = {}
        self._entry_points_loaded = False

    def register(self, name: str, obj: T | str, *, replace: bool = False) -> None:
        """Register ``obj`` (or a lazy ``"module:attr"`` reference) under ``name``."""
        if not name or not isinstance(name, str):
            raise ValueError(f"A {self.kind} name must be a non-empty string, got {name!r}.")
        if name in self._items and not replace and self._items[name] is not obj:
            raise ValueError(
                f"A {self.kind} named `{name}` is already registered; pass replace=True to override it."
            )
        self._items[name] = obj

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def decorator(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        def wrap(obj: T) -> T:
            self.register(name, obj, replace=replace)
            return obj

        return wrap

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.group):
            self._items.setdefault(ep.name, ep.value)

    def names(self) -> list[str]:
        self._load_entry_points()
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> T:
        """Return the object for ``name``, importing a lazy reference on first use.

        Raises:
            UnknownNameError: the name is not registered; the message lists the known names.
        """
        known = self.names()
        if name not in self._items:
            raise UnknownNameError(
                f"Unknown {self.kind} `{name}`.{closest(str(name), known)} "
                f"Known {self.kind}s: {', '.join(sorted(known)) or '(none)'}. {self.how_to_register}",
                name=str(name),
                known=sorted(known),
            )
        obj = self._items[name]
        if isinstance(obj, str):
            module_name, _, attr = obj.partition(":")
            resolved = importlib.import_module(module_name)
            for part in attr.split(".") if attr else []:
                resolved = getattr(resolved, part)
            self._items[name] = obj = resolved  # type: ignore[assignment]
        return obj  # type: ignore[return-value]

    def is_resolved(self, name: str) -> bool:
        return name in self._items and not isinstance(self._items[name], str)

    def reference(self, name: str) -> str | None:
        """The lazy ``module:attr`` string for ``name`` if it has not been imported yet."""
        obj = self._items.get(name)
        return obj if isinstance(obj, str) else None
