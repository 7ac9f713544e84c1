"""A model's I/O signature: named inputs and outputs with dtypes and symbolic dims (``batch``, ``time``...).

``ModelSpec.inputs`` / ``ModelSpec.outputs`` hold :class:`TensorSig` rows. A shape entry is an int
(static), a name (symbolic: ``"batch"``, ``"time"``) or a :class:`Dim` (a name with bounds).
Text forms, accepted wherever a user types a signature (CLI ``--input``, magic bodies, wizard)::

    values:float32[batch, time, 6]      mask:bool[B, 24]      ids:int64[B, 16]{1000}

``B``/``N`` mean ``batch``, ``T`` means ``time``; ``{1000}`` says an integer input holds category codes
in ``[0, 1000)`` (default example inputs draw valid codes from it). Importing this module imports no torch.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from enn_nb._safeio import check_example_shape
from enn_nb.errors import InputMismatchError, SpecError

if TYPE_CHECKING:
    import torch

BATCH = "batch"
DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")
#: Short names users type for dtypes and dims.
DTYPE_ALIASES = {"float": "float32", "double": "float64", "half": "float16", "long": "int64", "int": "int64"}
DIM_ALIASES = {"B": BATCH, "N": BATCH, "T": "time"}
#: Size a symbolic dim other than ``batch`` gets in drawn example inputs (within its bounds).
EXAMPLE_DIM = 8
#: Batch of drawn capture inputs: 0 and 1 would make torch.export specialise the batch dimension.
EXAMPLE_BATCH = 2
#: Codes drawn for an integer input that declares no ``categories``.
DEFAULT_CATEGORIES = 2
OUTPUT_STRUCTURES = ("tensor", "tuple", "dict")


@dataclasses.dataclass(frozen=True)
class Dim:
    """A symbolic dimension with optional bounds (``min``/``max`` inclusive)."""

    name: str
    min: int | None = None
    max: int | None = None

    def to_json(self) -> Any:
        if self.min is None and self.max is None:
            return self.name
        return {"name": self.name, "min": self.min, "max": self.max}

    def __str__(self) -> str:
        if self.min is None and self.max is None:
            return self.name
        return f"{self.name}({self.min if self.min is not None else ''}..{self.max if self.max is not None else ''})"


@dataclasses.dataclass(frozen=True)
class TensorSig:
    """One named input or output: dtype and shape (ints, symbolic names or :class:`Dim`).

    Attributes:
        categories: for integer inputs holding category codes, their count (codes are ``0..categories-1``).
    """

    name: str
    dtype: str = "float32"
    shape: tuple[Any, ...] = (BATCH,)
    categories: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"A signature entry needs a name, got {self.name!r}.")
        object.__setattr__(self, "dtype", normalise_dtype(self.dtype, where=f"`{self.name}`"))
        object.__setattr__(self, "shape", tuple(_dim(d, where=f"`{self.name}`") for d in self.shape))
        if self.categories is not None and (not isinstance(self.categories, int) or self.categories < 1):
            raise SpecError(f"`{self.name}` categories must be a positive int, got {self.categories!r}.")

    @property
    def symbols(self) -> list[str]:
        return [dim_name(d) for d in self.shape if not isinstance(d, int)]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "dtype": self.dtype,
            "shape": [d if isinstance(d, int) else (d.to_json() if isinstance(d, Dim) else d) for d in self.shape],
        }
        if self.categories is not None:
            out["categories"] = self.categories
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSig:
        if isinstance(data, TensorSig):
            return data
        if isinstance(data, str):
            return parse(data)
        unknown = sorted(set(data) - {"name", "dtype", "shape", "categories"})
        if unknown:
            raise SpecError(f"A signature entry has unknown key(s) {unknown}; known: name, dtype, shape, categories.")
        return cls(str(data["name"]), data.get("dtype", "float32"), tuple(data.get("shape", (BATCH,))),
                   data.get("categories"))

    def text(self) -> str:
        """``name: dtype[dims]`` as users type it."""
        cats = f"{{{self.categories}}}" if self.categories else ""
        return f"{self.name}: {self.dtype}[{', '.join(str(d) for d in self.shape)}]{cats}"


# -- parsing ---------------------------------------------------------------------------------------------------
_TEXT = re.compile(r"^\s*(?:(?P<name>[A-Za-z_][\w.]*)\s*:\s*)?(?P<dtype>[A-Za-z]\w*)?\s*\[(?P<dims>[^\]]*)\]\s*"
                   r"(?:\{(?P<cats>\d+)\})?\s*$")
_DIM_TEXT = re.compile(r"^(?P<name>[A-Za-z_]\w*)\s*(?:\((?P<lo>\d*)\s*\.\.\s*(?P<hi>\d*)\))?$")


def parse(text: str, *, name: str | None = None) -> TensorSig:
    """``"name:dtype[d0, d1]{categories}"`` (name and dtype optional) -> TensorSig.

    Raises:
        SpecError: the text does not have that form (shows the form and an example).
    """
    match = _TEXT.match(str(text))
    if not match or (match["name"] is None and name is None):
        raise SpecError(
            f"`{text}` is not a signature entry; write `name:dtype[dims]`, e.g. `values:float32[batch, 24, 6]` "
            "or `mask:bool[B, 24]` (B = batch, T = time; `ids:int64[B, 16]{1000}` for 1000 category codes)."
        )
    dims = [d.strip() for d in match["dims"].split(",") if d.strip()]
    return TensorSig(match["name"] or str(name), match["dtype"] or "float32", tuple(parse_dim(d) for d in dims),
                     int(match["cats"]) if match["cats"] else None)


def parse_dim(value: Any) -> Any:
    """An int, a symbolic name (``B`` -> ``batch``), ``time(2..512)`` -> ``Dim("time", 2, 512)``."""
    if isinstance(value, (int, Dim)) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    match = _DIM_TEXT.match(text)
    if not match:
        raise SpecError(f"Dimension `{text}` is neither a size nor a name; use e.g. 24, `batch`, `time(2..512)`.")
    dim_label = DIM_ALIASES.get(match["name"], match["name"])
    if match["lo"] is None:
        return dim_label
    return Dim(dim_label, int(match["lo"]) if match["lo"] else None, int(match["hi"]) if match["hi"] else None)


def parse_many(value: Any, *, names: Sequence[str] = ()) -> list[TensorSig]:
    """Signatures from what users write: a list of texts/dicts, a ``{name: [dims] | "dtype[dims]"}`` map,
    or one shape list (then named after ``names[0]`` or ``features``)."""
    if isinstance(value, Mapping):
        out = []
        for key, item in value.items():
            if isinstance(item, (list, tuple)):
                out.append(TensorSig(str(key), "float32", tuple(parse_dim(d) for d in item)))
            elif isinstance(item, Mapping):
                out.append(TensorSig.from_dict({"name": str(key), **item}))
            else:
                out.append(parse(f"{key}:{item}" if not str(item).lstrip().startswith("[") else f"{key}:float32{item}"))
        return out
    if isinstance(value, (list, tuple)) and value and all(isinstance(d, (int, str)) and not _looks_like_entry(d)
                                                         for d in value):
        return [TensorSig(names[0] if names else "features", "float32", tuple(parse_dim(d) for d in value))]
    if isinstance(value, (list, tuple)):
        return [TensorSig.from_dict(item) for item in value]
    raise SpecError(f"{value!r} is not a signature; give entries like `values:float32[B, 24, 6]`.")


def _looks_like_entry(value: Any) -> bool:
    return isinstance(value, str) and "[" in value


def normalise_dtype(value: Any, *, where: str = "dtype") -> str:
    text = str(getattr(value, "name", None) if not isinstance(value, str) and hasattr(value, "name") else value)
    text = text.removeprefix("torch.")
    text = DTYPE_ALIASES.get(text, text)
    if text not in DTYPES:
        raise SpecError(f"{where} has dtype {value!r}; known dtypes: {', '.join(DTYPES)}.")
    return text


def _dim(value: Any, *, where: str) -> Any:
    if isinstance(value, bool):
        raise SpecError(f"{where} has a boolean dimension {value!r}.")
    if isinstance(value, int):
        if value < 0:
            raise SpecError(f"{where} has a negative dimension {value}.")
        return value
    if isinstance(value, Mapping):
        return Dim(str(value["name"]), value.get("min"), value.get("max"))
    if isinstance(value, (str, Dim)):
        return parse_dim(value)
    raise SpecError(f"{where} has dimension {value!r}; use an int, a name such as `batch`, or a Dim.")


def dim_name(dim: Any) -> str:
    return dim.name if isinstance(dim, Dim) else str(dim)


def describe(sigs: Sequence[TensorSig]) -> str:
    """``(values: float32[batch, 24, 6], mask: bool[batch, 24])`` for messages."""
    return "(" + ", ".join(s.text() for s in sigs) + ")"


def received_text(tensors: Sequence[Any], names: Sequence[str] = ()) -> str:
    parts = []
    for i, t in enumerate(tensors):
        label = names[i] if i < len(names) else f"input_{i}"
        if hasattr(t, "shape") and hasattr(t, "dtype"):
            parts.append(f"{label}: {normalise_dtype_safe(t.dtype)}{list(t.shape)}")
        else:
            parts.append(f"{label}: {type(t).__name__}")
    return "(" + ", ".join(parts) + ")"


def normalise_dtype_safe(dtype: Any) -> str:
    try:
        return normalise_dtype(dtype)
    except SpecError:
        return str(dtype).removeprefix("torch.")


# -- checking ------------------------------------------------------------------------------------------------
def check_inputs(sigs: Sequence[TensorSig], tensors: Sequence[Any], *, where: str = "example_inputs") -> dict[str, int]:
    """Check tensors against the signature; returns the sizes bound to each symbolic dim.

    Raises:
        InputMismatchError: wrong count, rank, static size, dtype, or one symbol bound to two sizes;
            the message names the input and shows the expected and the received signature.
    """
    expected, received = describe(sigs), received_text(tensors, [s.name for s in sigs])

    def fail(problem: str) -> InputMismatchError:
        return InputMismatchError(
            f"`{where}` does not match the model's signature: {problem}. Expected {expected}, received {received}.",
            expected=expected,
            received=received,
        )

    if len(tensors) != len(sigs):
        raise fail(f"{len(tensors)} input(s) given, the model takes {len(sigs)}")
    bound: dict[str, int] = {}
    for sig, tensor in zip(sigs, tensors):
        shape = tuple(getattr(tensor, "shape", ()))
        if not hasattr(tensor, "shape"):
            raise fail(f"`{sig.name}` is a {type(tensor).__name__}, not a tensor")
        if len(shape) != len(sig.shape):
            raise fail(f"`{sig.name}` has {len(shape)} dims {list(shape)}, expected {len(sig.shape)}")
        for axis, (want, got) in enumerate(zip(sig.shape, shape)):
            if isinstance(want, int):
                if want != got:
                    raise fail(f"`{sig.name}` dim {axis} is {got}, expected {want}")
                continue
            label = dim_name(want)
            if isinstance(want, Dim) and ((want.min is not None and got < want.min) or (want.max is not None and got > want.max)):
                raise fail(f"`{sig.name}` dim {axis} (`{label}`) is {got}, outside {want}")
            if bound.setdefault(label, int(got)) != int(got):
                raise fail(f"`{sig.name}` dim {axis} (`{label}`) is {got}, but `{label}` is {bound[label]} elsewhere")
        dtype = normalise_dtype_safe(getattr(tensor, "dtype", None))
        if dtype != sig.dtype:
            raise fail(f"`{sig.name}` has dtype {dtype}, expected {sig.dtype} (convert it with `.to(torch.{sig.dtype})`)")
    return bound


# -- inference -----------------------------------------------------------------------------------------------
def forward_of(module: Any) -> Callable[..., Any]:
    """The callable whose signature the inputs bind to (``forward_export`` wrappers included)."""
    inner = getattr(module, "model", None)
    if type(module).__name__ == "ForwardExport" and inner is not None:
        return inner.forward_export
    if callable(getattr(module, "forward_export", None)):
        return module.forward_export
    return getattr(module, "forward", module)


@contextmanager
def eval_only(model: Any):  # type: ignore[no-untyped-def]
    """Eval mode (dropout off) for the reference run, fast paths untouched; restores each flag."""
    modules = [m for m in model.modules() if m.training] if hasattr(model, "modules") else []
    for m in modules:
        m.training = False
    try:
        yield
    finally:
        for m in modules:
            m.training = True


def input_names(forward: Callable[..., Any], count: int) -> list[str]:
    """Names of ``count`` positional inputs from the forward's parameters (``*args`` -> ``args_0``...)."""
    try:
        params = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    names: list[str] = []
    for param in params:
        if len(names) >= count:
            break
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            names.append(param.name)
        elif param.kind == param.VAR_POSITIONAL:
            names += [f"{param.name}_{i}" for i in range(count - len(names))]
    names += [f"input_{i}" for i in range(len(names), count)]
    return names


