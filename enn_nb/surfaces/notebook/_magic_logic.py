"""What the ``%enn_*`` magics do besides calling the API: parse, look up, validate, name things.

Nothing here knows about IPython's magic machinery; errors are enn_nb errors, which the magics turn
into one-line ``UsageError``s at their boundary.
"""

from __future__ import annotations

import difflib
import keyword
import os
import re
import shlex
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from enn_nb._paths import CHECKPOINT_SUFFIXES
from enn_nb._safeio import check_example_shape, escape
from enn_nb._yaml import safe_load
from enn_nb.checkpoint.schema import FORMATS
from enn_nb.errors import (
    BrokenDependencyError,
    EnnError,
    MissingDependencyError,
    SpecError,
    UnknownNameError,
)
from enn_nb.model import signature as sig
from enn_nb.model.signature import DTYPES, DTYPE_ALIASES, parse_many

if TYPE_CHECKING:
    from enn_nb.engine.settings import ExportSettings

SAVE_FORMATS = FORMATS

#: Keys of the ``%%enn_export`` YAML body and what each one takes (shown when a key is unknown).
EXPORT_KEYS: dict[str, str] = {
    "backends": "list of backend names, `all` (every registered backend) or `available` (every one that converts here)",
    "out_dir": "output directory",
    "dynamic_batch": "true/false",
    "batch_range": "[min, opt, max] batch sizes",
    "example_inputs": (
        "a variable holding a tensor (or a tuple of tensors), a shape like [B, 24, 6], "
        "or one shape per input like {values: [B, 24, 6], mask: bool[B, 24]}"
    ),
    "tolerances": "{backend: {atol: ..., rtol: ...}} or {atol: ..., rtol: ...} for every backend",
    "options": "{backend: {option: value}}",
    "verify": "true/false: run the parity check",
    "isolate": "true/false: convert in a child process",
    "cache": "true/false: reuse unchanged artifacts",
    "strict": "true/false: raise on the first failure or mismatch",
    "stem": "artifact file name without suffix",
    "metadata": "JSON object stored in every sidecar",
    "safe": "true/false: export inside export_safe (false: a fast path left on fails the export)",
    "workers": "number of child processes converting side by side",
    "quantize": "fp16, int8-weights or int8, a list of them, or {backend: mode(s)}: quantized artifacts beside the float ones",
    "calibration": "a variable holding calibration inputs (tensor, batches, DataLoader, callable) or a .safetensors path",
    "eval_data": "a variable or .safetensors path of inputs to measure the quantized artifacts on",
    "accuracy_budget": "a number (RMSE / float std, default 0.03) or {rmse_rel, max_abs, mean_abs, metric}",
    "accuracy_metric": "a variable holding metric(float_outputs, quantized_outputs) -> float",
}

#: ``enn_nb.export`` keywords that no body key sets, and why (tests check EXPORT_KEYS against the signature).
NOT_BODY_KEYS: dict[str, str] = {
    "model_or_checkpoint": "the magic's argument",
    "spec": "the `--spec` flag",
    "provenance": "recorded from the running cell",
    "progress": "the magic draws progress bars",
    "should_stop": "a callable, not YAML",
    "storage_options": "the environment (`ENN_NB_STORAGE_OPTIONS`, `AWS_*`): a notebook cell would record secrets",
    "settings": "the magic builds the ExportSettings from the body, its flags and its configuration",
    "quiet": "a notebook displays the report; the terminal line is for scripts",
}

# Names every IPython namespace holds that are never what a user means by "my model".
_HIDDEN_NAMES = frozenset({"In", "Out", "exit", "quit", "get_ipython", "open"})


# -- command lines -------------------------------------------------------------------------------
def split_args(line: str) -> list[str]:
    """Split a magic's argument line like a shell would (quotes group, and are removed).

    Raises:
        SpecError: unbalanced quotes.
    """
    try:
        return shlex.split(line, posix=os.name != "nt")
    except ValueError as exc:
        raise SpecError(f"Cannot split the arguments `{line.strip()}`: {exc}. Close the quote.") from None


