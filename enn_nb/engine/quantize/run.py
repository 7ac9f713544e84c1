"""A quantized plan through the engine: its data (parent), its conversion and evaluation (child), its status."""

from __future__ import annotations

import dataclasses
from typing import Any

from enn_nb.engine.quantize import accuracy
from enn_nb.engine.quantize.calibration import DRAWN_WARNING, DataSets, prepare


#: Rows per evaluation call of a dynamic-batch artifact (a static one runs at its own batch).
EVAL_BATCH = 8


@dataclasses.dataclass
class QuantData:
    """What every quantized plan of one export shares (numpy only: it crosses to the child processes)."""

    calibration: list[list[Any]]  # batches, each a list of arrays in input order
    eval_inputs: list[Any]  # one array per input, all evaluation rows
    eval_expected: list[Any]  # the float (eager) model's outputs on them, one array per output
    sources: dict[str, Any]  # DataSets.describe()
    drawn: bool


def prepare_data(settings: Any, model: Any, spec: Any, inputs: Any, io: Any) -> QuantData:
    """The calibration and evaluation sets, and the eager float outputs on the evaluation rows."""
    import numpy as np
    import torch

    from enn_nb.engine.inputs import case_maker
    from enn_nb.model.examples import eval_only
    from enn_nb.model.signature import flatten_outputs

    sets: DataSets = prepare(settings.calibration, settings.eval_data, io.inputs, case_maker(spec, inputs))
    joined = [torch.cat([b[i] for b in sets.evaluation]) for i in range(len(io.inputs))]
    call = model.forward_export if callable(getattr(model, "forward_export", None)) else model
    with eval_only(model), torch.no_grad():
        outs, _, _ = flatten_outputs(call(*joined))
    return QuantData(
        calibration=[[t.numpy() for t in b] for b in sets.calibration],
        eval_inputs=[t.numpy() for t in joined],
        eval_expected=[np.asarray(o.detach().cpu().numpy()) for o in outs],
        sources=sets.describe(),
        drawn=sets.drawn,
    )


# -- in the child ---------------------------------------------------------------------------------------------
def evaluate(runner: Any, inputs: list[Any], dynamic: bool, static_batch: int) -> tuple[list[Any], int]:
    """The artifact's outputs on the evaluation rows (concatenated) and how many rows ran.

    A static artifact runs at its own batch, so a remainder of fewer rows is left out.
    """
    import numpy as np

    size = EVAL_BATCH if dynamic else static_batch
    n = int(inputs[0].shape[0])
    stop = n if dynamic else n - n % size
    chunks = []
    for start in range(0, stop, size):
        end = min(start + size, stop)
        chunks.append(runner([np.ascontiguousarray(a[start:end]) for a in inputs]))
    if not chunks:
        return [], 0
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))], stop


def convert(backend: Any, job: Any, out_path: Any, options: dict[str, Any], mode: str, calibration: Any) -> Any:
    """``backend.quantize(...)`` with what the artifact really holds read back into its details."""
    from enn_nb.engine.quantize.readback import read_back

    conv = backend.quantize(job, out_path, dict(options), mode, calibration)
    if "quantization_readback" not in conv.details:  # aoti reads back the program it compiled, in its quantizer
        conv.details["quantization_readback"] = read_back(conv.artifact)
    return conv


# -- in the parent: the status -----------------------------------------------------------------------------------
def quantization_block(plan: Any, unit: Any, info: Any) -> tuple[str, dict[str, Any], str | None]:
    """``(status, sidecar quantization block, error message or None)`` of a converted quantized plan.

    ``failed`` when the artifact holds no quantized weights (a request that silently produced a float
    artifact); ``degraded`` when it is over the accuracy budget; else ``ok``.
    """
    from enn_nb.engine.quantize.modes import MODE_MEANING

    conv = unit.conversion
    settings = info.settings
    data: QuantData = info.quant
    found = dict(conv.details.pop("quantization_readback", {}) or {})
    block: dict[str, Any] = {
        "mode": plan.quantize,
        "meaning": MODE_MEANING[plan.quantize],
        "quantizer": plan.backend.quantize_modes.get(plan.quantize),
        "quantizer_call": conv.details.pop("quantizer_call", None),
        "quantizer_versions": plan.backend.versions(),
        "artifact": found,
        "data": data.sources,
        "drawn_inputs": data.drawn,
        "budget": dict(settings.accuracy_budget),
        "accuracy": None,
        "float_artifact": plan.backend.artifact_name(settings.stem),
    }
    if data.drawn:
        block["warning"] = DRAWN_WARNING
    really = _really_quantized(plan.quantize, found)
    if really is not None:
        return "failed", accuracy.finite(block), really
    if unit.eval_outputs is None:
        block["accuracy"] = {"status": "not_run", "reason": (unit.parity or {}).get("reason") or "verify=False"}
        return "ok", accuracy.finite(block), None
    got, n = unit.eval_outputs
    if n == 0:
        block["accuracy"] = {"status": "not_run", "reason": "the evaluation set has fewer rows than the artifact's "
                             "static batch"}
        return "ok", accuracy.finite(block), None
    expected = [e[:n] for e in data.eval_expected]
    try:
        figures = accuracy.measure([expected], [got], info.signature_outputs, settings.accuracy_metric)
    except ValueError as exc:
        return "failed", accuracy.finite(block), f"the quantized artifact's outputs do not match the model's: {exc}"
    broken = accuracy.over_budget(figures, dict(settings.accuracy_budget))
    figures["status"] = "degraded" if broken else "within budget"
    figures["over_budget"] = broken
    figures["evaluated_on"] = data.sources["evaluation"]["source"]
    block["accuracy"] = figures
    return ("degraded" if broken else "ok"), accuracy.finite(block), None


def _really_quantized(mode: str | None, found: dict[str, Any]) -> str | None:
    """Why the artifact is not what ``mode`` asked for (read back from it), or None."""
    if found.get("error"):
        return f"the artifact could not be read back to check its quantization: {found['error']}"
    if mode == "fp16" and not found.get("fp16_weight_fraction") and found.get("activation_dtype") != "float16":
        return ("quantize='fp16' produced an artifact with no float16 weights or compute (read back from the "
                "artifact): it is a float32 artifact, not what was asked.")
    if mode in ("int8", "int8-weights") and not found.get("int8_weight_fraction"):
        return (f"quantize={mode!r} produced an artifact whose weights are all float (read back from the artifact: "
                f"{found.get('weights', {})}); the quantizer quantized nothing (no supported op?), so this is a float "
                "artifact under a quantized name.")
    if mode == "int8" and found.get("activation_dtype") not in ("int8", "uint8", None):
        return (f"quantize='int8' asked for int8 activations but the artifact's activations are "
                f"{found.get('activation_dtype')} (read back from the artifact): this is weight-only quantization.")
    return None
