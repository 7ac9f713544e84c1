"""Run a sweep's tasks in this process or as Dask tasks, with one progress bar, retries counted and Ctrl-C kept.

The same task functions run either way, so the results (and the index built from them) do not depend on
where they ran. On a cluster each task is one Dask task in a worker process; a worker that dies mid-task
has its task retried by the scheduler on another worker (``allowed-failures``), and the number of deaths
a task saw is read back from the scheduler, so the index says which tasks were retried.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from enn_nb.surfaces.sweep.bar import SweepBar
from enn_nb.surfaces.sweep.cluster import Runner

#: What a task became: ``done`` (its function returned), ``failed`` (it raised, or its workers died),
#: ``cancelled`` (the sweep was interrupted before it finished).
STATES = ("done", "failed", "cancelled")


@dataclasses.dataclass
class Task:
    """One report or export: ``fn(*args)`` must be importable and picklable (a module-level function)."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]


@dataclasses.dataclass
class Outcome:
    """What one task became (see :data:`STATES`); ``retries``: how often its worker died under it."""

    task: Task
    state: str
    value: Any = None
    cause: str | None = None
    retries: int = 0


OnChange = Callable[[list[Outcome]], None]


def run_tasks(tasks: Sequence[Task], runner: Runner, *, desc: str, progress: bool = True,
              on_change: OnChange | None = None) -> list[Outcome]:
    """Run every task; ``on_change(finished outcomes, in task order)`` after each one finishes.

    Raises:
        KeyboardInterrupt: after cancelling the tasks not finished and calling ``on_change`` with the
            finished ones and the cancelled ones.
    """
    outcomes: list[Outcome | None] = [None] * len(tasks)

    def changed() -> None:
        if on_change is not None:
            on_change([o for o in outcomes if o is not None])

    with SweepBar(len(tasks), desc, enabled=progress) as bar:
        try:
            if runner.client is None:
                _run_here(tasks, outcomes, bar, changed)
            else:
                _run_on_dask(tasks, runner.client, outcomes, bar, changed)
        except KeyboardInterrupt:
            for i, task in enumerate(tasks):
                if outcomes[i] is None:
                    outcomes[i] = Outcome(task, "cancelled", cause="the sweep was interrupted")
            changed()
            raise
    return [o for o in outcomes if o is not None]


def _run_here(tasks: Sequence[Task], outcomes: list[Outcome | None], bar: SweepBar, changed: Callable[[], None]) -> None:
    for i, task in enumerate(tasks):
        bar.set_running(1)
        try:
            outcomes[i] = Outcome(task, "done", task.fn(*task.args))
        except Exception as exc:  # one bad task does not stop the sweep; its cause goes into the index
            outcomes[i] = Outcome(task, "failed", cause=f"{type(exc).__name__}: {str(exc).strip()[:500]}")
        bar.finished(outcomes[i].state == "failed")
        changed()
    bar.set_running(0)


def _run_on_dask(tasks: Sequence[Task], client: Any, outcomes: list[Outcome | None], bar: SweepBar,
                 changed: Callable[[], None]) -> None:
    """As many tasks in flight as the cluster has worker processes; the next one as one finishes.

    A task waiting for a slot waits here, on no worker: a worker that dies takes only the task it runs
    (the scheduler would count every task queued on it as having been there when it died).
    """
    from distributed import as_completed

    run = uuid.uuid4().hex[:8]  # keys unique on a shared scheduler: another sweep's task is never reused
    waiting = list(enumerate(tasks))
    index: dict[str, int] = {}
    pending = as_completed([], loop=client.loop, with_results=False)

    def refill() -> None:
        slots = max(_workers(client), 1) - len(index)
        for _ in range(min(slots, len(waiting))):
            i, task = waiting.pop(0)
            future = client.submit(_one_at_a_time, task.fn, *task.args, key=f"enn-nb-{task.name}-{run}", pure=False,
                                   retries=0)
            index[future.key] = i
            pending.add(future)
        bar.set_running(len(index))

    try:
        refill()
        while index:
            ready = pending.next_batch(block=False) if pending.has_ready() else []
            if not ready:
                time.sleep(0.02)
                continue
            deaths = client.run_on_scheduler(_suspicious, [f.key for f in ready])
            for future in ready:
                i = index.pop(future.key)
                outcomes[i] = _outcome(tasks[i], future, deaths.get(future.key, 0))
                bar.finished(outcomes[i].state == "failed")
                future.release()
            changed()
            refill()
    except KeyboardInterrupt:
        client.cancel([f for f in pending.futures])
        raise


def _outcome(task: Task, future: Any, deaths: int) -> Outcome:
    from distributed.scheduler import KilledWorker

    if future.status == "finished":
        return Outcome(task, "done", future.result(), retries=deaths)
    if future.status == "cancelled":
        return Outcome(task, "failed", cause="cancelled on the cluster (the scheduler or a worker went away)",
                       retries=deaths)
    exc = future.exception()
    if isinstance(exc, KilledWorker):
        last = getattr(getattr(exc, "last_worker", None), "address", None)
        cause = (f"the worker process running it died {max(deaths, 1)} time(s) (killed by a signal, out of memory or "
                 f"a crash in native code){f'; the last one was {last}' if last else ''}: see that worker's log")
        return Outcome(task, "failed", cause=cause, retries=max(deaths - 1, 0))
    return Outcome(task, "failed", cause=f"{type(exc).__name__}: {str(exc).strip()[:500]}", retries=deaths)


def _suspicious(keys: list[str], dask_scheduler: Any = None) -> dict[str, int]:
    """On the scheduler: how many workers died while running each task (the scheduler retried it that often)."""
    tasks = dask_scheduler.tasks
    return {k: int(tasks[k].suspicious) for k in keys if k in tasks}


def _workers(client: Any) -> int:
    """Worker processes of the cluster now (re-read as tasks finish: a cluster that grows gets more tasks)."""
    return len(client.scheduler_info(n_workers=-1).get("workers", {}))


#: One sweep task at a time in a worker process, whatever its thread count: an export captures the
#: process's output and switches process-wide settings while it runs.
_PROCESS_LOCK = threading.Lock()


def _one_at_a_time(fn: Callable[..., Any], *args: Any) -> Any:
    with _PROCESS_LOCK:
        return fn(*args)