def infer_inputs(forward: Callable[..., Any], tensors: Sequence[Any]) -> list[TensorSig]:
    """Signature of example tensors: names from the forward, dim 0 ``batch``, other dims static;
    integer inputs record ``categories`` = max code + 1."""
    out = []
    for name, tensor in zip(input_names(forward, len(tensors)), tensors):
        dtype = normalise_dtype(tensor.dtype, where=f"`{name}`")
        shape = tuple([BATCH, *(int(d) for d in tensor.shape[1:])]) if tensor.dim() >= 1 else ()
        cats = None
        if dtype.startswith(("int", "uint")) and tensor.numel():
            cats = inferred_categories(tensor)
        out.append(TensorSig(name, dtype, shape, cats))
    return out


#: A last axis this short on a code tensor of rank >= 3 holds several code columns (hour, weekday...).
CODE_COLUMNS_MAX = 8


def inferred_categories(tensor: Any) -> int:
    """Category count inferred from example codes: the largest code + 1, or, for a tensor whose short last
    axis holds several code columns (``calendar [B, T, 2]``: hour, weekday), the smallest column's, so
    codes drawn below it are valid in every column."""
    if tensor.dim() >= 3 and tensor.shape[-1] <= CODE_COLUMNS_MAX:
        per_column = tensor.reshape(-1, tensor.shape[-1]).max(0).values
        return max(int(per_column.min()) + 1, 1)
    return max(int(tensor.max()) + 1, 1)