def split_names(values: Iterable[str] | str | None) -> list[str]:
    """``["onnx,pt2", "aoti"]`` or ``"onnx, pt2"`` -> ``["onnx", "pt2", "aoti"]`` (order kept, no duplicates)."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for value in values:
        for part in re.split(r"[,\s]+", str(value)):
            if part and part not in out:
                out.append(part)
    return out


# -- the user namespace ---------------------------------------------------------------------------
def user_names(namespace: Mapping[str, Any]) -> list[str]:
    """Names a user defined (no IPython internals, no underscore names, no modules)."""

    return sorted(
        name
        for name, value in namespace.items()
        if not name.startswith("_") and name not in _HIDDEN_NAMES and not isinstance(value, ModuleType)
    )


def close_names(name: str, known: Iterable[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(name, list(known), n=n, cutoff=0.6)


def lookup(namespace: Mapping[str, Any], name: str, *, what: str) -> Any:
    """The value of ``name`` in the user namespace.

    Raises:
        UnknownNameError: no such variable; the message lists close names, or the candidates.
    """
    if name in namespace:
        return namespace[name]
    known = user_names(namespace)
    close = close_names(name, known)
    if close:
        hint = "Did you mean " + " or ".join(f"`{c}`" for c in close) + "?"
    elif known:
        hint = f"Defined names: {', '.join(known[:12])}{'...' if len(known) > 12 else ''}."
    else:
        hint = "The namespace defines no variables yet; run the cell that creates it first."
    raise UnknownNameError(f"No variable `{name}` ({what}) in the namespace. {hint}", name=name, known=close)


def module_names(namespace: Mapping[str, Any]) -> list[str]:
    """Names of the ``nn.Module`` variables in the namespace (empty when torch is not imported)."""
    torch = sys.modules.get("torch")
    if torch is None:  # nothing can be an nn.Module if torch was never imported
        return []
    return [n for n in user_names(namespace) if isinstance(namespace[n], torch.nn.Module)]


def require_module(value: Any, name: str, namespace: Mapping[str, Any]) -> Any:
    """``value`` itself if it is an ``nn.Module``.

    Raises:
        SpecError: it is something else; the message names the module variables there are.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.nn.Module):
        return value
    modules = module_names(namespace)
    hint = f" Modules in the namespace: {', '.join(f'`{m}`' for m in modules)}." if modules else ""
    raise SpecError(
        f"`{name}` is a {type(value).__name__}, not a torch `nn.Module`; pass the model variable.{hint}"
    )


def require_instance(value: Any, name: str, cls_path: str, what: str) -> Any:
    """``value`` if it is an instance of the class at ``module:attr`` (imported only if loaded)."""
    module_name, _, attr = cls_path.partition(":")
    module = sys.modules.get(module_name)
    cls = getattr(module, attr, None) if module is not None else None
    if cls is not None and isinstance(value, cls):
        return value
    raise SpecError(f"`{name}` is a {type(value).__name__}, not {what}.")


def check_identifier(name: str, option: str) -> str:
    """``name`` if it can be bound as a Python variable."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise SpecError(f"`{option} {name}`: `{name}` is not a valid Python variable name; use letters, digits and _.")
    if is_reserved_name(name):
        raise SpecError(
            f"`{option} {name}`: `{name}` is a Python builtin or one of IPython's own names; binding it would break "
            "the kernel. Pick another name, e.g. `model`."
        )
    return name


#: Names IPython itself binds in the user namespace (rebinding them breaks the shell).
IPYTHON_NAMES = frozenset({"get_ipython", "exit", "quit", "In", "Out", "_ih", "_oh", "_dh", "_ii", "_iii", "_i",
                           "_", "__", "___", "__builtins__", "__builtin__", "__name__", "__doc__", "__spec__",
                           "__loader__", "__package__"})


def is_reserved_name(name: str) -> bool:
    """True for builtins (``print``, ``__builtins__``), dunders and IPython's own names (``get_ipython``, ``In``)."""
    import builtins

    return (name in IPYTHON_NAMES or hasattr(builtins, name) or (name.startswith("__") and name.endswith("__"))
            or re.fullmatch(r"_i{0,3}\d*|_\d+", name) is not None)


