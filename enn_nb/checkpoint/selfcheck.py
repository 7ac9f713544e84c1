"""The restore self-check: two recorded input/output vectors in the manifest, re-run after a load.

``save`` runs the model once on a batch of 2 inputs drawn from its spec and stores inputs and
outputs as exact JSON numbers in ``manifest.self_check``. ``load`` runs the restored model on the
same inputs and compares: a restore that leaves the model computing something else (a buffer not
resized, a non-tensor state such as a calibration mode never set) is reported, never silent.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from enn_nb.model.examples import eval_only

from .tensors import is_dtensor, torch_dtype

if TYPE_CHECKING:
    import torch

    from enn_nb.model.spec import ModelSpec

BATCH = 2
ATOL = 1e-5
RTOL = 1e-4
MAX_VALUES = 16384  # outputs beyond this are not recorded: the manifest stays small
PASSED, FAILED, NOT_RUN = "passed", "failed", "not_run"


@dataclasses.dataclass(frozen=True)
class RestoreCheck:
    """The outcome of re-running the recorded vectors: ``status`` is passed, failed or not_run."""

    status: str
    max_abs_err: float | None = None
    reason: str = ""

    def __str__(self) -> str:
        if self.status == NOT_RUN:
            return f"not_run ({self.reason})" if self.reason else NOT_RUN
        return f"{self.status} (max abs err {self.max_abs_err:.3g})"


@contextmanager
def _quiet() -> Iterator[None]:
    # The self-check is enn_nb's own extra call: the model's warnings (e.g. eager FlexAttention's)
    # belong to the user's calls, not to every save and load.

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# -- recording at save time ---------------------------------------------------------------------------
#: From this many state bytes on, ``save`` records the self-check on a thread beside the writer: the
#: forward pass reads every weight once, which costs as much as a fifth of the save when it runs first.
#: (A safetensors header reserves room for the vectors meanwhile, at most 0.4 MiB: under 0.3% here.)
BACKGROUND_MIN_BYTES = 128 << 20
#: The longest JSON one recorded output value can take (``-2.2250738585072014e-308`` and a comma);
#: a writer that must size its header before the outputs exist reserves this much per value.
MAX_CHARS_PER_VALUE = 26


def record(model: Any, spec: ModelSpec) -> dict[str, Any] | None:
    """``{"call", "inputs", "outputs", "atol", "rtol"}`` for ``model``, or None when it cannot run.

    Never raises: a model that cannot run on inputs drawn from its spec is saved without a self-check.
    """
    job = _prepare(model, spec)
    if job is None:
        return None
    with _quiet():
        return job.run()


class Recording:
    """A self-check recorded on a background thread while a writer moves the tensor bytes.

    The writer starts it (:meth:`start`) where its own work leaves the CPU idle, inside the
    :func:`running` block the caller holds around the save. The thread only reads the model; its
    warnings are dropped by a thread-aware hook there (a ``catch_warnings`` block on a second thread
    could restore the filters out of order and leave the process's warnings switched off).
    """

    def __init__(self, job: _Job) -> None:
        self._job = job
        self._result: dict[str, Any] | None = None
        self.thread = threading.Thread(target=self._run, name="enn-nb-selfcheck", daemon=True)

    def start(self) -> None:
        """Start the forward pass (once); writers start it where the CPU would otherwise wait on the disk."""
        if self.thread.ident is None:
            self.thread.start()

    def _run(self) -> None:
        self._result = self._job.run()

    def result(self) -> dict[str, Any] | None:
        """Wait for the forward pass; the recorded vectors, or None when the model could not run."""
        if self.thread.ident is None:  # never started (no `running` block): record here and now
            with _quiet():
                return self._job.run()
        self.thread.join()
        return self._result

    def max_json_chars(self) -> int:
        """An upper bound on the recorded vectors' JSON, also once escaped into a JSON string (quotes double)."""
        return 2 * self._job.inputs_chars + MAX_VALUES * MAX_CHARS_PER_VALUE + 4096


def start(model: Any, spec: ModelSpec, state_bytes: int) -> dict[str, Any] | Recording | None:
    """The self-check for ``save``: recorded now for small states; for large ones a :class:`Recording`
    the writer starts inside a :func:`running` block, beside its own work."""
    job = _prepare(model, spec)
    if job is None:
        return None
    if state_bytes < BACKGROUND_MIN_BYTES:
        with _quiet():
            return job.run()
    return Recording(job)


def resolve(value: dict[str, Any] | Recording | None) -> dict[str, Any] | None:
    """The recorded vectors, waiting for a background recording to finish."""
    return value.result() if isinstance(value, Recording) else value


@contextmanager
def running(value: dict[str, Any] | Recording | None) -> Iterator[None]:
    """The block in which a background recording may run: its warnings are dropped; joined at the end."""
    if not isinstance(value, Recording):
        yield
        return

    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
            if threading.current_thread() is not value.thread:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        try:
            yield
        finally:
            if value.thread.ident is not None:
                value.thread.join()  # its warnings must not outlive the hook


@dataclasses.dataclass
class _Job:
    model: Any
    name: str
    call: Any
    inputs: list[Any]
    inputs_chars: int

    def run(self) -> dict[str, Any] | None:
        import torch

        try:
            with eval_only(self.model), torch.no_grad():
                outputs = _as_tensors(self.call(*self.inputs))
        except Exception:  # noqa: BLE001 - the self-check is an extra; saving must not fail because of it
            return None
        if outputs is None or sum(t.numel() for t in outputs) > MAX_VALUES:
            return None
        return {"call": self.name, "inputs": [_encode(t) for t in self.inputs],
                "outputs": [_encode(t) for t in outputs], "atol": ATOL, "rtol": RTOL}


def _prepare(model: Any, spec: ModelSpec) -> _Job | None:
    import torch

    if not isinstance(model, torch.nn.Module) or (spec.in_dim is None and not spec.has_signature) \
            or _is_sharded(model):
        return None
    try:
        if spec.has_signature:  # sequences, several inputs, integer ids: drawn from the declared signature
            from enn_nb.model.signature import draw

            inputs = draw(spec.inputs, batch=BATCH, seed=0)
        else:
            from enn_nb.model.examples import default_example_inputs

            inputs = default_example_inputs(spec, spec.in_dim, spec.feature_dtype, batch=BATCH, seed=0)
        name, call = _call(model)
        chars = len(json.dumps([_encode(t) for t in inputs], separators=(",", ":")))
    except Exception:  # noqa: BLE001 - see _Job.run
        return None
    return _Job(model, name, call, list(inputs), chars)


# -- checking at load time ------------------------------------------------------------------------------
def check(model: Any, recorded: Mapping[str, Any] | None, *, device: Any = "cpu") -> RestoreCheck:
    """Run ``model`` on the recorded inputs and compare with the recorded outputs."""
    import torch

    if not recorded:
        return RestoreCheck(NOT_RUN, reason="the checkpoint holds no recorded vectors")
    if _is_sharded(model):
        return RestoreCheck(NOT_RUN, reason="the model is sharded (DTensor); run it on every rank to check")
    try:
        inputs = [_decode(item).to(device) for item in recorded["inputs"]]
        expected = [_decode(item) for item in recorded["outputs"]]
        _name, call = _call(model, recorded.get("call"))
        with eval_only(model), torch.no_grad(), _quiet():
            got = _as_tensors(call(*inputs))
    except Exception as exc:  # noqa: BLE001 - report why, the caller decides what it means
        return RestoreCheck(FAILED, math.inf, reason=f"running the restored model failed: {type(exc).__name__}: {exc}")
    if got is None or len(got) != len(expected):
        return RestoreCheck(FAILED, math.inf, reason="the restored model returns another number of outputs")
    atol, rtol = float(recorded.get("atol", ATOL)), float(recorded.get("rtol", RTOL))
    worst, ok = 0.0, True
    for a, b in zip(got, expected):
        a = a.detach().cpu()
        if tuple(a.shape) != tuple(b.shape):
            return RestoreCheck(FAILED, math.inf, reason=f"output shape {list(a.shape)} instead of {list(b.shape)}")
        a64, b64 = a.double(), b.double()
        diff = (a64 - b64).abs()
        both_nan = torch.isnan(a64) & torch.isnan(b64)
        diff = torch.where(both_nan | (a64 == b64), torch.zeros_like(diff), diff)  # equal infinities too
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
        ok = ok and bool((diff <= atol + rtol * b64.abs().nan_to_num(posinf=0.0, neginf=0.0)).all())
    return RestoreCheck(PASSED if ok else FAILED, worst,
                        reason="" if ok else f"outputs differ from the recorded ones beyond atol={atol}, rtol={rtol}")


# -- helpers -----------------------------------------------------------------------------------------
def _call(model: Any, name: str | None = None) -> tuple[str, Any]:
    if name in (None, "forward_export") and callable(getattr(model, "forward_export", None)):
        return "forward_export", model.forward_export
    return "forward", model


def _is_sharded(model: Any) -> bool:
    return any(is_dtensor(t) for t in model.state_dict().values())


def _as_tensors(value: Any) -> list[torch.Tensor] | None:
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    from torch.utils._pytree import tree_leaves

    leaves = tree_leaves(value)  # tuples, lists, dicts (in key order): the same leaves every call
    if leaves and all(isinstance(v, torch.Tensor) for v in leaves):
        return list(leaves)
    return None


def _encode(t: torch.Tensor) -> dict[str, Any]:
    values = t.detach().cpu().reshape(-1).tolist()
    # JSON has no NaN/Infinity: those few become their repr strings; finite floats round-trip exactly.
    flat = [v if not isinstance(v, float) or math.isfinite(v) else repr(v) for v in values]
    return {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "values": flat}


def _decode(item: Mapping[str, Any]) -> torch.Tensor:
    import torch

    values = [float(v) if isinstance(v, str) else v for v in item["values"]]
    return torch.tensor(values, dtype=torch_dtype(str(item["dtype"]))).reshape(item["shape"])
