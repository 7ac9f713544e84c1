"""Backend options declared once (name, type, range, help) and checked before any work.

Each backend lists its :class:`Option` s in ``Backend.options``; its ``default_options`` are made from
them. ``export`` (and through it the CLI, the magics, the wizard and the report template) checks every
option given against that one declaration before loading the model: an unknown name gets the closest
known one suggested, a value of another type or outside its range is refused, naming the value.
``enn-nb backends --options`` prints the declarations.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from enn_nb._registry import closest
from enn_nb.engine.registry import backend_names, get_backend, resolve_names
from enn_nb.errors import OptionError

#: Options every backend takes, whether or not it declares them.
TIMEOUT = "timeout_s"

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", dict: "a mapping",
               list: "a list"}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Option:
    """One declared backend option.

    Attributes:
        name: the key in ``options={backend: {name: value}}``.
        type: ``bool``, ``int``, ``float``, ``str``, ``dict`` or ``list`` (an int is accepted for float).
        default: the value used when the option is not given (None: the converter's own default).
        help: one line saying what it changes.
        choices: the allowed values, when they are a fixed set.
        min / max: the allowed range of a number (inclusive).
        nullable: None is allowed (true when the default is None).
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    nullable: bool | None = None

    def allows_none(self) -> bool:
        return self.default is None if self.nullable is None else self.nullable

    def allowed(self) -> str:
        """``an integer from 18 to 23, or None``: what the option takes, in words."""
        if self.choices is not None:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            text = _TYPE_NAMES.get(self.type, self.type.__name__)
            if self.min is not None and self.max is not None:
                text += f" from {_num(self.min)} to {_num(self.max)}"
            elif self.min is not None:
                text += f" >= {_num(self.min)}"
            elif self.max is not None:
                text += f" <= {_num(self.max)}"
        none_listed = self.choices is not None and None in self.choices
        return text + (", or None" if self.allows_none() and not none_listed else "")

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, or None when it is."""
        if value is None:
            return None if self.allows_none() else "None is not allowed"
        if self.choices is not None:
            return None if value in self.choices else "not an allowed value"
        kinds: tuple[type, ...] = (int, float) if self.type is float else (self.type,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and self.type is not bool):
            return f"a {type(value).__name__}"
        if isinstance(value, float) and not math.isfinite(value):
            return "not a finite number"
        if self.min is not None and value < self.min or self.max is not None and value > self.max:
            return "out of range"
        return None

    def describe(self) -> str:
        """``opset: an integer from 18 to 23, or None (default None) - ONNX opset...``."""
        return f"{self.name}: {self.allowed()} (default {self.default!r}) - {self.help}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def defaults(options: Iterable[Option]) -> dict[str, Any]:
    """``{name: default}`` of a declaration (what ``Backend.default_options`` holds)."""
    return {o.name: o.default for o in options}


def timeout_option(default_s: float) -> Option:
    return Option(TIMEOUT, float, default_s, "seconds the isolated conversion and verification may take; past it "
                  "the child process is killed and the backend gets status `timeout`", min=1.0)


def declared(backend: Any) -> list[Option] | None:
    """The options a backend takes (its own and ``timeout_s``), or None for a plugin that declares none.

    A plugin without ``options`` but with ``default_options`` is checked on the names only.
    """
    own = getattr(backend, "options", None)
    if own is not None:
        own = list(own)
    else:  # a plugin written before options were declared
        legacy = dict(getattr(backend, "default_options", None) or {})
        if not legacy:
            return None
        own = [Option(k, object, v, "declared by its default value only") for k, v in legacy.items()]
    if not any(o.name == TIMEOUT for o in own):
        own.append(timeout_option(float(getattr(backend, "default_timeout_s", 1800.0))))
    return own


def check_backend_options(name: str, backend: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` checked against ``backend``'s declaration; returned as a plain dict.

    Raises:
        OptionError: an undeclared name (the closest is suggested) or a value not allowed (named).
    """
    options = declared(backend)
    given = dict(given)
    if options is None:
        return given
    by_name = {o.name: o for o in options}
    for key, value in given.items():
        option = by_name.get(key)
        if option is None:
            known = list(by_name)
            raise OptionError(
                f"The `{name}` backend has no option `{key}`.{closest(str(key), known)} Its options: "
                f"{', '.join(f'`{k}`' for k in known)} (`enn-nb backends --options` describes them).",
                backend=name, option=str(key), value=value, known=known,
            )
        if option.type is object:
            continue
        why = option.problem(value)
        if why is not None:
            raise OptionError(
                f"`{name}` option `{key}` is {value!r} ({why}); it takes {option.allowed()}. {option.help}.",
                backend=name, option=key, value=value, known=list(by_name),
            )
    return given


def check_options(options: Mapping[str, Any] | None, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per-backend option dicts checked against each backend's declaration, before any work.

    Keys must name a backend being exported, or ``"onnx"`` (its options shape the ONNX file that every
    ONNX-consuming backend shares, exported or not).

    Raises:
        UnknownNameError: a key that names no backend at all (the closest name is suggested).
        OptionError: a key that names a backend not being exported, a value that is not a mapping, an
            unknown option or a value its declaration does not allow.
    """

    options = dict(options or {})
    allowed = [*names, *(["onnx"] if "onnx" not in names else [])]
    out: dict[str, dict[str, Any]] = {}
    for key, value in options.items():
        if key not in allowed and key not in backend_names():
            resolve_names([str(key)])  # a name no backend has: UnknownNameError with the closest name
        if key not in allowed:
            raise OptionError(
                f"`options` has an entry for `{key}`, which is not being exported.{closest(str(key), allowed)} "
                f"Options are per backend, e.g. options={{'ort': {{'optimization_level': 'basic'}}}}; backends "
                f"here: {', '.join(names)}"
                + ("." if "onnx" in names else " (and `onnx`, whose options shape the shared ONNX)."),
                backend=str(key), known=allowed,
            )
        if not isinstance(value, Mapping):
            raise OptionError(f"`options[{key!r}]` is {value!r}; it must be a dict of that backend's options.",
                              backend=key, value=value)
        out[key] = check_backend_options(key, get_backend(key), value)
    return out


def describe_backend(backend: Any) -> list[str]:
    """One line per option a backend takes (``enn-nb backends --options``, ``%enn_backends``, the wizard)."""
    options = declared(backend)
    if options is None:
        return ["(options not declared: any name is passed through unchecked)"]
    return [o.describe() for o in options]
