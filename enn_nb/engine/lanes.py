"""Lanes: the backends split over worker processes, each lane converting, verifying and finishing its own."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from enn_nb.engine.cache import store, stored_names
from enn_nb.engine.finish import finish
from enn_nb.engine.plan import Emitter, Plan, cancel, stopped
from enn_nb.engine.report import ExportReport


@dataclasses.dataclass
class LaneContext:
    """What every lane of one export shares."""

    job: Any
    shared: Any
    cases: list[Any]
    verify: bool
    isolate: bool
    cache: bool
    stem: str
    out: Path
    notes: list[str]
    fast_paths: list[Any]
    common: dict[str, Any]
    report: ExportReport
    batch_dynamic: bool
    emit: Emitter
    should_stop: Callable[[], bool] | None
    lock: threading.Lock
    errors: dict[str, str] = dataclasses.field(default_factory=dict)


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


def run_lane(lane: list[Plan], worker: Any, ctx: LaneContext) -> None:
    """Convert, verify and finish each plan of ``lane`` in turn, in ``worker`` (or in this process when None)."""
    from enn_nb.engine.isolate import Task, importable_reference, run_unit

    try:
        for pos, plan in enumerate(lane):
            if stopped(ctx.should_stop):
                cancel(lane[pos:], ctx.emit)
                return
            t0 = time.perf_counter()
            stage_dir = Path(ctx.job.workdir) / plan.name
            stage_dir.mkdir()
            task = Task(
                name=plan.name,
                backend_ref=importable_reference(type(plan.backend)) or "",
                out_path=str(stage_dir / plan.backend.artifact_name(ctx.stem)),
                options=plan.options,
                verify=ctx.verify,
                tolerance=plan.tolerance,
                cases=ctx.cases,
            )
            last_stage = {"stage": "convert"}

            def on_event(event: dict[str, Any], plan: Plan = plan, last_stage: dict[str, str] = last_stage) -> None:
                last_stage["stage"] = event.get("stage", last_stage["stage"])
                ctx.emit(plan.name, event.get("stage", "convert"), event.get("status", "running"), plan.index)

            notes = list(ctx.notes)
            if worker is not None and task.backend_ref:
                unit = worker.run(task, on_event)
            else:
                if ctx.isolate and worker is not None:
                    notes.append(
                        f"ran in this process: the backend class `{type(plan.backend).__qualname__}` is defined in "
                        "`__main__` or a function, so a child process cannot import it"
                    )
                elif ctx.isolate:
                    notes.append("ran in this process: isolation needs a POSIX system")
                with ctx.lock:  # in-process conversions share this process's torch state: one at a time
                    unit = run_unit(plan.backend, ctx.job, task, on_event)
            onnx_s = (unit.get("shared_timings") or ctx.shared.timings).get("onnx")
            if onnx_s and not ctx.report.onnx_s:
                ctx.report.onnx_s = onnx_s
            plan.result = finish(plan, unit, last_stage["stage"], Path(task.out_path), notes, ctx.fast_paths,
                                 ctx.common, ctx.report, ctx.batch_dynamic, t0)
            if ctx.cache and plan.result.status == "ok" and plan.key:
                store(plan.key, ctx.out, stored_names(plan.result, ctx.out, ctx.stem, ctx.verify))
            ctx.emit(plan.name, "done", plan.result.status, plan.index)
    except Exception as exc:  # an engine bug must not hang the other lanes; the plans left get failed results
        for plan in lane:
            ctx.errors[plan.name] = f"the export engine failed: {type(exc).__name__}: {exc}"
        if len(lane) and threading.current_thread() is threading.main_thread():
            raise