def name_from_path(path: str | os.PathLike[str]) -> str:
    """A variable name derived from a checkpoint path: ``runs/my-model.v2.safetensors`` -> ``my_model_v2``."""
    p = Path(path)
    stem = p.name
    if p.suffix.lower() in CHECKPOINT_SUFFIXES:
        stem = stem[: -len(p.suffix)]
    name = re.sub(r"\W+", "_", stem).strip("_") or "model"
    if name[0].isdigit():
        name = f"model_{name}"
    if keyword.iskeyword(name):
        name += "_"
    return name


def derive_name(path: str | os.PathLike[str], namespace: Mapping[str, Any], own: set[str]) -> str:
    """A free variable name for a loaded model: from the file name, never replacing a variable not in ``own``.

    ``own`` holds the names an earlier load bound itself (re-running a cell rebinds the same name).
    """
    base = name_from_path(path)
    for candidate in (base, f"{base}_loaded", *(f"{base}_loaded{i}" for i in range(2, 100))):
        if candidate not in namespace or candidate in own:
            return candidate
    raise SpecError(f"No free variable name derived from `{path}`; pass `--into NAME`.")


def model_or_checkpoint(namespace: Mapping[str, Any], name: str) -> Any:
    """The ``nn.Module`` variable called ``name``, else an existing checkpoint path (a :class:`Path`).

    Raises:
        SpecError: the variable is not an nn.Module.
        UnknownNameError: neither a variable nor an existing path (close names suggested).
    """
    if name in namespace:
        return require_module(namespace[name], name, namespace)
    from enn_nb.storage import is_url

    if is_url(name):  # a checkpoint URL: the export loads it through the cache
        return name
    path = Path(name).expanduser()
    if path.exists():
        return path
    return lookup(namespace, name, what="the model to export, or an existing checkpoint path")


