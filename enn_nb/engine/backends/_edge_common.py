"""Helpers shared by the edge and vendor backends: program I/O, float64 demotion, quiet converters."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from enn_nb.engine.backends.base import ExportJob, TensorInfo
from enn_nb.errors import BackendError

#: Name under which the essentials are embedded where a format has a free-form slot.
ESSENTIALS_KEY = "enn_nb_essentials"

BATCH = "batch"


def dtype_name(dtype: Any) -> str:
    """``torch.float32`` / ``np.float32`` / ``"float32"`` -> ``"float32"``."""
    text = str(getattr(dtype, "name", None) or dtype)
    return text.removeprefix("torch.").removeprefix("<class 'numpy.").removesuffix("'>")


def program_io(ep: Any, job: ExportJob, *, dynamic: bool) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Inputs and outputs of an ExportedProgram, named as the job names them; dim 0 is ``"batch"``
    when ``dynamic`` (any other symbolic dim keeps its symbol's name)."""
    from torch.export.graph_signature import InputKind

    def shape(val: Any, first_is_batch: bool) -> list[int | str]:
        dims: list[int | str] = []
        for i, d in enumerate(val.shape):
            if isinstance(d, int):
                dims.append(int(d))
            elif i == 0 and first_is_batch:
                dims.append(BATCH)
            else:
                dims.append(str(d))
        return dims

    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    user_inputs = [s.arg.name for s in ep.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    inputs = []
    for i, name in enumerate(user_inputs):
        val = placeholders[name].meta["val"]
        label = job.input_names[i] if i < len(job.input_names) else name
        inputs.append(TensorInfo(label, shape(val, dynamic), dtype_name(val.dtype)))
    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    user_outputs = [s.arg.name for s in ep.graph_signature.output_specs if s.kind.name == "USER_OUTPUT"]
    by_name = {getattr(a, "name", None): a for a in out_node.args[0]}
    outputs = []
    for i, name in enumerate(user_outputs):
        val = by_name[name].meta["val"]
        label = job.output_names[i] if i < len(job.output_names) else name
        outputs.append(TensorInfo(label, shape(val, dynamic), dtype_name(val.dtype)))
    return inputs, outputs


def batch_bounds(ep: Any) -> tuple[int, int | None] | None:
    """``(min, max)`` of dim 0 of the program's first user input (max None when unbounded), or None
    when that dim is static."""
    from torch.export.graph_signature import InputKind

    spec = next((s for s in ep.graph_signature.input_specs if s.kind == InputKind.USER_INPUT), None)
    if spec is None:
        return None
    node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == spec.arg.name)
    dim = node.meta["val"].shape[0]
    if isinstance(dim, int):
        return None
    expr = getattr(getattr(dim, "node", None), "expr", None)
    bounds = ep.range_constraints.get(expr)
    if bounds is None:
        return (1, None)

    def as_int(v: Any) -> int | None:
        try:
            return int(v)
        except Exception:  # int_oo / sympy infinity: unbounded
            return None

    return (as_int(bounds.lower) or 1, as_int(bounds.upper))


def retrace(ep: Any, job: ExportJob, bounds: tuple[int, int] | None) -> Any:
    """The shared program traced again from its own graph (``ep.module()``, not the user's model),
    with the batch bounded to ``bounds`` or static when ``bounds`` is None."""
    import torch

    shapes = None
    if bounds is not None:
        batch = torch.export.Dim(BATCH, min=max(1, bounds[0]), max=bounds[1])
        shapes = tuple({0: batch} if t.dim() >= 1 else None for t in job.example_inputs)
    return torch.export.export(ep.module(), job.example_inputs, dynamic_shapes=shapes)


def uses_float64(ep: Any) -> bool:
    """Whether the program holds or computes any float64 tensor (a parameter, buffer, constant or value)."""
    import torch

    if any(t.dtype == torch.float64 for t in [*ep.state_dict.values(), *ep.constants.values()]
           if isinstance(t, torch.Tensor)):
        return True
    for node in ep.graph.nodes:
        val = node.meta.get("val")
        vals = val if isinstance(val, (list, tuple)) else [val]
        if any(getattr(v, "dtype", None) == torch.float64 for v in vals):
            return True
    return False


# -- float64 demotion ----------------------------------------------------------------------------------
def demote_float64_module(ep: Any) -> tuple[Any, dict[str, int]]:
    """A copy of ``ep.module()`` computing in float32 wherever the program used float64.

    float64 buffers/constants become float32 copies (the program's own tensors are not touched) and
    every ``torch.float64`` passed to an op (``.to``, ``_to_copy``, factories, dtype asserts) becomes
    ``torch.float32``. Used for converters that cannot lower float64 arithmetic.

    Returns:
        ``(graph_module, {"tensors": n, "ops": m})`` - how many tensors and op arguments changed.
    """
    import torch
    from torch.fx.node import map_aggregate

    gm = ep.module()
    tensors = ops = 0
    seen: set[str] = set()
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.target not in seen:
            seen.add(node.target)
            owner: Any = gm
            *path, leaf = str(node.target).split(".")
            for part in path:
                owner = getattr(owner, part)
            value = getattr(owner, leaf, None)
            if isinstance(value, torch.Tensor) and value.dtype == torch.float64:
                new = value.detach().to(torch.float32)
                if leaf in getattr(owner, "_parameters", {}):
                    owner._parameters[leaf] = torch.nn.Parameter(new, requires_grad=False)
                elif leaf in getattr(owner, "_buffers", {}):
                    owner._buffers[leaf] = new
                else:
                    setattr(owner, leaf, new)
                tensors += 1
        elif node.op == "call_function":
            swap = lambda a: torch.float32 if a is torch.float64 else a  # noqa: E731
            args, kwargs = map_aggregate(node.args, swap), map_aggregate(node.kwargs, swap)
            if args != node.args or kwargs != node.kwargs:
                node.args, node.kwargs = args, kwargs
                ops += 1
    gm.recompile()
    return gm, {"tensors": tensors, "ops": ops}


