"""Report templates: find them, read their declared parameters, parse and check values given to them."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from enn_nb._optional import require
from enn_nb._registry import closest
from enn_nb._yaml import safe_load
from enn_nb.errors import ReportError, UnknownNameError

#: Where the built-in templates live: ``enn_nb/templates`` is a relative symlink to the repository's
#: top-level ``templates/`` in a source checkout, and a real folder inside an installed wheel.
PACKAGE_TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
#: A source checkout's top-level folder, used should the symlink be missing (e.g. a Windows clone).
SOURCE_TEMPLATES = Path(__file__).resolve().parents[3] / "templates"


def template_dirs() -> list[Path]:
    """Folders searched for built-in templates, the package's first."""
    return [d for d in (PACKAGE_TEMPLATES, SOURCE_TEMPLATES) if d.is_dir()]


def templates() -> list[str]:
    """Names of the built-in report templates (``export_report``, ``checkpoint_report``...)."""
    names: set[str] = set()
    for folder in template_dirs():
        names.update(p.stem for p in folder.glob("*.ipynb"))
    return sorted(names)


def resolve_template(template: str | Path) -> Path:
    """The notebook file for a template name (``export_report``) or a path to any ``.ipynb``.

    Raises:
        UnknownNameError: neither an existing notebook file nor a built-in template name.
    """
    path = Path(template).expanduser()
    if path.suffix == ".ipynb" and path.is_file():
        return path.resolve()
    name = path.name[: -len(".ipynb")] if path.name.endswith(".ipynb") else path.name
    if str(template) in (name, f"{name}.ipynb"):  # a bare name, not a path with folders
        for folder in template_dirs():
            candidate = folder / f"{name}.ipynb"
            if candidate.is_file():
                return candidate
    known = templates()
    raise UnknownNameError(
        f"Unknown report template `{template}`.{closest(name, known)} Built-in templates: "
        f"{', '.join(known) or '(none found)'}; or pass the path of an existing .ipynb file.",
        name=str(template),
        known=known,
    )


def declared_parameters(notebook: str | Path) -> dict[str, dict[str, Any]]:
    """The parameters the notebook's ``parameters`` cell declares: name -> {default, inferred_type_name, help}.

    This is ``papermill.inspect_notebook``; the defaults are the source text of the assignments.
    """

    papermill = require("papermill", purpose="report templates")
    return dict(papermill.inspect_notebook(str(notebook)))


def template_metadata(notebook: str | Path) -> dict[str, Any]:
    """The template's own settings in its notebook metadata under ``enn_nb`` (path parameters...)."""

    with open(notebook, encoding="utf-8") as fh:
        return dict(json.load(fh).get("metadata", {}).get("enn_nb", {}))


def parse_value(text: str) -> Any:
    """A ``-p`` value parsed as YAML: ``[onnx, pt2]`` -> list, ``1e-5`` -> float, ``x.pt`` -> str.

    Raises:
        ReportError: the text is not valid YAML (the message shows it and how to quote it).
    """
    import yaml

    try:
        value = safe_load(text)
    except yaml.YAMLError as exc:
        raise ReportError(
            f"The value `{text}` is not valid YAML ({str(exc).splitlines()[0]}); quote it, e.g. -p 'key=\"{text}\"'."
        ) from None
    return value


def parse_assignment(text: str, declared: dict[str, dict[str, Any]] | None = None) -> tuple[str, Any]:
    """``key=value`` from the command line -> ``(key, parsed value)``, typed by the template's declaration.

    The value is parsed as YAML, except for a parameter the template declares as text only (its
    default is a string and no annotation says otherwise): that one gets the text as typed, so
    ``-p title=2024`` is the title ``"2024"`` and ``-p 'title=!!binary ...'`` is those characters.

    Raises:
        ReportError: no ``=`` or an empty key; a value that is not valid YAML.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise ReportError(
            f"The parameter `{text}` is not of the form key=value (e.g. -p atol=1e-5 or -p 'backends=[onnx, pt2]')."
        )
    if declared is not None and key in declared and declared_types(declared[key]) == {"str"}:
        return key, raw.strip()
    return key, parse_value(raw)


_NUMERIC = {"int": (int,), "float": (int, float), "bool": (bool,)}
_CONTAINERS = {"str": (str,), "list": (list,), "dict": (dict,)}
#: How deep lists and mappings may nest in a parameter (the YAML loader's own limit).
_MAX_DEPTH = 32


def paths_as_text(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each ``os.PathLike`` (a ``pathlib.Path`` from the Python API, also inside lists) as its
    text: a path is plain data, and only plain data reaches the kernel (:func:`check_parameters`)."""

    def text(value: Any) -> Any:
        if isinstance(value, os.PathLike):
            return os.fsdecode(os.fspath(value))
        if type(value) is list:
            return [text(v) for v in value]
        return value

    return {key: text(value) for key, value in values.items()}