def flatten_outputs(out: Any) -> tuple[list[Any], list[str], str]:
    """``(leaves, names, structure)`` of a model's output: dict keys (``a.b`` when nested) name the
    leaves, tuples give ``output_0``...; a single tensor is ``prediction``."""
    from torch.utils._pytree import keystr, tree_flatten_with_path

    if not isinstance(out, (tuple, list, Mapping)):
        return [out], ["prediction"], "tensor"
    pairs, _ = tree_flatten_with_path(out)
    structure = "dict" if isinstance(out, Mapping) else "tuple"
    names = []
    for path, _leaf in pairs:
        text = keystr(path)
        parts = re.findall(r"\['([^']*)'\]|\[(\d+)\]|\.(\w+)", text)
        label = ".".join(a or (f"output_{b}" if structure == "tuple" and len(path) == 1 else b) or c for a, b, c in parts)
        names.append(label or f"output_{len(names)}")
    return [leaf for _, leaf in pairs], names, structure


def infer_outputs(out: Any) -> tuple[list[TensorSig], str]:
    leaves, names, structure = flatten_outputs(out)
    sigs = []
    for name, leaf in zip(names, leaves):
        shape = tuple([BATCH, *(int(d) for d in leaf.shape[1:])]) if getattr(leaf, "dim", lambda: 0)() >= 1 else ()
        sigs.append(TensorSig(name, normalise_dtype_safe(leaf.dtype), shape))
    return sigs, structure


