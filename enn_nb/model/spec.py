"""ModelSpec: everything needed to rebuild a model, and the builder registry that rebuilds it."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from enn_nb._registry import Registry
from enn_nb.errors import InputMismatchError, SpecError

if TYPE_CHECKING:
    import torch

    from enn_nb.model.signature import TensorSig

SPEC_FIELDS = (
    "builder",
    "config",
    "in_dim",
    "out_shape",
    "tasks",
    "scaler",
    "embedding",
    "feature_dtype",
    "metadata",
    "inputs",
    "outputs",
    "output_structure",
)
#: Signature fields: written only when set, so specs without one keep their JSON (and content hash).
SIGNATURE_FIELDS = ("inputs", "outputs", "output_structure")

_builders: Registry[Callable[["ModelSpec"], "torch.nn.Module"]] = Registry(
    kind="builder",
    group="enn_nb.builders",
    how_to_register=(
        "Register one with `@enn_nb.register_builder(\"name\")` on a function `spec -> nn.Module`, "
        "or an entry point in the `enn_nb.builders` group; or pass `model=` to load into an instance."
    ),
)


def register_builder(name: str, *, replace: bool = False) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn(spec) -> nn.Module`` as the builder called ``name``.

    The model it returns must have the architecture the spec describes; its weights are then
    loaded from the checkpoint.
    """
    return _builders.decorator(name, replace=replace)


def builders() -> list[str]:
    """Names of the registered builders (entry points included)."""
    return sorted(_builders.names())


