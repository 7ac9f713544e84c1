"""Lanes: the backends split over worker processes, each lane converting, verifying and finishing its own."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb.engine.cache import store, stored_names
from enn_nb.engine.finish import RunInfo, finish
from enn_nb.engine.options import TIMEOUT
from enn_nb.engine.plan import Emitter, Plan, cancel, stopped

if TYPE_CHECKING:
    from enn_nb.engine.backends.base import ExportJob
    from enn_nb.engine.capture import Shared
    from enn_nb.engine.isolate import Worker
    from enn_nb.engine.parity import Case


@dataclasses.dataclass
class LaneContext:
    """What every lane of one export shares."""

    job: ExportJob
    shared: Shared
    info: RunInfo
    cases: list[Case]
    notes: list[str]  # capture notes, copied into each backend's sidecar
    emit: Emitter
    should_stop: Callable[[], bool] | None
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    errors: dict[str, str] = dataclasses.field(default_factory=dict)
    quant: Any = None  # quantize.run.QuantData when the export makes quantized artifacts


def split_lanes(todo: list[Plan], workers: int | None) -> list[list[Plan]]:
    """Split the backends over child processes: ONNX consumers share one lane (and the one ONNX file),
    the other groups are balanced by ``Backend.cost`` (longest first onto the least loaded lane)."""
    groups: list[list[Plan]] = []
    onnx_group = [p for p in todo if p.backend.consumes == "onnx"]
    if onnx_group:
        groups.append(onnx_group)
    groups += [[p] for p in todo if p.backend.consumes != "onnx"]
    limit = workers if workers is not None else min(4, os.cpu_count() or 1)
    count = max(1, min(int(limit), len(groups)))
    lanes: list[list[Plan]] = [[] for _ in range(count)]
    loads = [0.0] * count
    for group in sorted(groups, key=lambda g: -sum(float(getattr(p.backend, "cost", 1.0)) for p in g)):
        i = loads.index(min(loads))
        lanes[i] += group
        loads[i] += sum(float(getattr(p.backend, "cost", 1.0)) for p in group)
    return [sorted(lane, key=lambda p: p.index) for lane in lanes if lane]


def run_lane(lane: list[Plan], worker: Worker | None, ctx: LaneContext) -> None:
    """Convert, verify and finish each plan of ``lane`` in turn, in ``worker`` (or in this process when None)."""
    try:
        for pos, plan in enumerate(lane):
            if stopped(ctx.should_stop):
                cancel(lane[pos:], ctx.emit)
                return
            _run_plan(plan, worker, ctx)
    except Exception as exc:  # an engine bug must not hang the other lanes; the plans left get failed results
        for plan in lane:
            ctx.errors[plan.name] = f"the export engine failed: {type(exc).__name__}: {exc}"
        if len(lane) and threading.current_thread() is threading.main_thread():
            raise


def timeout_of(plan: Plan) -> float:
    """Seconds the plan's isolated convert + verify may take: its option ``timeout_s``, else the backend's default."""

    given = plan.options.get(TIMEOUT)
    return float(given if given is not None else getattr(plan.backend, "default_timeout_s", 1800.0))


def _run_plan(plan: Plan, worker: Worker | None, ctx: LaneContext) -> None:
    from enn_nb.engine.isolate import Task, importable_reference, run_unit

    settings = ctx.info.settings
    t0 = time.perf_counter()
    stage_dir = Path(ctx.job.workdir) / plan.name
    stage_dir.mkdir()
    task = Task(
        name=plan.name,
        backend_ref=importable_reference(type(plan.backend)) or "",
        out_path=str(stage_dir / plan.artifact_name(settings.stem)),
        options=plan.options,
        verify=settings.verify,
        tolerance=plan.tolerance,
        cases=[] if plan.quantize else ctx.cases,
        quantize=plan.quantize,
        calibration=ctx.quant.calibration if plan.quantize and ctx.quant else None,
        eval_inputs=ctx.quant.eval_inputs if plan.quantize and ctx.quant else None,
    )
    last_stage = ["convert"]  # where a crashing child was

    def on_event(event: dict[str, Any]) -> None:
        last_stage[0] = event.get("stage", last_stage[0])
        ctx.emit(plan.name, event.get("stage", "convert"), event.get("status", "running"), plan.index)

    notes = list(ctx.notes)
    if worker is not None and task.backend_ref:
        unit = worker.run(task, on_event, timeout_s=timeout_of(plan))
    else:
        if settings.isolate and worker is not None:
            notes.append(
                f"ran in this process: the backend class `{type(plan.backend).__qualname__}` is defined in "
                "`__main__` or a function, so a child process cannot import it"
            )
        elif settings.isolate:
            notes.append("ran in this process: isolation needs a POSIX system")
        with ctx.lock:  # in-process conversions share this process's torch state: one at a time
            unit = run_unit(plan.backend, ctx.job, task, on_event)
    if unit.crash is not None:
        unit.stage = last_stage[0]
    onnx_s = (unit.shared_timings or ctx.shared.timings).get("onnx")
    if onnx_s and not ctx.info.report.onnx_s:
        ctx.info.report.onnx_s = onnx_s
    plan.result = finish(plan, unit, ctx.info, notes, t0)
    if settings.cache and plan.result.status == "ok" and plan.key:
        store(plan.key, settings.out, stored_names(plan.result, settings))
    ctx.emit(plan.name, "done", plan.result.status, plan.index)