def demote_float64_onnx(model: Any) -> dict[str, int]:
    """Rewrite an ``onnx.ModelProto`` in place so it computes in float32 where it used float64.

    DOUBLE initializers and constants become FLOAT, ``Cast``/``dtype`` attributes that name DOUBLE
    name FLOAT, and DOUBLE value infos (graph inputs/outputs included) become FLOAT; subgraphs too.

    Returns:
        ``{"tensors": n, "ops": m}`` - how many tensors and op attributes changed.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, numpy_helper

    counts = {"tensors": 0, "ops": 0}

    def tensor(t: Any) -> None:
        if t.data_type == TensorProto.DOUBLE:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
            counts["tensors"] += 1

    def graph(g: Any) -> None:
        for t in g.initializer:
            tensor(t)
        for vi in [*g.input, *g.output, *g.value_info]:
            tt = vi.type.tensor_type
            if tt.elem_type == TensorProto.DOUBLE:
                tt.elem_type = TensorProto.FLOAT
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.INT and attr.name in ("to", "dtype") and attr.i == TensorProto.DOUBLE:
                    attr.i = TensorProto.FLOAT
                    counts["ops"] += 1
                elif attr.type == onnx.AttributeProto.TENSOR:
                    tensor(attr.t)
                elif attr.type == onnx.AttributeProto.GRAPH:
                    graph(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        graph(sub)

    graph(model.graph)
    for fn in model.functions:
        for node in fn.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.INT and attr.name in ("to", "dtype") and attr.i == TensorProto.DOUBLE:
                    attr.i = TensorProto.FLOAT
                    counts["ops"] += 1
    return counts


def demotion_note(counts: dict[str, int], runtime: str) -> str | None:
    if not counts.get("tensors") and not counts.get("ops"):
        return None
    return (
        f"{runtime} cannot run the model's float64 arithmetic, so this artifact computes it in float32 "
        f"({counts['tensors']} float64 tensor(s) and {counts['ops']} float64 op(s) demoted); the parity "
        "numbers include the difference this makes."
    )


# -- quiet converters ----------------------------------------------------------------------------------
class Captured:
    """Text a converter printed while :func:`captured_output` was active."""

    def __init__(self) -> None:
        self.text = ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text.rstrip().splitlines()[-lines:])


@contextlib.contextmanager
def captured_output() -> Iterator[Captured]:
    """Capture what Python and native code print (fds 1 and 2 and ``sys.stdout/stderr``).

    Converters print progress bars and C++ logs; the user sees them only when the step fails (the
    caller puts :meth:`Captured.tail` into its error). Process-wide while active: other threads'
    prints are captured too.
    """
    for stream in (sys.stdout, sys.stderr):  # what was printed before belongs to the user
        with contextlib.suppress(Exception):
            stream.flush()
    captured = Captured()
    sink = tempfile.TemporaryFile(mode="w+b")
    saved: dict[int, int] = {}
    py_out, py_err = sys.stdout, sys.stderr
    text = io.StringIO()
    try:
        for fd in (1, 2):
            try:
                saved[fd] = os.dup(fd)
                os.dup2(sink.fileno(), fd)
            except OSError:  # no such fd (embedded interpreters)
                saved.pop(fd, None)
        sys.stdout = sys.stderr = text
        yield captured
    finally:
        sys.stdout, sys.stderr = py_out, py_err
        for stream in (py_out, py_err):  # flush what native code buffered on the Python objects
            with contextlib.suppress(Exception):
                stream.flush()
        for fd, dup in saved.items():
            with contextlib.suppress(OSError):
                os.dup2(dup, fd)
                os.close(dup)
        sink.seek(0)
        captured.text = text.getvalue() + sink.read().decode("utf-8", "replace")
        sink.close()


def first_line(exc: BaseException, limit: int = 300) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]


def both_paths_failed(backend: str, step: str, dynamic_exc: BaseException, static_exc: BaseException) -> BackendError:
    """The error of a backend whose dynamic path and static fallback both failed (both causes named)."""
    # One summary line first (what the CLI and magics show), then each cause in full: a converter's
    # own output tail is what a user needs to act on.
    return BackendError(
        f"`{backend}` {step} failed with dynamic shapes ({first_line(dynamic_exc)}) and with static ones "
        f"({first_line(static_exc)}).\n\n--- dynamic shapes ---\n{dynamic_exc}\n\n--- static shapes ---\n{static_exc}",
        backend=backend, stage="convert",
    )


def essentials_json(job: ExportJob) -> str:
    return json.dumps(dict(job.essentials), sort_keys=True, separators=(",", ":"))


def to_numpy_outputs(outputs: Any) -> list[Any]:
    """A runtime's outputs (tensors, arrays, dicts of them) as a list of numpy arrays."""
    import numpy as np

    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    result = []
    for out in outputs:
        if hasattr(out, "detach"):
            out = out.detach().cpu().numpy()
        elif hasattr(out, "numpy") and not isinstance(out, np.ndarray):
            out = out.numpy()
        result.append(np.asarray(out))
    return result


def check_option(backend: str, key: str, value: Any, allowed: tuple[Any, ...]) -> Any:
    """Raise ValueError naming the backend option, the bad value and the allowed ones."""
    if value not in allowed:
        raise ValueError(
            f"`{backend}` option `{key}` is {value!r}; allowed values: {', '.join(repr(a) for a in allowed)}."
        )
    return value
