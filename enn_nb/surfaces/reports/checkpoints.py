"""Building blocks of the ``checkpoint_report`` template: tensor tables and the diff of two checkpoints."""

from __future__ import annotations

import dataclasses
import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb._format import human_size
from enn_nb.errors import EnnError, ReportError
from enn_nb.table import Table
from enn_nb.surfaces.reports.sections import Header

if TYPE_CHECKING:
    from enn_nb.checkpoint import Manifest

__all__ = ["CheckpointDiff", "Header", "diff", "origin", "require", "subject", "summary", "tensor_table"]


def require(path: str | os.PathLike[str], *, name: str) -> Path:
    """The parameter ``name`` as an existing path.

    Raises:
        ReportError: empty, or nothing at that path.
    """
    if not path:
        raise ReportError(f"The parameter `{name}` is empty; pass a checkpoint, e.g. -p {name}=model.safetensors.")
    found = Path(path).expanduser()
    if not found.exists():
        raise ReportError(f"The {name} `{path}` does not exist (working directory: {Path.cwd()}).")
    return found


def subject(first: Path, second: Path | None) -> str:
    return f"{first.name} vs {second.name}" if second is not None else first.name


def tensor_table(manifest: Manifest) -> Table:
    """Every tensor of a checkpoint: name, dtype, shape, elements, bytes, hash (first 16 hex digits)."""
    from enn_nb.checkpoint.hashing import short

    rows = [
        [t.name, t.dtype, "[" + ", ".join(str(d) for d in t.shape) + "]", f"{math.prod(t.shape):,}",
         human_size(t.nbytes), short(t.hash, 16)]
        for t in manifest.tensors
    ]
    title = (
        f"{Path(manifest.path or '').name or manifest.format}: {len(rows)} tensors, "
        f"{manifest.parameter_count:,} values, {human_size(manifest.tensor_bytes)}"
    )
    return Table(["name", "dtype", "shape", "elements", "size", "hash"], rows, title=title)


def origin(manifest: Manifest, *, restore: bool = True) -> Table:
    """Where a checkpoint comes from and whether it restores: layout, upstream fields, restore check.

    With ``restore=True`` the model is loaded (its builder must be registered) and run on the
    vectors recorded at save time; a checkpoint without them (upstream files) shows ``not_run``.
    """
    from enn_nb.checkpoint.upstream import META_FIELDS

    source = manifest.source or {}
    upstream = source.get("layout") == "enn-pytorch"
    rows = [
        ["written by", "ENN-PyTorch (upstream)" if upstream else (source.get("layout") or "enn_nb")],
        ["layout", source.get("variant") or manifest.format],
    ]
    if upstream or "missing_fields" in source:
        present = source.get("present_fields") or [f for f in META_FIELDS if f not in source.get("missing_fields", [])]
        rows.append(["fields present", ", ".join(present) or "-"])
        rows.append(["fields missing", ", ".join(source.get("missing_fields") or []) or "-"])
    if source.get("converted_from"):
        rows.append(["converted from", str(source["converted_from"])])
    check = manifest.self_check
    rows.append(["recorded vectors", f"batch {check['inputs'][0]['shape'][0]}, `{check['call']}`" if check else "none"])
    rows.append(["restore check", _restore_status(manifest) if restore else "not run (restore=False)"])
    return Table(["", ""], rows, title=f"{Path(manifest.path or '').name or manifest.format}: origin and restore")


def _restore_status(manifest: Manifest) -> str:
    from enn_nb.checkpoint import load

    try:
        loaded = load(manifest.path, strict=False)
    except EnnError as exc:
        return f"not_run (the model cannot be rebuilt: {type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    return str(loaded.restore)


@dataclasses.dataclass
class TensorChange:
    """A tensor present in both checkpoints whose dtype, shape or values differ."""

    name: str
    change: str  # "values", "shape", "dtype"
    max_abs_diff: float | None
    before: str
    after: str


