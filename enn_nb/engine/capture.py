"""Capture once, lower many: one ``torch.export`` program and one shared single-file ONNX per export."""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb._fs import replace_path
from enn_nb.errors import FastPathExportError
from enn_nb.model.signature import TensorSig, dim_name, dynamic_shapes, infer_inputs, symbolic_names

if TYPE_CHECKING:
    import torch

    from enn_nb.model.fastpaths import FastPath

#: Above this many bytes of weights the shared ONNX keeps them in an external ``.data`` file
#: (protobuf cannot hold a single message over 2 GiB).
EXTERNAL_DATA_BYTES = 1_800_000_000

BATCH_DIM = "batch"


def capture_program(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    dynamic_batch: bool,
    fast_paths: Sequence[FastPath] = (),
    signature: Sequence[TensorSig] | None = None,
) -> tuple[Any, bool, list[str], dict[str, str]]:
    """``torch.export.export`` the module, its symbolic dims (``batch``, ``time``...) dynamic when asked.

    ``dynamic_shapes`` follow the forward's real signature (positional parameters, ``*args``), built
    from ``signature`` (inferred from the inputs when None: only dim 0, ``batch``, is symbolic).

    Returns:
        ``(exported_program, batch_is_dynamic, notes, static_dims)``. When the model specialises a
        declared dynamic dim, the capture is retried without the dims torch named (without any but
        ``batch``, then static, when it named none); ``static_dims`` maps each dim left static to the
        constraint torch reported, and a note says the same.

    Raises:
        FastPathExportError: the capture failed on a fast path left on (named in the message).
    """
    import torch

    sigs = list(signature) if signature is not None else infer_inputs(module.forward, example_inputs)
    declared = symbolic_names(sigs) if dynamic_batch else []
    symbols, static = list(declared), {}
    try:
        while symbols:
            shapes = dynamic_shapes(module.forward, sigs, example_inputs, dynamic=symbols)
            try:
                ep = torch.export.export(module, example_inputs, dynamic_shapes=shapes)
                break
            except Exception as exc:
                if not _is_specialisation(exc):
                    raise
                reasons = specialised_dims(exc, symbols)
                if not reasons:  # torch named none we know: keep batch alone, then nothing
                    kept = [BATCH_DIM] if BATCH_DIM in symbols and symbols != [BATCH_DIM] else []
                    reasons = {s: _first_line(exc) for s in symbols if s not in kept}
                static.update(reasons)
                symbols = [s for s in symbols if s not in reasons]
        else:
            ep = torch.export.export(module, example_inputs)
    except Exception as exc:
        mapped = fast_path_error(exc, fast_paths, stage="capture")
        if mapped is not None:
            raise mapped from exc
        raise
    notes = [f"`{name}` is static in the artifact although declared dynamic (at its capture size): {why}"
             for name, why in static.items()]
    return ep, BATCH_DIM in symbols, notes, static


_VIOLATED = re.compile(r"Constraints violated \(([^)]*)\)")


def specialised_dims(exc: BaseException, symbols: Sequence[str]) -> dict[str, str]:
    """``{dim: why}`` for the dims of ``symbols`` a torch.export constraint violation names, with torch's reason.

    torch says ``Constraints violated (time)!`` then one ``- ...`` line per dim (``You marked time as dynamic
    but your code specialized it to be a constant (20)``); its advice about ``mark_dynamic``/``Dim.DYNAMIC``
    concerns torch's own API and is left out.
    """
    text = str(exc)
    found = _VIOLATED.search(text)
    if not found:
        return {}
    named = [n.strip() for n in found.group(1).split(",")]
    bullets = [line.strip()[2:] for line in text.splitlines() if line.strip().startswith("- ")]
    out = {}
    for name in named:
        if name not in symbols:
            continue
        line = next((b for b in bullets if re.search(rf"\b{re.escape(name)}\b", b)), "")
        line = line.split(" If you're using")[0].strip()
        line = re.sub(rf"^You marked {re.escape(name)} as dynamic but your code", "the model's code", line)
        out[name] = f"torch.export: {line or found.group(0)}"
    return out