def check_parameters(
    template: str | Path, params: dict[str, Any], *, declared: dict[str, dict[str, Any]] | None = None
) -> None:
    """Refuse parameters the template does not declare, values that are not plain data, and values of
    another type than the template declares.

    papermill itself only logs a warning for an unknown parameter and runs on; a report that silently
    ignores a misspelt ``atlo=0`` proves nothing, so this is an error before any kernel starts. And
    papermill writes every value that is not a ``str``, number, bool, None, list or dict into the
    injected cell as its raw ``str()``: bytes (YAML ``!!binary``), tuples (``!!pairs``, ``!!omap``),
    sets (``!!set``) or dates would become code, so only plain JSON-like values pass.

    Raises:
        UnknownNameError: a parameter not declared; the message lists the declared ones.
        ReportError: a value that is not plain data, or not of the declared type.
    """
    declared = declared if declared is not None else declared_parameters(template)
    name = Path(template).stem
    known = list(declared)
    for key, value in params.items():
        if key not in declared:
            listing = ", ".join(f"`{k}`" for k in known) or "(none: it has no cell tagged `parameters`)"
            raise UnknownNameError(
                f"The template `{name}` declares no parameter `{key}`.{closest(key, known)} "
                f"Declared parameters: {listing}.",
                name=key,
                known=known,
            )
        bad = _not_plain(value)
        if bad is not None:
            raise ReportError(
                f"The parameter `{key}` of `{name}` holds {bad}; parameters are plain values only (text, numbers, "
                "true/false, null, and lists or mappings of those), so nothing else reaches the kernel. YAML tags "
                "such as `!!binary`, `!!set`, `!!pairs`, `!!omap` or dates are refused: quote the value as text."
            )
        if value is None:
            continue
        types = declared_types(declared[key])
        if types and not _fits(value, types):
            raise ReportError(
                f"The parameter `{key}` of `{name}` takes a value of type {' or '.join(sorted(types))} "
                f"(default {declared[key].get('default')}), got {_shown(value)} ({type(value).__name__})."
            )


def _fits(value: Any, types: set[str]) -> bool:
    for type_name in types:
        kinds = _NUMERIC.get(type_name) or _CONTAINERS.get(type_name)
        if kinds is None:
            return True  # a type this check does not know (a custom template's annotation): plain is enough
        ok = isinstance(value, kinds) and (kinds == (bool,) or not isinstance(value, bool))
        if ok and isinstance(value, float) and not math.isfinite(value):
            ok = False
        if ok:
            return True
    return False


def _shown(value: Any) -> str:
    from enn_nb._safeio import escape

    text = repr(value)
    return escape(text if len(text) <= 80 else text[:77] + "...")


def _not_plain(value: Any, depth: int = 0) -> str | None:
    """What in ``value`` is not plain JSON-like data (exact built-in types only: a ``str`` subclass can
    carry its own ``__repr__``), or None."""
    if depth > _MAX_DEPTH:
        return f"lists or mappings nested deeper than {_MAX_DEPTH} levels"
    kind = type(value)
    if value is None or kind in (str, int, bool):
        return None
    if kind is float:
        return None
    if kind is list:
        return next((bad for bad in (_not_plain(v, depth + 1) for v in value) if bad), None)
    if kind is dict:
        for k, v in value.items():
            if type(k) is not str:
                return f"a mapping key {_shown(k)} of type {type(k).__name__} (keys are text)"
            bad = _not_plain(v, depth + 1)
            if bad:
                return bad
        return None
    return f"a value of type {kind.__name__} ({_shown(value)})"


def declared_types(info: dict[str, Any]) -> set[str]:
    """The type names a parameter takes: from its annotation (``Optional[float]``, ``Union[str, list]``,
    ``str | list``), else the type of its literal default; an empty set when neither says (any plain value)."""
    import ast
    import re

    annotation = str(info.get("inferred_type_name") or "None")
    if annotation != "None":
        names = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", annotation)) - {"Optional", "Union", "None", "NoneType"}
        return {n.lower() if n in ("List", "Dict") else n for n in names if n not in ("typing",)}
    try:
        default = ast.literal_eval(str(info.get("default", "")))
    except (ValueError, SyntaxError):
        return set()
    return set() if default is None else {type(default).__name__}