# -- values -------------------------------------------------------------------------------------
def parse_meta(items: Iterable[str]) -> dict[str, Any]:
    """``["run=3", "note=first try", "tags=[a, b]"]`` -> a JSON object; values read as YAML scalars/lists.

    Raises:
        SpecError: an item without ``=`` or with an empty key.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError(f"`--meta {item}` is not KEY=VALUE; write e.g. `--meta run=3 note=baseline`.")
        out[key] = _yaml_value(value)
    return out


def _yaml_value(text: str) -> Any:
    import yaml

    try:
        return safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def check_checkpoint_path(path: str) -> Path | str:
    """An existing checkpoint path (file or DCP directory), ``~`` expanded; a URL as it is (``load`` checks it).

    Raises:
        SpecError: nothing exists there; the message lists close names in that directory.
    """
    from enn_nb.storage import is_url

    if is_url(path):
        return path
    p = Path(path).expanduser()
    if p.exists():
        return p
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise SpecError(f"`{path}` does not exist: its directory `{parent}` does not exist (cwd: {Path.cwd()}).")
    siblings = sorted(child.name for child in parent.iterdir())
    close = close_names(p.name, siblings)
    hint = (" Did you mean " + " or ".join(f"`{parent / c}`" for c in close) + "?") if close else ""
    raise SpecError(f"`{path}` does not exist (cwd: {Path.cwd()}).{hint}")


def save_format(path: str, fmt: str | None) -> str | None:
    """The format ``%enn_save`` passes on: the explicit one, or None to let the suffix decide.

    Raises:
        UnknownNameError: no ``--format`` and a suffix that names no checkpoint format.
    """
    if fmt:
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix and suffix not in CHECKPOINT_SUFFIXES:
        raise UnknownNameError(
            f"`{path}`: `{suffix}` is not a checkpoint suffix. Use .pt, .pth or .safetensors, "
            "a path without suffix for a DCP directory, or `--format pt|safetensors|dcp`.",
            name=suffix,
            known=list(CHECKPOINT_SUFFIXES),
        )
    return None


# -- backends -----------------------------------------------------------------------------------
# -- the %%enn_export body ------------------------------------------------------------------------
def parse_export_body(body: str) -> dict[str, Any]:
    """The YAML body of ``%%enn_export`` as a validated dict (absent keys are absent).

    Raises:
        SpecError: malformed YAML (with its line), a body that is not a mapping, a value of the wrong kind.
        UnknownNameError: a key that is not one of :data:`EXPORT_KEYS` (all of them are named).
    """
    import yaml

    if not body.strip():
        return {}
    try:
        data = safe_load(quote_typed_shapes(body))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if mark is not None:
            lines = body.splitlines()
            text = lines[mark.line].strip() if 0 <= mark.line < len(lines) else ""
            where = f"line {mark.line + 1}, column {mark.column + 1}" + (f" (`{text}`)" if text else "")
        else:
            where = "somewhere"
        raise SpecError(
            f"The `%%enn_export` body is not valid YAML at {where}: {problem}. "
            "Write one `key: value` per line, e.g. `backends: [onnx, pt2]`."
        ) from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise SpecError(
            f"The `%%enn_export` body must be `key: value` lines, got a YAML {type(data).__name__}. "
            f"Known keys: {', '.join(EXPORT_KEYS)}."
        )
    out: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key)
        if key not in EXPORT_KEYS:
            close = close_names(key, EXPORT_KEYS, n=1)
            hint = f" Did you mean `{close[0]}`?" if close else ""
            raise UnknownNameError(
                f"Unknown key `{key}` in the `%%enn_export` body.{hint} "
                f"Known keys: {', '.join(EXPORT_KEYS)}.",
                name=key,
                known=list(EXPORT_KEYS),
            )
        out[key] = _check_value(key, value)
    return out


def _check_value(key: str, value: Any) -> Any:
    bad = SpecError(f"`{key}: {value!r}` in the `%%enn_export` body: expected {EXPORT_KEYS[key]}.")
    if key in ("dynamic_batch", "verify", "isolate", "cache", "strict", "safe"):
        if not isinstance(value, bool):
            raise bad
        return value
    if key == "backends":
        if isinstance(value, str):
            return split_names(value)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return split_names(value)
        raise bad
    if key in ("out_dir", "stem"):
        if not isinstance(value, str) or not value.strip():
            raise bad
        return value
    if key == "workers":
        if not _positive_int(value):
            raise bad
        return value
    if key == "batch_range":
        return check_batch_range(value, "batch_range")
    if key == "example_inputs":
        if isinstance(value, str) and value.isidentifier():
            return value

        if isinstance(value, (list, Mapping)) and value:
            try:
                parse_many(value)
            except SpecError as exc:
                raise SpecError(f"`example_inputs: {value!r}` in the `%%enn_export` body: {exc}") from None
            return value if isinstance(value, list) else dict(value)
        raise bad
    if key == "tolerances":
        return check_tolerances(value)
    if key == "options":
        if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
            raise bad
        return {str(k): dict(v) for k, v in value.items()}
    if key == "metadata":
        if not isinstance(value, Mapping):
            raise bad
        return dict(value)
    if key == "quantize":
        if isinstance(value, Mapping):
            return {str(k): v for k, v in value.items()}  # each backend's modes are checked by the engine
        if not (isinstance(value, str) or isinstance(value, list) and all(isinstance(m, str) for m in value)):
            raise bad
        from enn_nb.engine.quantize.modes import parse_modes

        parse_modes(value, "quantize")  # an unknown mode: the engine's own error, with the closest name
        return value
    if key in ("calibration", "eval_data", "accuracy_metric"):
        if not isinstance(value, str) or not value.strip():
            raise bad
        return value
    if key == "accuracy_budget":
        from enn_nb.engine.quantize.modes import parse_budget

        parse_budget(value)
        return value
    return value  # pragma: no cover - every key is handled above


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_tolerances(value: Any) -> dict[str, dict[str, float]]:
    """The user's tolerances as JSON (``{"*" or backend: {"atol"?, "rtol"?}}``), checked by the engine's parser.

    Nothing is filled in: the engine keeps each backend's own bound for what is not given.
    """
    from enn_nb.engine.tolerance import parse_tolerances

    return parse_tolerances(value).to_dict()


def check_batch_range(value: Any, what: str = "batch_range") -> tuple[int, int, int]:
    """``(min, opt, max)``, checked by the engine's own rule (SpecError naming ``what``)."""
    from enn_nb.engine.settings import check_batch_range as check

    return check(value, what)


# -- from parsed options to enn_nb.export's arguments ------------------------------------------------
#: Keyword arguments of ``enn_nb.export`` whose value comes from the body, else from the settings.
_FROM_SETTINGS = ("dynamic_batch", "batch_range", "verify", "isolate", "cache")