def _is_specialisation(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return any(s in text for s in ("ConstraintViolation", "specialized", "Constraints violated", "specialization"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def fast_path_error(exc: BaseException | str, fast_paths: Sequence[FastPath], *, stage: str) -> FastPathExportError | None:
    """Turn an exporter error caused by a fast path left on into one that names it, else None."""
    text = exc if isinstance(exc, str) else _chain_text(exc)
    low = text.lower()
    hits = [p for p in fast_paths if p.is_fast and any(m.lower() in low for m in p.markers if m)]
    if not hits:
        return None
    names = ", ".join(f"`{p.name}` ({p.kind})" for p in hits)
    first = hits[0]
    cause = text.strip().splitlines()[0][:300] if text.strip() else ""
    return FastPathExportError(
        f"The {stage} failed because fast path {names} is on: {first.reason}. Export inside "
        "`with enn_nb.export_safe(model):` or call `enn_nb.export(..., safe=True)` (the default), which "
        f"switches it to `{first.attr}={first.safe_value!r}` for the export. Exporter said: {cause}",
        fast_path=first.name,
    )


def _chain_text(exc: BaseException) -> str:
    parts = []
    seen = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        parts.append(f"{type(cur).__name__}: {cur}")
        cur = cur.__cause__ or cur.__context__
    return "\n".join(parts)


def program_nbytes(ep: Any) -> int:
    total = 0
    for tensor in [*ep.state_dict.values(), *getattr(ep, "constants", {}).values()]:
        if hasattr(tensor, "numel"):
            total += tensor.numel() * tensor.element_size()
    return total


def onnx_from_program(
    ep: Any,
    path: Path,
    *,
    input_names: list[str],
    output_names: list[str],
    essentials: dict[str, str],
    opset: int | None = None,
    optimize: bool = True,
    signature: Sequence[TensorSig] | None = None,
) -> Path:
    """Export ``ep`` to ONNX at ``path``: single file unless the weights need external data.

    The batch dimension is named ``batch``, the essentials go into ``metadata_props``; the file is
    written to a temporary name and renamed, so a reader never sees half of it.

    The exporter's per-node debugging metadata (``pkg.torch.onnx.stack_trace``, ``fx_node``,
    ``class_hierarchy``, ``namespace``...; what the weights were folded from) is cleared with onnx_ir's
    ``ClearMetadataAndDocStringPass``: no runtime reads it, it names local source paths, and it was about
    half of every small model's file (reference model 185 -> 93 kB; the GRU forecaster 23.5 -> 7.6 kB), which
    every artifact derived from this ONNX (ort, its quantized copies, TensorRT...) carried along.
    """
    import onnx
    import torch

    external = program_nbytes(ep) > EXTERNAL_DATA_BYTES
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".onnx-", dir=path.parent))
    try:
        tmp = tmp_dir / path.name
        program = torch.onnx.export(
            ep,
            (),
            dynamo=True,
            input_names=input_names,
            output_names=output_names,
            opset_version=opset,
            optimize=optimize,
            verbose=False,
        )
        _clear_debug_metadata(program.model)
        program.save(str(tmp), external_data=external)
        model = onnx.load(str(tmp), load_external_data=False)
        _name_batch_dim(model)
        _name_symbolic_dims(model, signature)
        del model.metadata_props[:]
        onnx.helper.set_model_props(model, dict(essentials))
        if external:
            # external tensors keep their relative `location`; move the data file beside the target
            for data in tmp_dir.iterdir():
                if data.name != tmp.name:
                    replace_path(data, path.parent / data.name)
        onnx.save(model, str(tmp))
        replace_path(tmp, path)
    finally:
        for leftover in tmp_dir.iterdir() if tmp_dir.exists() else []:
            leftover.unlink(missing_ok=True)
        tmp_dir.rmdir()
    return path


def _clear_debug_metadata(model: Any) -> None:
    """Drop the exporter's debugging metadata from the nodes and values of ``model`` (an ``onnx_ir`` model).

    The model's own ``metadata_props`` (where the essentials go) are untouched.
    """
    import onnx_ir as ir
    from onnx_ir.passes.common import ClearMetadataAndDocStringPass

    ClearMetadataAndDocStringPass()(model)  # nodes, graphs, functions (not the values)
    graphs = [model.graph, *model.functions.values()]
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        graphs += [a.value for a in node.attributes.values() if isinstance(getattr(a, "value", None), ir.Graph)]
    for graph in graphs:
        values = [*graph.inputs, *graph.outputs, *getattr(graph, "initializers", {}).values()]
        values += [v for node in graph for v in node.outputs]
        for value in values:
            value.metadata_props.clear()


def _name_batch_dim(model: Any) -> None:
    """Rename the exporter's symbol for dim 0 of the first input (``s77``...) to ``batch`` everywhere."""
    graph = model.graph
    if not graph.input:
        return
    dims = graph.input[0].type.tensor_type.shape.dim
    if not dims or not dims[0].dim_param:
        return
    symbol = dims[0].dim_param
    pattern = re.compile(rf"\b{re.escape(symbol)}\b")
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = pattern.sub(BATCH_DIM, dim.dim_param)


def _name_symbolic_dims(model: Any, signature: Sequence[TensorSig] | None) -> None:
    """Rename the exporter's symbols (``s12``...) after the signature's dims (``time``...) everywhere."""
    if not signature:
        return

    graph = model.graph
    renames: dict[str, str] = {}
    for value, sig in zip(graph.input, signature):
        for dim, want in zip(value.type.tensor_type.shape.dim, sig.shape):
            if dim.dim_param and not isinstance(want, int) and dim.dim_param not in renames:
                renames[dim.dim_param] = dim_name(want)
    renames = {k: v for k, v in renames.items() if k != v}
    if not renames:
        return
    pattern = re.compile(r"\b(" + "|".join(re.escape(k) for k in renames) + r")\b")
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = pattern.sub(lambda m: renames[m.group(1)], dim.dim_param)


class Shared:
    """The shared capture of one export: the program (in memory, or loaded from ``capture.pt2`` in an
    isolated child) and the one ONNX file, exported on first use by the first ONNX consumer.

    Attributes:
        timings: seconds of ``onnx`` (the shared ONNX) and ``load_capture``, when made here.
    """

    def __init__(
        self,
        *,
        workdir: Path,
        stem: str,
        input_names: list[str],
        output_names: list[str],
        essentials: dict[str, str],
        onnx_options: dict[str, Any],
        ep: Any = None,
        ep_path: Path | None = None,
        signature: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = workdir
        self.stem = stem
        self.input_names = input_names
        self.output_names = output_names
        self.essentials = essentials
        self.onnx_options = onnx_options
        self._ep = ep
        self._ep_path = ep_path
        self.signature = signature
        self.timings: dict[str, float] = {}

    @property
    def onnx_file(self) -> Path:
        return self.workdir / "shared" / f"{self.stem}.onnx"

    def exported_program(self) -> Any:
        if self._ep is None:
            if self._ep_path is None:
                raise RuntimeError("Shared has neither a program nor the path of a saved one")
            import torch

            started = time.perf_counter()
            self._ep = torch.export.load(str(self._ep_path))
            self.timings["load_capture"] = time.perf_counter() - started
        return self._ep

    def onnx_path(self) -> Path:
        path = self.onnx_file
        if not path.exists():  # made by an earlier backend (maybe in an earlier child) otherwise
            ep = self.exported_program()
            started = time.perf_counter()
            onnx_from_program(
                ep,
                path,
                input_names=self.input_names,
                output_names=self.output_names,
                essentials=self.essentials,
                opset=self.onnx_options.get("opset"),
                optimize=bool(self.onnx_options.get("optimize", True)),
                signature=self.input_signature(),
            )
            self.timings["onnx"] = time.perf_counter() - started
        return path

    def input_signature(self) -> list[Any] | None:
        return [TensorSig.from_dict(s) for s in self.signature["inputs"]] if self.signature else None

    def save_program(self) -> Path:
        """Write the program to ``workdir/capture.pt2`` for an isolated child; returns the path."""
        import torch

        from enn_nb._fs import write_guarded

        path = self.workdir / "capture.pt2"
        if not path.exists():  # a full disk raises OSError here instead of aborting in torch's zip writer
            write_guarded(path, lambda f: torch.export.save(self.exported_program(), f))
        return path