# -- drawing inputs ----------------------------------------------------------------------------------------------
def dim_sizes(sigs: Iterable[TensorSig], *, batch: int = EXAMPLE_BATCH, given: Mapping[str, int] | None = None) -> dict[str, int]:
    """A size for each symbolic dim: ``batch`` -> ``batch``, others ``EXAMPLE_DIM`` clamped into bounds."""
    sizes = {BATCH: batch, **dict(given or {})}
    for sig in sigs:
        for d in sig.shape:
            if isinstance(d, int) or dim_name(d) in sizes:
                continue
            size = EXAMPLE_DIM
            if isinstance(d, Dim):
                size = max(size, d.min or 1)
                size = min(size, d.max) if d.max is not None else size
            sizes[dim_name(d)] = size
    return sizes


def draw(sigs: Sequence[TensorSig], *, batch: int = EXAMPLE_BATCH, seed: int = 0,
         sizes: Mapping[str, int] | None = None, what: str = "example_inputs") -> tuple[torch.Tensor, ...]:
    """Seeded inputs following the signature: normal floats, valid category codes, random masks.

    Raises:
        SpecError: an input would hold more values than enn_nb draws (``_safeio.MAX_EXAMPLE_ELEMENTS``):
            a typo or a hostile spec must not allocate gigabytes, whichever surface drew it.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    dims = dim_sizes(sigs, batch=batch, given={k: v for k, v in (sizes or {}).items() if k != BATCH})
    shapes = [tuple(d if isinstance(d, int) else dims[dim_name(d)] for d in sig.shape) for sig in sigs]
    for sig, shape in zip(sigs, shapes):
        if all(shape):  # an empty dimension draws nothing: only sizes need the cap
            check_example_shape(list(shape) or [1], what=f"{what}.{sig.name}")
    out = []
    for sig, shape in zip(sigs, shapes):
        dtype = getattr(torch, sig.dtype)
        if sig.dtype == "bool":
            t = torch.rand(shape, generator=gen) > 0.3
        elif dtype.is_floating_point:
            t = torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)
        else:
            high = sig.categories or DEFAULT_CATEGORIES
            if sig.dtype == "uint8":
                high = min(high, 256)
            t = torch.randint(0, high, shape, generator=gen).to(dtype)
        out.append(t)
    return tuple(out)


# -- torch.export ----------------------------------------------------------------------------------------------
def dynamic_shapes(forward: Callable[..., Any], sigs: Sequence[TensorSig], tensors: Sequence[Any], *,
                   dynamic: Iterable[str] = (BATCH,), batch_bounds: tuple[int, int | None] | None = None) -> Any:
    """``dynamic_shapes`` for ``torch.export.export`` shaped like the forward's real signature.

    Positional parameters get one entry each, ``*args`` one entry holding a tuple (torch.export
    binds dynamic_shapes to the signature, not to the flat tensor list). One ``torch.export.Dim`` per
    symbolic name in ``dynamic`` is shared by every input that uses it.
    """
    import torch

    wanted = set(dynamic)
    dims: dict[str, Any] = {}

    def dim_for(d: Any) -> Any:
        label = dim_name(d)
        if label not in dims:
            lo, hi = (d.min, d.max) if isinstance(d, Dim) else (None, None)
            if label == BATCH and batch_bounds is not None:
                lo, hi = batch_bounds
            dims[label] = torch.export.Dim(label, min=max(1, lo or 1), **({"max": hi} if hi is not None else {}))
        return dims[label]

    per_input = []
    for sig, tensor in zip(sigs, tensors):
        spec = {axis: dim_for(d) for axis, d in enumerate(sig.shape)
                if not isinstance(d, int) and dim_name(d) in wanted and axis < tensor.dim()}
        per_input.append(spec or None)
    try:
        params = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):
        return tuple(per_input)
    out: dict[str, Any] = {}
    i = 0
    for param in params:
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD) and i < len(per_input):
            out[param.name] = per_input[i]
            i += 1
        elif param.kind == param.VAR_POSITIONAL:
            out[param.name] = tuple(per_input[i:])
            i = len(per_input)
    if i < len(per_input):  # a forward whose signature cannot be read as positional: the flat form
        return tuple(per_input)
    return out


def symbolic_names(sigs: Sequence[TensorSig]) -> list[str]:
    seen: list[str] = []
    for sig in sigs:
        for label in sig.symbols:
            if label not in seen:
                seen.append(label)
    return seen
