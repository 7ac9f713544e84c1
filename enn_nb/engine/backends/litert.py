"""LiteRT backend: the export-safe program converted by ``litert-torch`` to a ``.tflite`` flatbuffer."""

from __future__ import annotations

import inspect
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, ClassVar

from enn_nb._fs import write_bytes
from enn_nb._optional import require
from enn_nb.errors import BackendError
from enn_nb.engine.backends._edge_common import (
    BATCH,
    ESSENTIALS_KEY,
    batch_bounds,
    captured_output,
    demote_float64_module,
    demotion_note,
    dtype_name,
    essentials_json,
    first_line,
)
from enn_nb.engine.backends.base import Backend, Conversion, ExportJob, Runner, TensorInfo
from enn_nb.engine.options import Option, defaults

#: Protobuf/flatbuffer builders cannot pack a model object over 2 GiB; above this the metadata is skipped.
_MAX_EMBED_BYTES = 1_900_000_000

SIGNATURE = "serving_default"


class LitertBackend(Backend):
    """``litert_torch.convert(module, sample_args).export(path)`` from the shared ExportedProgram.

    The converter re-traces ``ep.module()`` (the shared capture, unlifted) with the inputs passed by
    keyword, so the ``.tflite`` signature ``serving_default`` has the job's input and output names.

    Facts of litert-torch 0.10.0 this backend works around, each recorded in the sidecar:

    * float64 arithmetic (the reference Scaler) does not lower (``tfl.greater`` on f64 is illegal):
      the program is demoted to float32 first (:func:`demote_float64_module`).
    * a dynamic batch does not lower: with torch 2.13 every attempt failed here, a plain
      ``Linear-ReLU-Linear`` included (``float32[-9223372036854775808,16]`` from the JAX bridge), the
      reference model on its column gathers. So the artifact is static at the capture batch by
      default, and the sidecar says so and why. ``dynamic_batch=True`` tries anyway (about as long
      as a conversion) and falls back to static with the converter's reason in ``notes``.

    Options:
        dynamic_batch: try a dynamic batch first (default False: see above; the attempt failed on
            every model with litert-torch 0.10.0 and costs about one conversion).
        embed_metadata: write the essentials into the flatbuffer's ``metadata`` table (default True),
            done with ``ai_edge_litert.tools.flatbuffer_utils`` (the schema's own Python bindings).
    """

    name: ClassVar[str] = "litert"
    suffix: ClassVar[str] = ".tflite"
    description: ClassVar[str] = "LiteRT (TensorFlow Lite) flatbuffer via litert-torch; runs on Android/iOS/MCUs"
    extra: ClassVar[str] = "litert"
    requires: ClassVar[tuple[str, ...]] = ("litert_torch", "ai_edge_litert")
    runtime_requires: ClassVar[tuple[str, ...] | None] = ("ai_edge_litert",)
    consumes: ClassVar[str] = "exported_program"
    # float32 instead of float64 scaler arithmetic plus XNNPACK's fused kernels: ~4e-6 on the reference.
    default_tolerance: ClassVar[tuple[float, float]] = (1e-4, 1e-4)
    thread_option: ClassVar[str | None] = "num_threads"
    options: ClassVar[tuple[Option, ...]] = (
        Option("dynamic_batch", bool, False, "try a dynamic batch (litert-torch usually cannot lower one)"),
        Option("embed_metadata", bool, True, "write the essentials into the .tflite metadata"),
        Option("num_threads", int, None, "LiteRT interpreter threads when the artifact runs (parity, latency)", min=1),
    )
    default_options: ClassVar[dict[str, Any]] = defaults(options)
    quantize_modes: ClassVar[dict[str, str]] = {
        "int8-weights": "ai_edge_quantizer recipe dynamic_wi8_afp32",
        "int8": "ai_edge_quantizer recipe static_wi8_ai8 (calibrated)",
    }

    def quantize(self, job: ExportJob, out_path: Path, options: dict[str, Any], mode: str, calibration: Any) -> Conversion:
        from enn_nb.engine.quantize.quantizers import quantize_litert

        return quantize_litert(self, job, out_path, options, mode, calibration)

    def convert(self, job: ExportJob, out_path: Path, options: dict[str, Any]) -> Conversion:
        opts = {**self.default_options, **options}
        with captured_output():  # importing the converter logs TensorFlow/oneDNN start-up lines
            litert_torch = require("litert_torch", purpose="the `litert` backend")
        import torch

        ep = job.exported_program
        module, counts = demote_float64_module(ep)
        repeats = materialise_single_head_repeats(module)
        named = _named_module(module, job.input_names, job.output_names)
        kwargs = dict(zip(job.input_names, job.example_inputs))
        notes: list[str] = []
        note = demotion_note(counts, "LiteRT (litert-torch)")
        if note:
            notes.append(note)
        costs: list[str] = []
        if repeats:
            notes.append(
                f"{repeats} repeat(s) of a single key/value head (GQA's `repeat_kv`: `expand` of a size-1 head axis, "
                "then `reshape`) were written as a `cat` of copies: litert-torch folds that repeat into a broadcast "
                "that its `tfl.batch_matmul` lowering of q·kᵀ gets wrong (errors of 1e-3 to 1e+1 measured). Same "
                "values, one copy of k and v per query head in memory."
            )
            costs.append(f"{repeats} single-KV-head repeat(s) materialised with `cat`")
        bounds = batch_bounds(ep)
        dynamic = bool(job.dynamic_batch and opts["dynamic_batch"] and bounds is not None)
        model = None
        with captured_output() as log:
            if dynamic:
                low, high = max(1, job.batch_range[0]), int(job.batch_range[2])
                batch = torch.export.Dim(BATCH, min=low, max=high)
                shapes = {name: ({0: batch} if t.dim() >= 1 else None) for name, t in kwargs.items()}
                try:
                    model = litert_torch.convert(named, sample_kwargs=kwargs, dynamic_shapes=shapes)
                except Exception as exc:
                    dynamic = False
                    notes.append(
                        f"litert-torch {_version('litert-torch')} could not lower a dynamic batch "
                        f"({first_line(exc, 200)}); the artifact is static at batch "
                        f"{int(job.example_inputs[0].shape[0])}."
                    )
            elif job.dynamic_batch and bounds is not None:
                notes.append(
                    f"static at batch {int(job.example_inputs[0].shape[0])}: litert-torch "
                    f"{_version('litert-torch')} could not lower a dynamic batch on any model tried (a plain MLP "
                    "included), so this backend converts static unless its option dynamic_batch=True asks "
                    "to try."
                )
            if model is None:
                try:
                    model = litert_torch.convert(named, sample_kwargs=kwargs)
                except Exception as exc:
                    raise BackendError(
                        f"`litert` conversion failed: {first_line(exc)}\n--- converter output (tail) ---\n"
                        f"{log.tail()}",
                        backend=self.name,
                        stage="convert",
                    ) from exc
            content = bytes(model.model_content())
        embedded = False
        if opts["embed_metadata"]:
            if len(content) < _MAX_EMBED_BYTES:
                content = embed_metadata(content, {ESSENTIALS_KEY: essentials_json(job).encode()})
                embedded = True
            else:
                notes.append("the model is too large to re-pack its flatbuffer, so the essentials are in the sidecar only.")
        write_bytes(out_path, content)
        inputs, outputs = _describe(out_path)
        casts = _input_casts(job, inputs)
        if casts:
            notes.append(
                "the artifact declares " + ", ".join(f"`{c['input']}` as {c['artifact']}" for c in casts)
                + f" (litert-torch narrows {', '.join(sorted({c['model'] for c in casts}))} inputs): callers feed that "
                "dtype, and parity casts the model's inputs to it (codes beyond the int32 range would not fit)."
            )
        return Conversion(
            artifact=out_path,
            inputs=inputs,
            outputs=outputs,
            format={
                "name": "LiteRT flatbuffer (TFLite schema 3)",
                "signature": SIGNATURE,
                "litert-torch": _version("litert-torch"),
                "ai-edge-litert": _version("ai-edge-litert"),
            },
            dynamic_batch=dynamic,
            notes=notes,
            details={"float64_demoted": counts, "metadata_entry": ESSENTIALS_KEY if embedded else None,
                     "input_casts": casts},
            embedded_metadata=embedded,
            path={"name": "kv-repeat-as-cat" if repeats else "shared",
                  "costs": [*costs, *(f"{c['input']}: {c['model']} -> {c['artifact']}" for c in casts)]}
            if casts or repeats else None,
        )

    def load(self, artifact: Path, options: dict[str, Any]) -> Runner:
        interpreter = _interpreter(artifact, options)
        with captured_output():  # the runtime logs its XNNPACK delegate creation
            runner = interpreter.get_signature_runner(SIGNATURE)
        in_names, out_names = _ordered_names(interpreter, runner)
        declared = runner.get_input_details()
        wanted = [declared[name]["dtype"] for name in in_names]
        # a full-integer model (static int8 quantization) takes and gives int8 with its own scale/zero point:
        # float values are quantized and dequantized with those parameters, as an application on a device does
        in_q = [_quantization(declared[name]) for name in in_names]
        out_details = runner.get_output_details()
        out_q = {name: _quantization(out_details[name]) for name in out_names}

        first = [True]

        def run(inputs: list[Any]) -> list[Any]:
            inputs = [_quantize(a, q, dtype) if q and a.dtype.kind == "f" else a for a, q, dtype in zip(inputs, in_q, wanted)]
            # feed the dtype the artifact declares (int64 codes -> int32): recorded as `input_casts`
            inputs = [a if a.dtype == dtype else a.astype(dtype) for a, dtype in zip(inputs, wanted)]
            if first[0]:  # the interpreter logs its XNNPACK delegate creation on the first call
                first[0] = False
                with captured_output():
                    outputs = runner(**dict(zip(in_names, inputs)))
            else:
                outputs = runner(**dict(zip(in_names, inputs)))
            return [_dequantize(outputs[name], out_q[name]) for name in out_names]

        return run

    def read_metadata(self, artifact: Path) -> dict[str, str] | None:
        raw = read_flatbuffer_metadata(Path(artifact)).get(ESSENTIALS_KEY)
        if raw is None:
            return None
        return {str(k): str(v) for k, v in json.loads(raw.decode("utf-8")).items()}