def export_settings(
    body: Mapping[str, Any],
    settings: Mapping[str, Any],
    requested: list[str],
    *,
    out: str | None = None,
    provenance: Mapping[str, Any] | None = None,
    namespace: Mapping[str, Any] | None = None,
) -> ExportSettings:
    """The :class:`ExportSettings` of one ``%%enn_export``: the ``--out`` flag, then the body, then the
    ``EnnMagics`` settings, through the engine's one :meth:`ExportSettings.from_call`.

    Backends the user named must convert here (checked now, with the install line); ``all`` means what it
    means everywhere (every registered backend, the ones that cannot convert here reported, not failing).

    Args:
        body: the validated YAML body (:func:`parse_export_body`).
        settings: ``out_dir``, ``dynamic_batch``, ``batch_range``, ``verify``, ``isolate``, ``cache``
            and ``tolerances`` from the magics' configuration.
        requested: the backends asked for (``--backends``, else ``backends:``, else the default).
        out: the ``--out`` directory, if given.
        provenance: where the call came from.
        namespace: where ``calibration:``, ``eval_data:`` and ``accuracy_metric:`` variables are looked up.

    Raises:
        SpecError: no backend asked for, or a named one cannot run on this platform.
        MissingDependencyError: a named backend's package is missing.
    """
    from enn_nb.engine.registry import check_converts  # the engine loads on the first export, not at %load_ext
    from enn_nb.engine.settings import ExportSettings

    if not requested:
        raise SpecError(
            "No backend chosen: give `--backends onnx,pt2` (or `all`), a `backends:` list in the cell, "
            "or set `%config EnnMagics.default_backends = ['onnx']`."
        )
    given: dict[str, Any] = {key: body.get(key, settings[key]) for key in _FROM_SETTINGS}
    given["strict"] = body.get("strict", False)
    for key in ("stem", "metadata", "safe", "workers", "options"):
        if key in body:
            given[key] = body[key]  # the engine checks each option against the backends being exported
    tolerances = {**check_tolerances(settings.get("tolerances") or {}), **body.get("tolerances", {})}
    if tolerances:  # passed through as given: the engine fills in what is left out, per backend
        given["tolerances"] = tolerances
    given.update(quantize_arguments(body, namespace or {}))
    from enn_nb.storage import is_url

    out_dir = out or body.get("out_dir") or settings["out_dir"]  # a URL: staged, verified, uploaded by the engine
    out_dir = out_dir if is_url(out_dir) else Path(out_dir).expanduser()
    chosen = ExportSettings.from_call(requested, out_dir, provenance=provenance, **given)
    if chosen.named:
        for i, name in enumerate(chosen.names):
            check_converts(name, chosen.backend(i))
    return chosen


