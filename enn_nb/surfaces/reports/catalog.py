"""Report templates: find them, read their declared parameters, parse and check values given to them."""

from __future__ import annotations

import json
import math
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


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line -> ``(key, parsed value)``.

    Raises:
        ReportError: no ``=`` or an empty key.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise ReportError(
            f"The parameter `{text}` is not of the form key=value (e.g. -p atol=1e-5 or -p 'backends=[onnx, pt2]')."
        )
    return key, parse_value(raw)


_NUMERIC = {"int": (int,), "float": (int, float), "bool": (bool,)}


def check_parameters(
    template: str | Path, params: dict[str, Any], *, declared: dict[str, dict[str, Any]] | None = None
) -> None:
    """Refuse parameters the template does not declare, and numbers given as something else.

    papermill itself only logs a warning for an unknown parameter and runs on; a report that silently
    ignores a misspelt ``atlo=0`` proves nothing, so this is an error before any kernel starts.

    Raises:
        UnknownNameError: a parameter not declared; the message lists the declared ones.
        ReportError: a value of the wrong kind for a numeric or boolean parameter.
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
        type_name = _kind(declared[key])
        kinds = _NUMERIC.get(type_name)
        if kinds is None or value is None:
            continue
        ok = isinstance(value, kinds) and (kinds == (bool,) or not isinstance(value, bool))
        if ok and isinstance(value, float) and not math.isfinite(value):
            ok = False
        if not ok:
            raise ReportError(
                f"The parameter `{key}` of `{name}` takes a value of type {type_name} "
                f"(default {declared[key].get('default')}), got {value!r}."
            )


def _kind(info: dict[str, Any]) -> str:
    """The declared type: the annotation papermill read, else the type of the literal default."""
    import ast

    name = str(info.get("inferred_type_name") or "None")
    if name != "None":
        return name.removeprefix("Optional[").removesuffix("]")
    try:
        default = ast.literal_eval(str(info.get("default", "")))
    except (ValueError, SyntaxError):
        return ""
    return type(default).__name__