def materialise_single_head_repeats(gm: Any) -> int:
    """Rewrite, in place, each GQA-style repeat of one key/value head into a ``cat`` of copies.

    The pattern: ``aten.expand`` of a tensor whose axis ``i`` has size 1 to ``n > 1`` copies, where axis
    ``i - 1`` (the KV heads) is 1 too, and whose users are all ``reshape``/``view`` ops merging the two
    (``[B, 1, 1, T, D] -> [B, 1, n, T, D] -> [B, n, T, D]``). litert-torch 0.10 lowers ``q @ k.mT`` on
    such a key to a ``tfl.batch_matmul`` that gives wrong numbers; a ``cat`` converts correctly.

    Returns:
        How many expands were rewritten.
    """
    import torch

    aten = torch.ops.aten
    reshapes = {aten.reshape.default, aten.view.default, aten._unsafe_view.default}
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.expand.default:
            continue
        source, sizes = node.args[0], list(node.args[1])
        val = source.meta.get("val") if hasattr(source, "meta") else None
        if val is None or len(sizes) != val.dim() or not node.users:
            continue
        if not all(u.op == "call_function" and u.target in reshapes
                   and u.meta.get("val") is not None and u.meta["val"].dim() == val.dim() - 1 for u in node.users):
            continue
        axes = [i for i, (have, want) in enumerate(zip(val.shape, sizes))
                if isinstance(want, int) and want > 1 and have == 1]
        if len(axes) != 1 or axes[0] == 0 or val.shape[axes[0] - 1] != 1:
            continue
        axis, copies = axes[0], int(sizes[axes[0]])
        with gm.graph.inserting_before(node):
            cat = gm.graph.call_function(aten.cat.default, ([source] * copies, axis))
        cat.meta = dict(node.meta)
        node.replace_all_uses_with(cat)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


