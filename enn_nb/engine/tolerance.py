"""Parity tolerances: the one parser of what a user gives, and the rule that fills in each backend's bounds.

A user may give any part: ``(atol, rtol)`` or ``{"atol": ...}`` for every backend, or per backend
name, with ``"*"`` for the rest — ``{"*": {"atol": 1e-3}, "onnx": {"rtol": 1e-2}}``. A bound the
user gave is used as is; a bound the user left out is the backend's default, raised by the
floor of the outputs' dtype (fp16/bf16). Front ends (magics, wizard, reports, CLI) pass the user's
values through unchanged and never fill in defaults themselves.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from enn_nb.errors import SpecError

#: The key of the bounds that apply to every backend not named.
ALL = "*"

#: Tolerance floors for lower-precision outputs.
DTYPE_TOLERANCE: dict[str, tuple[float, float]] = {"float16": (1e-2, 1e-2), "bfloat16": (5e-2, 5e-2)}

FORMS = "(atol, rtol), {'atol': ..., 'rtol': ...} (either may be left out), or a dict of those per backend name ('*' for every backend)"


@dataclasses.dataclass(frozen=True)
class Bounds:
    """A user's (possibly partial) tolerance; None keeps the backend's own bound."""

    atol: float | None = None
    rtol: float | None = None

    def over(self, base: Bounds) -> Bounds:
        return Bounds(self.atol if self.atol is not None else base.atol, self.rtol if self.rtol is not None else base.rtol)

    def to_dict(self) -> dict[str, float]:
        return {k: v for k, v in (("atol", self.atol), ("rtol", self.rtol)) if v is not None}


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """What a user asked for, by backend name (``"*"``: every backend). Empty: every default."""

    by_name: Mapping[str, Bounds] = dataclasses.field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.by_name)

    def given(self, backend: str) -> Bounds:
        """The bounds the user gave for ``backend`` (its own over the ``"*"`` ones)."""
        return self.by_name.get(backend, Bounds()).over(self.by_name.get(ALL, Bounds()))

    def resolve(self, backend: str, default: Sequence[float], output_dtypes: Sequence[str] = ()) -> tuple[float, float]:
        """The ``(atol, rtol)`` parity uses for ``backend``: what the user gave, the rest from ``default``
        raised by the dtype floor of the outputs."""
        atol, rtol = float(default[0]), float(default[1])
        for dtype in output_dtypes:
            floor = DTYPE_TOLERANCE.get(dtype)
            if floor:
                atol, rtol = max(atol, floor[0]), max(rtol, floor[1])
        given = self.given(backend)
        return (given.atol if given.atol is not None else atol, given.rtol if given.rtol is not None else rtol)

    def to_dict(self) -> dict[str, dict[str, float]]:
        """JSON form (the cache key, the magics' configuration): ``{name: {"atol"?, "rtol"?}}``."""
        return {name: bounds.to_dict() for name, bounds in sorted(self.by_name.items())}


def parse_tolerances(value: Any, what: str = "tolerances") -> Tolerances:
    """Read any accepted form of ``tolerances`` (see the module docstring).

    Raises:
        SpecError: a malformed value (names it, the bad part and the accepted forms).
    """
    if value is None or isinstance(value, Tolerances):
        return value or Tolerances()
    if isinstance(value, Mapping) and value and set(value) <= {"atol", "rtol"}:
        return _saying({ALL: _bounds(value, what)})
    if isinstance(value, Mapping):
        by_name = {}
        for name, bounds in value.items():
            if not isinstance(name, str) or not name:
                raise SpecError(f"`{what}` has the key {name!r}; keys are backend names or '*'. Give {FORMS}.")
            by_name[name] = _bounds(bounds, f"{what}.{name}")
        return _saying(by_name)
    return _saying({ALL: _bounds(value, what)})


def _saying(by_name: Mapping[str, Bounds]) -> Tolerances:
    """The entries that give a bound: ``(None, None)`` keeps every backend's own, the same as no entry."""
    return Tolerances({name: b for name, b in by_name.items() if b.atol is not None or b.rtol is not None})


def _bounds(value: Any, what: str) -> Bounds:
    if isinstance(value, Bounds):
        return value
    if isinstance(value, Mapping):
        extra = set(value) - {"atol", "rtol"}
        if extra or not value:
            raise SpecError(f"`{what}` is {dict(value)!r}; give {{'atol': ..., 'rtol': ...}} (either may be left out).")
        return Bounds(_number(value.get("atol"), f"{what}.atol"), _number(value.get("rtol"), f"{what}.rtol"))
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise SpecError(f"`{what}` is {value!r}; give {FORMS}.")
    return Bounds(_number(value[0], f"{what}.atol"), _number(value[1], f"{what}.rtol"))


def _number(value: Any, what: str) -> float | None:
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise SpecError(f"`{what}: {value!r}` must be a finite number >= 0, e.g. 1e-5.") from None
    if number < 0 or not math.isfinite(number):
        raise SpecError(f"`{what}: {value!r}` must be a finite number >= 0, e.g. 1e-5.")
    return number
