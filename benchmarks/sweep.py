"""A report sweep in this process vs on a LocalCluster of 2 and 4 workers, and Dask's cost per task.

8 small checkpoints x (onnx, ort, pt2) export reports (``enn_nb.report_batch``, batch size 2), run
serially, on ``local:2`` and on ``local:4``; each run has an empty export cache and one intra-op
thread per process (OMP/MKL_NUM_THREADS=1), so the runs differ only in how many reports run at once.
A cluster's wall time includes starting it (its workers import torch on their first task). Then the
per-task overhead: a task that returns at once, and one small export (pt2, 1 checkpoint, in the
process that runs it), in this process vs on a warm ``local:2`` (median and spread of --repeat runs).
Run: ``python benchmarks/sweep.py [--checkpoints 8] [--repeat 5]``; the last lines put the figures on
paper for a nightly of 100 checkpoints on 10 workers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

BACKENDS = ["onnx", "ort", "pt2"]
TARGET_SPEEDUP_2 = 1.6
TARGET_OVERHEAD_S = 0.5


def make_checkpoints(folder: Path, n: int) -> Path:
    import torch

    import enn_nb
    from enn_nb.reference import train_reference

    model = train_reference(seed=0, steps=20, n_sensors=2, n_steps=24 * 7, d_model=8, heads=2, depth=1,
                            n_knots=4, horizon=2)
    first = next(p for p in model.parameters() if p.is_floating_point())
    for i in range(n):
        with torch.no_grad():
            first.add_(1e-3)  # other weights: no report reuses another's export from the cache
        enn_nb.save(model, folder / f"ckpt{i:02d}.safetensors")
    return folder


def sweep(pattern: str, out: Path, cluster: str | None) -> tuple[float, bool]:
    import enn_nb

    os.environ["ENN_NB_CACHE_DIR"] = tempfile.mkdtemp(prefix="enn-sweep-cache-")  # kernels, workers inherit it
    start = time.perf_counter()
    batch = enn_nb.report_batch("export_report", pattern, out, cluster=cluster, progress=False,
                                backends=BACKENDS, batch_sizes=[2])
    return time.perf_counter() - start, batch.ok


def overhead(folder: Path, repeat: int) -> list[tuple[str, list[float], list[float]]]:
    from enn_nb.surfaces.sweep import local_cluster
    from enn_nb.surfaces.sweep.cluster import Runner
    from enn_nb.surfaces.sweep.engine import Task, run_tasks
    from enn_nb.surfaces.sweep.exports import _export_task

    ckpt = str(next(folder.glob("*.safetensors")))

    def tiny(i: int) -> Task:
        return Task(f"tiny-{i}", _noop, (i,))

    def export(i: int, work: Path) -> Task:
        return Task(f"export-{i}", _export_task, (ckpt, str(work / f"e{i}"), "pt2", None, [], {"cache": False}))

    def timed(runner: Runner, make) -> list[float]:  # noqa: ANN001
        times = []
        for i in range(repeat):
            start = time.perf_counter()
            (outcome,) = run_tasks([make(i)], runner, desc="overhead", progress=False)
            assert outcome.state == "done", outcome.cause
            times.append(time.perf_counter() - start)
        return times

    rows = []
    with tempfile.TemporaryDirectory() as work, local_cluster(2) as client:
        here, there = Runner(None, "this process"), Runner(client, "local:2")
        run_tasks([export(99, Path(work))], there, desc="warm", progress=False)  # workers import torch once
        run_tasks([export(98, Path(work))], here, desc="warm", progress=False)
        for name, make in (("a task returning at once", tiny), ("one pt2 export", lambda i: export(i, Path(work)))):
            rows.append((name, timed(here, make), timed(there, make)))
    return rows


def _noop(i: int) -> int:
    return i


def spread(values: list[float]) -> str:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return f"{statistics.median(values):7.3f} s (IQR {q[2] - q[0]:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workers", default="2,4", help="LocalCluster sizes to compare with the serial run")
    args = parser.parse_args()
    os.environ.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})  # before torch; kernels and workers inherit it
    with tempfile.TemporaryDirectory(prefix="enn-sweep-bench-") as tmp:
        folder = make_checkpoints(Path(tmp) / "ckpts", args.checkpoints)
        pattern = str(folder / "*.safetensors")
        print(f"{args.checkpoints} checkpoints x ({', '.join(BACKENDS)}) export reports; load average before: "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
        runs = [("serial (this process)", None)] + [(f"local:{n}", f"local:{n}") for n in args.workers.split(",")]
        results = []
        for label, cluster in runs:
            wall, ok = sweep(pattern, Path(tmp) / label.split()[0].replace(":", "-"), cluster)
            results.append((label, wall, ok))
            print(f"  {label}: {wall:.1f} s, all passed: {ok}, load average {os.getloadavg()[0]:.1f}", flush=True)
        serial = results[0][1]
        print(f"\n{'run':24} {'wall s':>8} {'per report s':>13} {'vs serial':>10}  all passed")
        for label, wall, ok in results:
            print(f"{label:24} {wall:8.1f} {wall / args.checkpoints:13.1f} {serial / wall:9.2f}x  {ok}")
        two = next((serial / w for label, w, _ in results if label == "local:2"), None)
        if two is not None:
            print(f"target: local:2 >= {TARGET_SPEEDUP_2}x serial -> {'met' if two >= TARGET_SPEEDUP_2 else 'NOT met'}"
                  f" ({two:.2f}x)")

        print(f"\nper-task cost of going through Dask ({args.repeat} runs each, warm local:2)")
        print(f"{'task':28} {'this process':>24} {'local:2':>24} {'overhead s':>11}")
        worst = 0.0
        for name, here, there in overhead(folder, args.repeat):
            cost = statistics.median(there) - statistics.median(here)
            worst = max(worst, cost)
            print(f"{name:28} {spread(here):>24} {spread(there):>24} {cost:11.3f}")
        print(f"target: overhead per task <= {TARGET_OVERHEAD_S} s -> {'met' if worst <= TARGET_OVERHEAD_S else 'NOT met'}")

        per_report = serial / args.checkpoints
        print(f"\non paper: a nightly of 100 checkpoints at this machine's {per_report:.0f} s per report (this set of "
              f"backends) is {100 * per_report / 3600:.1f} h serially; on 10 single-core workers about "
              f"{100 * per_report / 10 / 60 + worst * 10 / 60:.0f} min (10 rounds of 10, plus {worst:.2f} s "
              "Dask overhead per task and the workers' start), if each worker has its own core and memory.")


if __name__ == "__main__":
    main()