def _quantization(detail: dict[str, Any]) -> tuple[float, int] | None:
    """``(scale, zero_point)`` of an integer tensor with per-tensor quantization, else None."""
    import numpy as np

    scale, zero = detail.get("quantization", (0.0, 0))
    return (float(scale), int(zero)) if scale and np.dtype(detail["dtype"]).kind in "iu" else None


def _quantize(values: Any, q: tuple[float, int], dtype: Any) -> Any:
    import numpy as np

    info = np.iinfo(dtype)
    return np.clip(np.round(values / q[0]) + q[1], info.min, info.max).astype(dtype)


def _dequantize(values: Any, q: tuple[float, int] | None) -> Any:
    import numpy as np

    return values if q is None else ((values.astype(np.float32) - q[1]) * q[0]).astype(np.float32)


def _named_module(inner: Any, input_names: list[str], output_names: list[str]) -> Any:
    """A module whose ``forward`` takes the job's input names as parameters and returns a dict keyed
    by the output names (litert-torch turns both into the signature's names)."""

    import torch

    class Named(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            from torch.utils._pytree import tree_leaves

            values = [*args, *(kwargs[name] for name in input_names[len(args) :])]
            outs = tree_leaves(self.inner(*values))  # tuples and dicts flatten in the signature's order
            return {output_names[i] if i < len(output_names) else f"output_{i}": o for i, o in enumerate(outs)}

    # litert-torch names every tensor after the module classes it came from (`module.qualname;...`): a short
    # name instead of `enn_nb.engine.backends.litert._named_module.<locals>.Named` (~10 kB of the reference
    # model's .tflite, float and quantized alike, which none of its readers use)
    Named.__module__, Named.__qualname__ = "enn_nb", "Named"
    # torch.export binds inputs by the signature: name the parameters after the job's inputs.
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in input_names]
    Named.forward.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    named = Named()
    named.training = False  # not .eval(): an unlifted program refuses train()/eval()
    return named


