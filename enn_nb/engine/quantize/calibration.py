"""Calibration and evaluation inputs: what the user gave (tensor, tuples, DataLoader, callable, file), checked.

Everything becomes a list of input tuples (one tuple of tensors per batch) checked against the export's
signature. An iterable is read up to :data:`CAP` batches (an endless one stops there, with a warning).
With no data, inputs are drawn from the signature and labelled ``drawn``: accuracy on synthetic inputs
predicts nothing, and every place that shows the figures says so.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb.errors import CalibrationError

if TYPE_CHECKING:
    import torch

    from enn_nb.model.signature import TensorSig

#: The most batches read from an iterable: an endless generator stops here (with a warning).
CAP = 256
#: Rows drawn from the signature when no data is given.
DRAWN_CALIBRATION_ROWS = 128
DRAWN_EVAL_ROWS = 64
#: The share of the user's calibration rows held back for evaluation when no ``eval_data`` is given.
HELD_BACK = 0.25

DRAWN_WARNING = (
    "no calibration data was given: `int8` was calibrated on inputs drawn from the signature, and accuracy on "
    "synthetic inputs predicts nothing about real data. Pass `calibration=` (CLI: --calibration FILE)."
)


@dataclasses.dataclass
class DataSets:
    """The batches a quantized export calibrates on and evaluates on, and where each came from."""

    calibration: list[tuple[torch.Tensor, ...]]
    evaluation: list[tuple[torch.Tensor, ...]]
    calibration_source: str  # "user" | "drawn"
    evaluation_source: str  # "eval_data" | "held-back calibration" | "drawn"

    @property
    def drawn(self) -> bool:
        return self.calibration_source == "drawn"

    def describe(self) -> dict[str, Any]:
        return {
            "calibration": {"source": self.calibration_source, "batches": len(self.calibration),
                            "rows": rows(self.calibration)},
            "evaluation": {"source": self.evaluation_source, "batches": len(self.evaluation),
                           "rows": rows(self.evaluation)},
        }


def rows(batches: Sequence[Sequence[Any]]) -> int:
    return sum(int(b[0].shape[0]) if b and getattr(b[0], "dim", lambda: 0)() else 1 for b in batches)


def prepare(calibration: Any, eval_data: Any, sigs: Sequence[TensorSig],
            draw: Callable[[int, int], tuple[torch.Tensor, ...]]) -> DataSets:
    """The calibration and evaluation batches of one export.

    Args:
        calibration / eval_data: the user's data (see :func:`collect`), or None.
        sigs: the export's input signature; every batch is checked against it.
        draw: ``draw(batch, seed)`` making inputs from the signature.

    Raises:
        InputMismatchError: a batch that does not fit the signature (names expected and received).
        CalibrationError: empty data, NaN/inf values, an unreadable file, an unsupported type.
    """
    calib = collect(calibration, sigs, "calibration") if calibration is not None else None
    evaluation = collect(eval_data, sigs, "eval_data") if eval_data is not None else None
    if calib is None:
        warnings.warn(DRAWN_WARNING, UserWarning, stacklevel=3)
        calib, calib_source = [draw(DRAWN_CALIBRATION_ROWS, 1001)], "drawn"
    else:
        calib_source = "user"
    if evaluation is not None:
        return DataSets(calib, evaluation, calib_source, "eval_data")
    if calib_source == "user":
        kept, held = hold_back(calib)
        if held:
            return DataSets(kept, held, calib_source, "held-back calibration")
    return DataSets(calib, [draw(DRAWN_EVAL_ROWS, 2002)], calib_source, "drawn")


def hold_back(batches: list[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """``(calibration, evaluation)``: the last quarter of the batches (or of the rows of a single batch)."""
    if len(batches) >= 4:
        cut = len(batches) - max(1, int(len(batches) * HELD_BACK))
        return batches[:cut], batches[cut:]
    if len(batches) == 1 and batches[0] and batches[0][0].dim() >= 1 and batches[0][0].shape[0] >= 8:
        n = int(batches[0][0].shape[0])
        cut = n - max(2, int(n * HELD_BACK))
        return [tuple(t[:cut] for t in batches[0])], [tuple(t[cut:] for t in batches[0])]
    return batches, []


def collect(data: Any, sigs: Sequence[TensorSig], what: str) -> list[tuple[torch.Tensor, ...]]:
    """The user's data as checked input tuples.

    Accepted: a tensor / numpy array (one batch of a one-input model); a tuple of tensors (one batch);
    a list of tensors or of tuples (batches); a ``DataLoader`` or any iterable of those (read up to
    :data:`CAP` batches; a ``(inputs, target)`` pair from a labelled loader gives its inputs when the
    model takes one input); a callable returning any of these; a ``.safetensors`` file whose tensors are
    named like the inputs (``values`` or ``values.0``, ``values.1``... for several batches).
    """
    import numpy as np
    import torch

    if isinstance(data, (str, os.PathLike)):
        return _checked(read_file(Path(data), [s.name for s in sigs], what), sigs, what)
    if callable(data) and not isinstance(data, (torch.Tensor, np.ndarray)) and not hasattr(data, "__iter__"):
        try:
            data = data()
        except Exception as exc:
            raise CalibrationError(f"`{what}` is a callable that raised {type(exc).__name__}: {exc}. It should return "
                                   "input batches (a tensor, tuples of tensors, or an iterable of them).") from exc
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return _checked([(data,)], sigs, what)
    if isinstance(data, tuple) and data and all(isinstance(t, (torch.Tensor, np.ndarray)) for t in data) \
            and len(data) == len(sigs) and len(sigs) > 1:
        return _checked([data], sigs, what)
    if isinstance(data, (bytes, bytearray, dict)) or not isinstance(data, Iterable):
        raise CalibrationError(
            f"`{what}` is a {type(data).__name__}; give a tensor, a tuple of tensors (one batch), a list of batches, "
            "a DataLoader or any iterable of batches, a callable returning them, or a .safetensors file of inputs.")
    batches = []
    for i, item in enumerate(data):
        if i >= CAP:
            warnings.warn(f"`{what}` yielded more than {CAP} batches; the first {CAP} are used (enn_nb's cap, so that "
                          "an endless iterable stops).", UserWarning, stacklevel=3)
            break
        batches.append(_as_tuple(item, len(sigs)))
    if not batches:
        raise CalibrationError(f"`{what}` is empty: it yielded no batch. Give at least one batch of inputs; nothing was "
                               "written.")
    return _checked(batches, sigs, what)


def _as_tuple(item: Any, count: int) -> tuple[Any, ...]:
    import numpy as np
    import torch

    if isinstance(item, (torch.Tensor, np.ndarray)):
        return (item,)
    if isinstance(item, dict):
        return tuple(item.values())
    items = tuple(item) if isinstance(item, (list, tuple)) else (item,)
    if count == 1 and len(items) == 2 and all(isinstance(t, (torch.Tensor, np.ndarray)) for t in items):
        return items[:1]  # (inputs, target) from a labelled DataLoader
    return items


def _checked(batches: list[tuple[Any, ...]], sigs: Sequence[TensorSig], what: str) -> list[tuple[torch.Tensor, ...]]:
    import numpy as np
    import torch

    from enn_nb.model import signature as sig

    out = []
    for i, batch in enumerate(batches):
        tensors = tuple(torch.from_numpy(np.asarray(t)) if isinstance(t, np.ndarray) else t for t in batch)
        where = what if len(batches) == 1 else f"{what}[{i}]"
        sig.check_inputs(sigs, tensors, where=where)
        for s, t in zip(sigs, tensors):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise CalibrationError(f"`{where}` input `{s.name}` holds {bad} NaN/inf value(s); calibration ranges "
                                       "would be meaningless. Clean or drop those rows; nothing was written.")
        out.append(tuple(t.detach().cpu() for t in tensors))
    return out


def read_file(path: Path, names: Sequence[str], what: str) -> list[tuple[Any, ...]]:
    """Batches from a ``.safetensors`` file: ``name`` (one batch) or ``name.0``, ``name.1``... per input."""
    if path.suffix != ".safetensors":
        raise CalibrationError(f"`{what}` file `{path}` is not a .safetensors file; save inputs with "
                               "`enn_nb.engine.quantize.save_inputs(path, batches, names)` or safetensors' save_file.")
    if not path.is_file():
        raise CalibrationError(f"`{what}` file `{path}` does not exist.")
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise CalibrationError(f"`{what}` file `{path}` cannot be read as safetensors: {exc}") from exc
    if all(n in tensors for n in names):
        return [tuple(tensors[n] for n in names)]
    batches = []
    i = 0
    while all(f"{n}.{i}" in tensors for n in names):
        batches.append(tuple(tensors[f"{n}.{i}"] for n in names))
        i += 1
    if not batches:
        raise CalibrationError(f"`{what}` file `{path}` holds {sorted(tensors)[:8]}; the model's inputs are "
                               f"{list(names)}: name the tensors like them (`{names[0]}`, or `{names[0]}.0`, "
                               f"`{names[0]}.1`... for several batches).")
    return batches


def save_inputs(path: str | os.PathLike[str], batches: Sequence[Sequence[Any]], names: Sequence[str]) -> Path:
    """Write batches of inputs as a ``.safetensors`` file :func:`read_file` (and ``--calibration``) reads."""
    import torch
    from safetensors.torch import save_file

    out = {f"{n}.{i}": torch.as_tensor(t).contiguous() for i, batch in enumerate(batches) for n, t in zip(names, batch)}
    save_file(out, str(path))
    return Path(path)


def rebatch(batches: Sequence[Sequence[Any]], size: int | None) -> list[list[Any]]:
    """The same rows as numpy batches of exactly ``size`` rows (a static artifact's batch); None: unchanged."""
    import numpy as np

    arrays = [[np.asarray(t) for t in b] for b in batches]
    if size is None:
        return arrays
    try:
        joined = [np.concatenate(parts) for parts in zip(*arrays)]
    except ValueError:  # rows of different non-batch shapes: keep the batches of the right size only
        return [b for b in arrays if b[0].shape[0] == size]
    n = joined[0].shape[0] // size
    return [[a[i * size:(i + 1) * size] for a in joined] for i in range(n)]