def jsonable(value: Any, *, where: str = "value") -> Any:
    """Return ``value`` as plain JSON types (tuples become lists, numpy/torch scalars become numbers).

    Raises:
        SpecError: the value holds something JSON cannot represent (names the path to it).
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SpecError(f"`{where}` is {value!r}; JSON metadata must hold finite numbers.")
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise SpecError(f"`{where}` has a non-string key {key!r}; JSON object keys must be strings.")
            out[key] = jsonable(item, where=f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [jsonable(item, where=f"{where}[{i}]") for i, item in enumerate(value)]
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays/scalars, torch tensors
        return jsonable(value.tolist(), where=where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value), where=where)
    raise SpecError(
        f"`{where}` is a {type(value).__name__} ({value!r:.80}); only JSON values "
        "(dict, list, str, int, float, bool, None) can be stored. Convert it first."
    )


@dataclasses.dataclass
class ModelSpec:
    """What a checkpoint or artifact says about the model it holds.

    Every field may be absent (``None``); a plain ``nn.Module`` gets one passed explicitly, a model
    following the ENN contract is read by :meth:`from_model`.

    Attributes:
        builder: name in the builder registry that rebuilds the architecture from this spec.
        config: the model's config as a JSON object.
        in_dim: number of raw input features (input is ``[B, in_dim]``).
        out_shape: per-sample output shape (output is ``[B, *out_shape]``).
        tasks: JSON descriptions of the task heads.
        scaler: normalisation/calibration statistics as JSON numbers (exact values are in the weights).
        embedding: the embedding spec (categorical columns, cardinalities, dims).
        feature_dtype: dtype of the raw input features, e.g. ``"float32"``.
        metadata: free-form user metadata (JSON).
        inputs: the forward's inputs as :class:`~enn_nb.model.signature.TensorSig` rows (name, dtype, shape with
            symbolic dims such as ``batch``/``time``); ``None`` means the ``[B, in_dim]`` shorthand.
        outputs: the flattened outputs, named after dict keys (``output_0``... for tuples).
        output_structure: ``"tensor"``, ``"tuple"`` or ``"dict"``: what the forward returns.
    """

    builder: str | None = None
    config: dict[str, Any] | None = None
    in_dim: int | None = None
    out_shape: tuple[int, ...] | None = None
    tasks: list[dict[str, Any]] | None = None
    scaler: dict[str, Any] | None = None
    embedding: dict[str, Any] | None = None
    feature_dtype: str | None = "float32"
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    inputs: list[TensorSig] | None = None
    outputs: list[TensorSig] | None = None
    output_structure: str | None = None

    def __post_init__(self) -> None:
        from enn_nb.model.signature import OUTPUT_STRUCTURES, parse_many

        if self.inputs is not None:
            self.inputs = parse_many(self.inputs)
        if self.outputs is not None:
            self.outputs = parse_many(self.outputs, names=("prediction",))
        if self.output_structure is not None and self.output_structure not in OUTPUT_STRUCTURES:
            raise SpecError(
                f"`ModelSpec.output_structure` is {self.output_structure!r}; one of {', '.join(OUTPUT_STRUCTURES)}."
            )
        if self.in_dim is not None:
            if isinstance(self.in_dim, bool) or not isinstance(self.in_dim, int) or self.in_dim <= 0:
                raise SpecError(f"`ModelSpec.in_dim` must be a positive int, got {self.in_dim!r}.")
        if self.out_shape is not None:
            shape = tuple(self.out_shape)
            if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
                raise SpecError(
                    f"`ModelSpec.out_shape` must be a tuple of positive ints, got {self.out_shape!r}."
                )
            self.out_shape = shape
        if self.metadata is None:
            self.metadata = {}

    # -- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON types (validated: raises SpecError on non-JSON values)."""
        out = {}
        for name in SPEC_FIELDS:
            value = getattr(self, name)
            if name in SIGNATURE_FIELDS:
                if value is None:
                    continue
                if name != "output_structure":
                    value = [sig.to_dict() for sig in value]
            out[name] = jsonable(value, where=f"ModelSpec.{name}")
        return out

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Rebuild a spec from :meth:`to_dict` output; unknown keys are an error naming them."""
        unknown = sorted(set(data) - set(SPEC_FIELDS))
        if unknown:
            raise SpecError(
                f"`ModelSpec` has no field(s) {unknown}; known fields: {', '.join(SPEC_FIELDS)}."
            )
        kwargs = dict(data)
        if kwargs.get("out_shape") is not None:
            kwargs["out_shape"] = tuple(kwargs["out_shape"])
        if kwargs.get("metadata") is None:
            kwargs["metadata"] = {}
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> ModelSpec:
        return dataclasses.replace(self, **changes)

    # -- from a model ---------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: Any, example_inputs: Any = None, **overrides: Any) -> ModelSpec:
        """Read a spec from a model that follows the ENN contract; absent parts stay ``None``.

        The I/O signature is the model's declared ``input_signature`` / ``output_signature`` (lists of
        TensorSig, dicts or ``"name:dtype[dims]"`` texts), else it is inferred from ``example_inputs``
        (a tensor or a tuple): the forward's parameter names become the input names, dim 0 is
        ``batch``, integer inputs record their category count, and one eager call gives the outputs
        (dict keys become their names).

        The contract (all optional) — the reference model implements every part:

        - ``model.enn_builder`` (str): builder registry name.
        - ``model.config``: a dataclass, an object with ``to_dict()``, or a dict.
        - ``model.in_dim`` (int), ``model.out_shape`` (tuple of ints).
        - ``model.task_specs()`` -> list of JSON dicts.
        - ``model.scaler_state()`` -> JSON dict of statistics.
        - ``model.embedding_spec()`` -> JSON dict.
        - ``model.feature_dtype`` (str or torch.dtype).

        ``overrides`` replace what was read (e.g. ``metadata=...``).
        """
        reader = spec_reader_for(model)  # a library's adapter (ENN-PyTorch) fills what its models lack
        adapted = reader(model) if reader is not None else {}
        spec = cls(
            builder=getattr(model, "enn_builder", None),
            config=_config_dict(getattr(model, "config", None)),
            in_dim=getattr(model, "in_dim", None),
            out_shape=_maybe_tuple(getattr(model, "out_shape", None)),
            tasks=_call(model, "task_specs"),
            scaler=_call(model, "scaler_state"),
            embedding=_call(model, "embedding_spec"),
            feature_dtype=_dtype_name(getattr(model, "feature_dtype", "float32")),
        )
        if adapted:
            spec = spec.replace(**adapted)
        spec = _with_signature(spec, model, example_inputs)
        return spec.replace(**overrides) if overrides else spec

    @property
    def has_signature(self) -> bool:
        """Whether the spec declares its inputs (else it is the ``[B, in_dim]`` shorthand, if any)."""
        return self.inputs is not None

    def input_signature(self) -> list[TensorSig] | None:
        """The inputs: declared ones, else ``features: feature_dtype[batch, in_dim]`` from the shorthand."""
        from enn_nb.model.signature import BATCH, TensorSig

        if self.inputs is not None:
            return list(self.inputs)
        if self.in_dim is not None:
            return [TensorSig("features", self.feature_dtype or "float32", (BATCH, self.in_dim))]
        return None

    # -- rebuilding and checking -----------------------------------------------------------------
    def check_input(self, x: Any, *, name: str = "features") -> None:
        """Check a ``[B, in_dim]`` feature tensor against this spec.

        Raises:
            InputMismatchError: wrong rank, feature count or dtype (names expected and received).
        """
        check_features(x, in_dim=self.in_dim, feature_dtype=self.feature_dtype, name=name)

    def check_inputs(self, tensors: Any, *, where: str = "example_inputs") -> dict[str, int]:
        """Check inputs against the signature (or the ``[B, in_dim]`` shorthand); returns the symbolic sizes.

        Raises:
            InputMismatchError: names the input, the expected and the received signature.
        """
        from enn_nb.model.signature import check_inputs

        sigs = self.input_signature()
        items = tensors if isinstance(tensors, (tuple, list)) else (tensors,)
        return check_inputs(sigs, items, where=where) if sigs is not None else {}


def check_features(x: Any, *, in_dim: int | None, feature_dtype: str | None, name: str = "features") -> None:
    """Raise InputMismatchError unless ``x`` is a ``[B, in_dim]`` tensor of ``feature_dtype``."""

    shape = tuple(getattr(x, "shape", ()))
    expected_shape = ("B", in_dim) if in_dim is not None else ("B", "in_dim")
    if not hasattr(x, "shape") or len(shape) != 2 or (in_dim is not None and shape[1] != in_dim):
        raise InputMismatchError(
            f"`{name}` has shape {list(shape) if hasattr(x, 'shape') else type(x).__name__}; "
            f"expected [B, {in_dim}] (batch, in_dim). Pass a 2-D tensor with {in_dim} feature columns.",
            expected=expected_shape,
            received=shape,
        )
    dtype = _dtype_name(getattr(x, "dtype", None))
    if feature_dtype is not None and dtype != feature_dtype:
        raise InputMismatchError(
            f"`{name}` has dtype {dtype}; expected {feature_dtype}. Convert it with `.to(torch.{feature_dtype})`.",
            expected=feature_dtype,
            received=dtype,
        )


def build(spec: ModelSpec, *, shapes: Mapping[str, tuple[int, ...]] | None = None) -> torch.nn.Module:
    """Rebuild the (untrained) architecture a spec describes, through its registered builder.

    Args:
        spec: the spec; ``spec.builder`` names the builder.
        shapes: the checkpoint's tensor table (name -> shape), passed to builders that take a
            ``shapes`` keyword so they can size state that fitting resizes (``load`` passes it).

    Raises:
        SpecError: the spec names no builder.
        UnknownNameError: the builder is not registered (lists the known ones and how to register).
    """
    if not spec.builder:
        raise SpecError(
            "This `ModelSpec` names no builder, so the model cannot be rebuilt from it. "
            "Pass `model=` (an instance to load into; `--model pkg.module:factory` on the CLI) or set `builder` "
            "to a registered name."
        )
    builder = _builders.get(spec.builder)
    if shapes is not None and _takes_shapes(builder):
        return builder(spec, shapes=dict(shapes))
    return builder(spec)


def _takes_shapes(fn: Callable[..., Any]) -> bool:
    import inspect

    try:
        return "shapes" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _with_signature(spec: ModelSpec, model: Any, example_inputs: Any) -> ModelSpec:
    """``spec`` with the model's declared signature, else one inferred from ``example_inputs``."""
    from enn_nb.model import signature as sig

    declared_in = getattr(model, "input_signature", None)
    declared_out = getattr(model, "output_signature", None)
    changes: dict[str, Any] = {}
    if declared_in is not None and not callable(declared_in):
        changes["inputs"] = sig.parse_many(declared_in)
    if declared_out is not None and not callable(declared_out):
        changes["outputs"] = sig.parse_many(declared_out, names=("prediction",))
        changes["output_structure"] = getattr(model, "output_structure", None) or (
            "tensor" if len(changes["outputs"]) == 1 else "tuple")
    if example_inputs is not None:
        import torch

        tensors = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        forward = sig.forward_of(model)
        if "inputs" not in changes:
            changes["inputs"] = sig.infer_inputs(forward, tensors)
        if "outputs" not in changes:
            with sig.eval_only(model), torch.no_grad():
                out = forward(*tensors)
            changes["outputs"], changes["output_structure"] = sig.infer_outputs(out)
    return spec.replace(**changes) if changes else spec


