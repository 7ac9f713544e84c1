"""A model over 2 GiB of weights through the export engine: ONNX with external data and pt2, then verify.

Exports ``tests.fixtures.large_model.BigTable`` (one float32 table just over ONNX's 2 GiB protobuf limit,
cheap to fill, read by an input-dependent gather so parity checks real weights) with the engine's
defaults (isolated child, onnxruntime / torch.export parity) to ``onnx`` and ``pt2``, then re-checks
each artifact with ``enn_nb.verify`` in this process. Prints one table: seconds per step, artifact
and external-data sizes, and peak RSS of this process and of the largest child, each over the
tensor bytes. Needs ~3x the weights in free memory and ~4x on disk (``free -g``, ``df -h``).

Usage: ``python benchmarks/export_large.py [--gib 2.06] [--out out/bench-large] [--keep]``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _hwm() -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", text).group(1)) * 1024


class DescendantPeaks(threading.Thread):
    """Samples VmHWM (a peak, so sampling misses little) of every process below this one, every 0.2 s.

    The engine's workers are children of its fork server, not of this process, so getrusage's
    RUSAGE_CHILDREN never sees them (and it counts fork+exec helpers at this process's own size).
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peaks: dict[int, tuple[int, str]] = {}
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(0.2):
            self.sample()

    def sample(self) -> None:
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
        mine = {os.getpid()}
        changed = True
        while changed:
            changed = False
            for pid, ppid in parents.items():
                if ppid in mine and pid not in mine:
                    mine.add(pid)
                    changed = True
        for pid in mine - {os.getpid()}:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) * 1024
                name = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:60].decode("utf-8", "replace")
            except (OSError, AttributeError):
                continue
            if hwm > self.peaks.get(pid, (0, ""))[0]:
                self.peaks[pid] = (hwm, name)

    def largest(self) -> tuple[int, str]:
        self._stop.set()
        return max(self.peaks.values(), default=(0, "none"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0625, help="weights in GiB (default: just over 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench-large")
    parser.add_argument("--backends", default="onnx,pt2")
    parser.add_argument("--keep", action="store_true", help="keep the artifacts")
    args = parser.parse_args()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "inductor"))
    # torch writes precompiled C++ headers to the system temp folder whatever the cache dir says
    os.environ.setdefault("TORCHINDUCTOR_CPP_CACHE_PRECOMPILE_HEADERS", "0")
    sys.path.insert(0, str(ROOT))

    import torch

    import enn_nb
    from tests.fixtures.large_model import BigTable

    base = _hwm()
    t0 = time.perf_counter()
    model = BigTable(int(args.gib * 2**30)).eval()
    nbytes = model.table.numel() * model.table.element_size()
    build_s = time.perf_counter() - t0
    shutil.rmtree(args.out, ignore_errors=True)
    rows: list[tuple[str, str]] = [("weights", f"{nbytes / 2**30:.3f} GiB in one tensor ({build_s:.1f} s to fill)")]
    try:
        watcher = DescendantPeaks()
        watcher.start()
        t0 = time.perf_counter()
        report = enn_nb.export(model, args.backends, out_dir=args.out, example_inputs=torch.randn(2, 4), cache=False)
        export_s = time.perf_counter() - t0
        parent_export_peak, (child_peak, child_name) = _hwm(), watcher.largest()
        rows.append(("export (isolated, parity on)", f"{export_s:.1f} s for {args.backends}; capture "
                     f"{report.capture_s:.1f} s, shared ONNX {report.onnx_s or 0:.1f} s"))
        for result in report.results:
            artifact = Path(result.artifact) if result.artifact else None
            sizes = ""
            if artifact is not None and artifact.exists():
                files = [artifact, *artifact.parent.glob(artifact.name + ".data")]
                sizes = ", ".join(f"{f.name} {f.stat().st_size / 2**30:.3f} GiB" for f in files)
            timings = ", ".join(f"{k} {v:.1f} s" for k, v in (result.timings or {}).items())
            rows.append((f"  {result.backend}", f"{result.status}, parity max abs err {result.max_abs_err}, {timings}; {sizes}"))
        del model
        for result in report.results:
            if result.status != "ok":
                continue
            t0 = time.perf_counter()
            checked = enn_nb.verify(result.artifact)
            rows.append((f"verify {result.backend}", f"{'ok' if checked.ok else 'FAILED: ' + str(checked)} in "
                         f"{time.perf_counter() - t0:.1f} s (file hashes + runtime parity from the sidecar)"))
        rows.append(("peak RSS, this process", f"{(parent_export_peak - base) / 2**30:.2f} GiB during the export = "
                     f"{(parent_export_peak - base) / nbytes:.2f}x the weights; {(_hwm() - base) / 2**30:.2f} GiB "
                     "by the end of the verifies"))
        rows.append(("peak RSS, largest worker", f"{child_peak / 2**30:.2f} GiB = {child_peak / nbytes:.2f}x the weights "
                     f"(sampled VmHWM of the processes below this one; it was `{child_name.strip()[:40]}...`)"))
    finally:
        if not args.keep:
            shutil.rmtree(args.out, ignore_errors=True)
    width = max(len(k) for k, _ in rows)
    print(f"export_large: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