def quantize_arguments(body: Mapping[str, Any], namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The body's quantize keys as ``export`` arguments: ``calibration`` / ``eval_data`` name a variable of the
    notebook or a ``.safetensors`` path, ``accuracy_metric`` a variable holding a callable."""
    given = {key: body[key] for key in ("quantize", "accuracy_budget") if key in body}
    for key in ("calibration", "eval_data", "accuracy_metric"):
        if key in body:
            value = body[key]
            is_file = key != "accuracy_metric" and value.endswith(".safetensors")
            given[key] = Path(value).expanduser() if is_file else lookup(namespace, value, what=key)
    return given


#: Seed of the random example inputs built from an ``example_inputs: [shape]`` body key.
EXAMPLE_SEED = 0


def example_inputs(value: str | list[Any] | Mapping[str, Any], namespace: Mapping[str, Any],
                   spec: Any = None) -> tuple[Any, ...]:
    """Example inputs from a variable name (a tensor or a tuple of tensors), a shape or one shape per input.

    A shape of plain sizes (``[2, 32]``) gives seeded uniform [0, 1) values of the spec's feature dtype:
    valid for float features and for float columns that a model casts to embedding indices (they
    become 0). Shapes with symbolic dims (``[B, 24, 6]``) or per-input maps (``{values: [B, 24, 6],
    mask: bool[B, 24]}``) are drawn from that signature: normal floats, valid codes for integer inputs
    (the spec's ``categories`` when it declares the input), random masks.

    Raises:
        UnknownNameError: no such variable.
        SpecError: the variable holds something else than tensors, or the shapes are malformed.
    """
    import torch

    if isinstance(value, list) and all(_positive_int(d) for d in value):
        shape = check_example_shape(value, what="example_inputs")
        dtype = getattr(torch, getattr(spec, "feature_dtype", None) or "float32")
        generator = torch.Generator().manual_seed(EXAMPLE_SEED)
        return (torch.rand(*shape, generator=generator).to(dtype),)
    if isinstance(value, (list, Mapping)):
        return signature_inputs(value, spec)
    inputs = lookup(namespace, value, what="example_inputs")
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    if isinstance(inputs, (tuple, list)) and inputs and all(isinstance(t, torch.Tensor) for t in inputs):
        return tuple(inputs)
    raise SpecError(f"`example_inputs: {value}` is a {type(inputs).__name__}; expected a tensor or a tuple of tensors.")


def signature_inputs(value: list[Any] | Mapping[str, Any], spec: Any = None) -> tuple[Any, ...]:
    """Seeded inputs drawn from shapes written in a magic body; declared inputs lend their dtype and categories."""

    declared = {s.name: s for s in (getattr(spec, "inputs", None) or [])}
    single = list(declared)[:1] if len(declared) == 1 else []
    sigs = sig.parse_many(value, names=single)
    if isinstance(value, list) and single and declared[single[0]].dtype != "float32":
        sigs = [sig.TensorSig(sigs[0].name, declared[single[0]].dtype, sigs[0].shape)]
    sigs = [sig.TensorSig(s.name, s.dtype, s.shape, s.categories or getattr(declared.get(s.name), "categories", None))
            for s in sigs]
    return sig.draw(sigs, seed=EXAMPLE_SEED)  # capped like a plain shape (see draw)


def quote_typed_shapes(body: str) -> str:
    """Quote ``bool[B, 24]``-style values so YAML flow maps (``{mask: bool[B, 24]}``) parse them as text."""

    names = "|".join(sorted({*DTYPES, *DTYPE_ALIASES}, key=len, reverse=True))
    return re.sub(rf"(?<![\w\"'])((?:{names})\[[^\]\n]*\](?:\{{\d+\}})?)", r'"\1"', body)


def wizard_defaults(settings: Mapping[str, Any], source: Any = None, name: str = "") -> dict[str, Any]:
    """``enn_nb.wizard`` starting choices from the magics' settings and an optional model or checkpoint."""
    names = split_names(settings["default_backends"])
    if names in (["all"], ["available"]):  # the wizard offers the backends that convert here
        from enn_nb.engine.registry import backends

        names = [row.name for row in backends() if row.available]
    defaults: dict[str, Any] = {"out_dir": settings["out_dir"], "backends": names}
    for key in ("isolate", "verify", "cache", "dynamic_batch"):
        defaults[key] = settings[key]
    defaults["batch_range"] = tuple(settings["batch_range"])
    common = check_tolerances(settings.get("tolerances") or {}).get("*")
    if common:  # the wizard takes one (atol, rtol) for every backend
        defaults["tolerances"] = (common.get("atol"), common.get("rtol"))
    if isinstance(source, Path):
        defaults["checkpoint"] = str(source)
    elif source is not None:
        defaults["model"] = name
    return defaults


# -- errors at the magic boundary -----------------------------------------------------------------
def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is about the user's input or files (shown as one line).

    Everything else keeps its traceback: bugs, and a package that is installed but fails to import.
    """
    if isinstance(exc, BrokenDependencyError):
        return False
    if isinstance(exc, EnnError):
        return True
    return isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError))


def one_line(exc: BaseException) -> str:
    """The error as one line: its message with whitespace collapsed, plus the install line if missing."""

    text = escape(" ".join(str(exc).split())) or type(exc).__name__
    if isinstance(exc, OSError) and getattr(exc, "filename", None) and not isinstance(exc, EnnError):
        text = f"`{exc.filename}`: {exc.strerror or text}"
    if isinstance(exc, MissingDependencyError) and exc.install_line not in text:
        text = f"{text} Install it with: {exc.install_line}"
    return text