def _call(model: Any, name: str) -> Any:
    fn = getattr(model, name, None)
    return fn() if callable(fn) else None


def _maybe_tuple(value: Any) -> tuple[int, ...] | None:
    return tuple(int(v) for v in value) if value is not None else None


def _config_dict(config: Any) -> dict[str, Any] | None:
    if config is None:
        return None
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    raise SpecError(
        f"`model.config` is a {type(config).__name__}; expected a dataclass, a dict or an object with "
        "`to_dict()`. Pass `spec=ModelSpec(config=...)` explicitly."
    )


def _dtype_name(dtype: Any) -> str | None:
    if dtype is None:
        return None
    text = str(dtype)
    return text.removeprefix("torch.")


# -- spec readers: spec fields for models of libraries that do not follow the contract themselves -----------
#: A reader is ``fn(model) -> dict`` of ModelSpec fields; looked up by the top-level package of the model's
#: class, so that this module never imports an adapter (adapters sit above the core and import it).
SpecReader = Callable[[Any], dict[str, Any]]

_spec_readers: Registry[SpecReader] = Registry(
    kind="spec reader",
    group="enn_nb.spec_readers",
    how_to_register=(
        "Register one with `enn_nb.model.spec.register_spec_reader(\"package\", fn)` (the top-level package of "
        "the model classes it reads) or an entry point in the `enn_nb.spec_readers` group."
    ),
)


def register_spec_reader(package: str, reader: SpecReader | str, *, replace: bool = False) -> None:
    """Use ``reader`` to fill the spec of models whose class comes from the top-level package ``package``."""
    _spec_readers.register(package, reader, replace=replace)


def spec_reader_for(model: Any) -> SpecReader | None:
    """The spec reader for ``model``'s library, or None (imports nothing for other models)."""
    package = type(model).__module__.partition(".")[0]
    return _spec_readers.get(package) if package in _spec_readers else None


# Built-ins as lazy references: registering them imports nothing and reads no entry points.
_builders.register("enn_nb.reference", "enn_nb.reference:build_reference")
_spec_readers.register("enn_torch", "enn_nb.adapters.enn_torch:spec_fields")
