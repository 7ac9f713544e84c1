"""What a colleague asks first about a reported model: its summary and its input/output signature."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb._format import human_size
from enn_nb.model.signature import TensorSig
from enn_nb.table import Table

if TYPE_CHECKING:
    from enn_nb.checkpoint.manifest import Manifest
    from enn_nb.model.spec import ModelSpec


def model_summary(manifest: Manifest) -> Table:
    """Builder, parameters, size, tasks, in_dim/out_shape and identity of a checkpoint, one row each."""

    spec = manifest.spec
    tasks = [f"{t.get('name', '?')} ({t['kind']})" if t.get("kind") else str(t.get("name", "?"))
             for t in spec.tasks or []]  # fmt: skip
    rows = [
        ["model", spec.builder or "(no builder: a plain nn.Module)"],
        ["parameters", f"{manifest.parameter_count:,} values in {len(manifest.tensors)} tensors"],
        ["size", human_size(manifest.tensor_bytes)],
        ["tasks", ", ".join(tasks) or "-"],
        ["in_dim", "-" if spec.in_dim is None else spec.in_dim],
        ["out_shape", "-" if spec.out_shape is None else list(spec.out_shape)],
        ["checkpoint", f"{manifest.path} ({manifest.format})"],
        ["content hash", manifest.content_hash],
    ]
    if manifest.created:
        rows.append(["saved", manifest.created])
    return Table(["", ""], rows)


def signature_table(spec: ModelSpec, batch_sizes: Sequence[int] = (1, 8, 64), export: Any = None) -> Table:
    """The model's inputs and outputs as the artifacts see them, from its ModelSpec.

    One row per input and output: the declared signature (``spec.inputs`` / ``spec.outputs``: names,
    dtypes, symbolic dims such as ``time``, category counts), else the ``[batch, in_dim]`` shorthand
    (``x``, ``y: [batch, *out_shape]``); then one row per task head (its slice of ``y``), with the
    example input shapes the report used. When the spec has no signature, the one the ``export``
    followed (its sidecars' ``signature``: inferred names, dict output keys) fills it in.
    """
    batch = "batch"
    dtype = spec.feature_dtype or "float32"
    rows: list[list[Any]] = []
    followed = _followed_signature(export)
    inputs = spec.inputs if spec.inputs is not None else (followed["inputs"] if spec.in_dim is None else None)
    outputs = spec.outputs if spec.outputs is not None else (followed["outputs"] if spec.out_shape is None else None)
    structure = spec.output_structure or followed.get("structure")
    if inputs:
        for sig in inputs:
            shape = "[" + ", ".join(str(d) for d in sig.shape) + "]"
            detail = f"integer codes in [0, {sig.categories})" if sig.categories else ""
            rows.append(["input", sig.name, shape, sig.dtype, detail])
    elif spec.in_dim is not None:
        note = ", ".join(f"[{b}, {spec.in_dim}]" for b in batch_sizes)
        embedding = spec.embedding or {}
        columns = embedding.get("categorical_columns") or []
        if columns:
            note += f"; columns {', '.join(str(c) for c in columns)} hold integer category codes"
        rows.append(["input", "x", f"[{batch}, {spec.in_dim}]", dtype, f"examples: {note}"])
    else:
        rows.append(["input", "x", "unknown (no in_dim in the spec)", dtype, "the export's example inputs decide"])
    if outputs:
        for sig in outputs:
            detail = f"key of the returned {structure}" if structure == "dict" else ""
            rows.append(["output", sig.name, "[" + ", ".join(str(d) for d in sig.shape) + "]", sig.dtype, detail])
    elif spec.out_shape is not None:
        shape = ", ".join(str(d) for d in spec.out_shape)
        rows.append(["output", "y", f"[{batch}, {shape}]", "float32", ""])
    for task in spec.tasks or []:
        where = task.get("output_index") or task.get("output_column")
        detail = ", ".join(str(x) for x in (task.get("kind"), task.get("units")) if x)
        shape = task.get("shape")
        rows.append([
            "task", task.get("name", "?"), f"[{batch}, {', '.join(str(d) for d in shape)}]" if shape else "-",
            "float32", (f"y{_index(where)}; " if where is not None else "") + detail,
        ])  # fmt: skip
    return Table(["", "name", "shape", "dtype", "details"], rows)


def _followed_signature(export: Any) -> dict[str, Any]:
    """The signature an export followed, from the first sidecar that records one (``{}`` when none)."""

    for result in getattr(export, "results", None) or []:
        side = getattr(result, "sidecar", None)
        if side and Path(side).is_file():
            found = json.loads(Path(side).read_text(encoding="utf-8")).get("signature")
            if found:
                return {"inputs": [TensorSig.from_dict(t) for t in found["inputs"]],
                        "outputs": [TensorSig.from_dict(t) for t in found["outputs"]],
                        "structure": found.get("structure")}
    return {"inputs": None, "outputs": None}


def _index(where: Any) -> str:
    if isinstance(where, (list, tuple)):
        return "[" + ", ".join(str(w) for w in where) + "]"
    return f"[..., {where}]"


class Folded:
    """Any displayable object folded under a one-line summary (``<details>`` in HTML; closed by default)."""

    def __init__(self, obj: Any, summary: str) -> None:
        self.obj = obj
        self.summary = summary

    def __repr__(self) -> str:
        return f"{self.summary}\n{self.obj!r}"

    def _repr_html_(self) -> str:
        inner = self.obj._repr_html_() if hasattr(self.obj, "_repr_html_") else f"<pre>{html.escape(repr(self.obj))}</pre>"
        return f"<details class='enn-nb-folded'><summary>{html.escape(self.summary)}</summary>{inner}</details>"