def _input_casts(job: ExportJob, inputs: list[TensorInfo]) -> list[dict[str, str]]:
    """Inputs whose artifact dtype differs from the model's (litert-torch turns int64 into int32)."""
    out = []
    for tensor, info in zip(job.example_inputs, inputs):
        model_dtype = dtype_name(tensor.dtype)
        if info.dtype != model_dtype:
            out.append({"input": info.name, "model": model_dtype, "artifact": info.dtype})
    return out


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def _interpreter(artifact: Path, options: dict[str, Any]) -> Any:
    litert = require("ai_edge_litert.interpreter", purpose="running `.tflite` artifacts")
    threads = options.get("num_threads")
    with captured_output():
        interpreter = litert.Interpreter(model_path=str(artifact), num_threads=int(threads) if threads else None)
    return interpreter


def _ordered_names(interpreter: Any, runner: Any) -> tuple[list[str], list[str]]:
    """Signature input/output names in the subgraph's order (the order the module took/returned them)."""
    in_pos = {d["index"]: i for i, d in enumerate(interpreter.get_input_details())}
    out_pos = {d["index"]: i for i, d in enumerate(interpreter.get_output_details())}
    ins = runner.get_input_details()
    outs = runner.get_output_details()
    return (
        sorted(ins, key=lambda n: in_pos.get(ins[n]["index"], 0)),
        sorted(outs, key=lambda n: out_pos.get(outs[n]["index"], 0)),
    )


def _describe(artifact: Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The signature's inputs/outputs as the interpreter sees them (``shape_signature`` -1 -> ``batch``)."""
    interpreter = _interpreter(artifact, {})
    with captured_output():
        runner = interpreter.get_signature_runner(SIGNATURE)
    in_names, out_names = _ordered_names(interpreter, runner)

    def info(name: str, detail: dict[str, Any]) -> TensorInfo:
        shape: list[int | str] = []
        for i, d in enumerate(detail["shape_signature"].tolist()):
            shape.append(BATCH if d == -1 and i == 0 else ("?" if d == -1 else int(d)))
        return TensorInfo(name, shape, dtype_name(detail["dtype"].__name__))

    ins, outs = runner.get_input_details(), runner.get_output_details()
    return [info(n, ins[n]) for n in in_names], [info(n, outs[n]) for n in out_names]


# -- flatbuffer metadata -------------------------------------------------------------------------------
def embed_metadata(content: bytes, entries: dict[str, bytes]) -> bytes:
    """Add (or replace) named entries of a ``.tflite`` flatbuffer's ``metadata`` table."""
    import numpy as np

    fb = require("ai_edge_litert.tools.flatbuffer_utils", purpose="embedding LiteRT metadata")
    schema = require("ai_edge_litert.schema_py_generated", purpose="embedding LiteRT metadata")
    model = fb.read_model_from_bytearray(bytearray(content))
    model.metadata = [m for m in (model.metadata or []) if _name(m.name) not in entries]
    for name, data in entries.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(data, dtype=np.uint8).copy()
        model.buffers.append(buffer)
        meta = schema.MetadataT()
        meta.name = name
        meta.buffer = len(model.buffers) - 1
        model.metadata.append(meta)
    return bytes(fb.convert_object_to_bytearray(model))


def read_flatbuffer_metadata(artifact: Path) -> dict[str, bytes]:
    """Every ``metadata`` entry of a ``.tflite`` file, read lazily (no full unpack of the model)."""
    schema = require("ai_edge_litert.schema_py_generated", purpose="reading LiteRT metadata")
    data = bytearray(Path(artifact).read_bytes())
    model = schema.Model.GetRootAs(data, 0)
    out: dict[str, bytes] = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        buffer = model.Buffers(entry.Buffer())
        if buffer.Offset() > 1:  # large models keep buffers after the flatbuffer, by offset
            raw = bytes(data[buffer.Offset() : buffer.Offset() + buffer.Size()])
        else:
            raw = buffer.DataAsNumpy().tobytes() if buffer.DataLength() else b""
        out[_name(entry.Name())] = raw
    return out


def _name(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
