"""What every format module shares: the save request, manifest assembly and the reader protocol."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from enn_nb._fs import timestamp
from enn_nb.errors import CheckpointError, CorruptCheckpointError
from enn_nb.model.spec import ModelSpec

from .manifest import FileEntry, Manifest, TensorEntry, versions
from .selfcheck import Recording, resolve
from .tensors import OPTIMIZER_PREFIX, dtype_name, nbytes, split_tree

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass
class SaveRequest:
    """Everything a format writer needs: canonical-keyed tensors, the spec, optimizer state."""

    state: dict[str, torch.Tensor]
    spec: ModelSpec
    optimizer_state: Mapping[str, Any] | None = None
    optimizer_class: str | None = None
    source: dict[str, Any] | None = None
    created: str | None = None
    extra_state: dict[str, Any] | None = None
    #: the recorded vectors, or a :class:`~.selfcheck.Recording` still running beside the writer
    self_check: dict[str, Any] | Recording | None = None

    def __post_init__(self) -> None:
        clash = [name for name in self.state if name.startswith(OPTIMIZER_PREFIX)]
        if clash:
            raise CheckpointError(
                f"State-dict key(s) {clash[:5]} start with `{OPTIMIZER_PREFIX}`, the prefix reserved for "
                "optimizer state; rename the module."
            )

    def optimizer_parts(self) -> tuple[Any, dict[str, torch.Tensor]]:
        """The optimizer state as (JSON structure, named tensors), or (None, {})."""
        if self.optimizer_state is None:
            return None, {}
        return split_tree(self.optimizer_state, OPTIMIZER_PREFIX)


def sync_while_recording(fh: Any, request: SaveRequest) -> None:
    """Start a pending self-check and push the bytes written so far to disk meanwhile.

    Once the tensors are written the CPU would only wait for the disk: the forward pass runs in
    that wait instead of after it (run during the writes, it competes with them and the hashing for
    the cores). The final fsync then has only the manifest left to write.
    """
    if isinstance(request.self_check, Recording):
        request.self_check.start()
        fh.flush()
        os.fdatasync(fh.fileno())


def tensor_entries(tensors: Mapping[str, torch.Tensor], hashes: Mapping[str, str | None]) -> list[TensorEntry]:
    return [
        TensorEntry(name, dtype_name(t.dtype), tuple(int(d) for d in t.shape), nbytes(t), hashes.get(name))
        for name, t in tensors.items()
    ]


def build_manifest(
    fmt: str,
    request: SaveRequest,
    hashes: Mapping[str, str | None],
    *,
    optimizer_structure: Any = None,
    optimizer_tensors: Mapping[str, torch.Tensor] | None = None,
    files: list[FileEntry] | None = None,
    extra_versions: Mapping[str, str | None] | None = None,
) -> Manifest:
    optimizer = None
    if request.optimizer_state is not None:
        optimizer = {
            "class": request.optimizer_class,
            "prefix": OPTIMIZER_PREFIX,
            "structure": optimizer_structure,
            "tensors": [e.to_dict() for e in tensor_entries(optimizer_tensors or {}, hashes)],
        }
    return Manifest(
        format=fmt,
        spec=request.spec,
        tensors=tensor_entries(request.state, hashes),
        versions=versions(**dict(extra_versions or {})),
        created=request.created or timestamp(),
        files=list(files or []),
        optimizer=optimizer,
        source=request.source,
        extra_state=request.extra_state,
        self_check=resolve(request.self_check),
    )


class Reader(Protocol):
    """An open checkpoint: its manifest, then tensor data on demand."""

    manifest: Manifest

    def tensors(
        self, names: list[str], *, verify: bool, into: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """CPU tensors for ``names`` (canonical keys); DCP fills ``into`` in place when given."""
        ...

    def optimizer_state(self, *, verify: bool) -> dict[str, Any] | None:
        ...

    @property
    def verifiable(self) -> bool:
        """True when the checkpoint carries hashes that ``verify=True`` checks."""
        ...


def check_table(manifest: Manifest, found: Mapping[str, tuple[str, tuple[int, ...]]], *, where: str) -> None:
    """Compare the manifest's tensor table with what the file holds (name -> (dtype, shape)).

    Raises:
        CorruptCheckpointError: names, dtypes or shapes differ (all differences listed).
    """
    problems = []
    expected = {t.name: (t.dtype, tuple(t.shape)) for t in manifest.tensors}
    for name, (dtype, shape) in expected.items():
        if name not in found:
            problems.append(f"`{name}` is in the manifest but not in the file")
        elif found[name] != (dtype, shape):
            problems.append(f"`{name}` is {found[name][0]}{list(found[name][1])} in the file but "
                            f"{dtype}{list(shape)} in the manifest")
    for name in found:
        if name not in expected:
            problems.append(f"`{name}` is in the file but not in the manifest")
    if problems:
        raise CorruptCheckpointError(
            f"{where} does not match its manifest: " + "; ".join(problems[:10])
            + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
            + ". The file is damaged or was edited; restore it from a good copy.",
            tensor=next(iter(n for n in expected if n not in found or found[n] != expected[n]), None),
        )