@dataclasses.dataclass
class CheckpointDiff:
    """What differs between two checkpoints.

    Attributes:
        config: ``{dotted key: (before, after)}`` over the spec (builder, config, in_dim, tasks...).
        metadata: the same for the user metadata.
        added / removed: tensor names only in the second / only in the first checkpoint.
        changed: tensors in both whose values (max abs difference given), shape or dtype differ.
        unchanged: how many tensors are equal bit for bit.
        formats: the two checkpoints' formats.
    """

    config: dict[str, tuple[Any, Any]]
    metadata: dict[str, tuple[Any, Any]]
    added: list[str]
    removed: list[str]
    changed: list[TensorChange]
    unchanged: int
    formats: tuple[str, str]

    @property
    def identical(self) -> bool:
        """Same spec and the same tensors bit for bit (metadata, format and times may differ)."""
        return not (self.config or self.added or self.removed or self.changed)

    def headline(self) -> str:
        if self.identical:
            return (f"Same model: identical spec and {self.unchanged} identical tensors "
                    f"({self.formats[0]} vs {self.formats[1]}).")
        return (f"{len(self.config)} config change(s), {len(self.added)} tensor(s) added, {len(self.removed)} removed, "
                f"{len(self.changed)} changed, {self.unchanged} identical.")

    def tables(self) -> list[Table]:
        out = []
        if self.config:
            rows = [[k, _short(a), _short(b)] for k, (a, b) in self.config.items()]
            out.append(Table(["key", "first", "second"], rows, title="Spec / config changes"))
        if self.metadata:
            rows = [[k, _short(a), _short(b)] for k, (a, b) in self.metadata.items()]
            out.append(Table(["key", "first", "second"], rows, title="Metadata changes"))
        if self.added or self.removed:
            rows = [[n, "added (only in the second)"] for n in self.added]
            rows += [[n, "removed (only in the first)"] for n in self.removed]
            out.append(Table(["tensor", "change"], rows, title="Tensors added / removed"))
        if self.changed:
            rows = [[c.name, c.change, "-" if c.max_abs_diff is None else f"{c.max_abs_diff:.3e}", c.before, c.after]
                    for c in self.changed]
            columns = ["tensor", "change", "max abs diff", "first", "second"]
            out.append(Table(columns, rows, title="Tensors changed"))
        return out

    def __repr__(self) -> str:
        return "\n\n".join([self.headline(), *(repr(t) for t in self.tables())])

    def _repr_html_(self) -> str:
        return f"<p><b>{html.escape(self.headline())}</b></p>" + "".join(t._repr_html_() for t in self.tables())


def diff(first: str | os.PathLike[str], second: str | os.PathLike[str]) -> CheckpointDiff:
    """Compare two checkpoints of any formats: spec, metadata, tensor names, shapes, dtypes and values.

    Tensor data is read with hash verification, so a corrupt checkpoint fails here with the
    checkpoint error naming the tensor.
    """
    from enn_nb.checkpoint import inspect

    a, b = inspect(first), inspect(second)
    spec_a = {k: v for k, v in a.spec.to_dict().items() if k != "metadata"}
    spec_b = {k: v for k, v in b.spec.to_dict().items() if k != "metadata"}
    config = _dict_diff(spec_a, spec_b)
    metadata = _dict_diff(a.metadata, b.metadata)
    names_a, names_b = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    added = sorted(set(names_b) - set(names_a))
    removed = sorted(set(names_a) - set(names_b))
    common = [n for n in names_a if n in names_b]
    tensors_a, tensors_b = _read(first, common), _read(second, common)
    changed: list[TensorChange] = []
    unchanged = 0
    for name in common:
        ta, tb = tensors_a[name], tensors_b[name]
        before = f"{names_a[name].dtype} {list(names_a[name].shape)}"
        after = f"{names_b[name].dtype} {list(names_b[name].shape)}"
        if tuple(ta.shape) != tuple(tb.shape):
            changed.append(TensorChange(name, "shape", None, before, after))
        elif ta.dtype != tb.dtype:
            changed.append(TensorChange(name, "dtype", _max_abs(ta, tb), before, after))
        elif not _equal(ta, tb):
            changed.append(TensorChange(name, "values", _max_abs(ta, tb), before, after))
        else:
            unchanged += 1
    return CheckpointDiff(config, metadata, added, removed, changed, unchanged, (a.format, b.format))


def _read(path: str | os.PathLike[str], names: Sequence[str]) -> Mapping[str, Any]:
    from enn_nb.checkpoint import open_reader

    return open_reader(path).tensors(list(names), verify=True)


def _equal(a: Any, b: Any) -> bool:
    import torch

    return bool(torch.equal(a, b)) or (a.is_floating_point() and bool(torch.equal(a.isnan(), b.isnan()))
                                        and bool(torch.equal(a.nan_to_num(), b.nan_to_num())))


def _max_abs(a: Any, b: Any) -> float | None:
    try:
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    except RuntimeError:  # a dtype double() does not take
        return None


def _dict_diff(a: Any, b: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: dict[str, tuple[Any, Any]] = {}
        for key in list(a) + [k for k in b if k not in a]:
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in a:
                out[where] = (None, b[key])
            elif key not in b:
                out[where] = (a[key], None)
            else:
                out.update(_dict_diff(a[key], b[key], where))
        return out
    return {} if a == b else {prefix or "(value)": (a, b)}


def _short(value: Any) -> str:
    text = "(absent)" if value is None else json.dumps(value, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def summary(manifests: Sequence[Manifest], diff_result: CheckpointDiff | None) -> Table:
    """The top of the report: one row per checkpoint (format, tensors, size, content hash) and the diff's headline."""

    rows = [
        [Path(m.path or "").name, m.format, m.spec.builder or "-", len(m.tensors), human_size(m.tensor_bytes),
         m.content_hash[:16]]
        for m in manifests
    ]
    title = diff_result.headline() if diff_result is not None else "One checkpoint."
    return Table(["checkpoint", "format", "builder", "tensors", "size", "content hash"], rows, title=title)
