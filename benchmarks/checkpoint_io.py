"""Checkpoint I/O: enn_nb.save/load per format next to the raw library calls on the same tensors.

Builds a wide reference model (~512 MB of float32 weights by default) and, for each format, times
the raw library calls and enn_nb's, interleaved, ``--reps`` times (the best time of each is kept):

- .pt: ``torch.save`` / ``torch.load(weights_only=True, mmap=True)`` + ``load_state_dict``
- .safetensors: ``safetensors.torch.save_file`` / ``load_file`` + ``load_state_dict``
- DCP: ``torch.distributed.checkpoint.save`` / ``load`` (in place)
- a plain write of the same bytes (``file.write`` of every tensor, then fsync)

enn_nb's saves are atomic and durable (temporary file, fsync, rename) and hash every tensor with
BLAKE3 while writing it; ``torch.save`` and ``save_file`` do neither, so the raw calls are also shown
with an fsync added. enn_nb's loads verify every hash (``verify=True``, the default), which reads
every byte once more than a raw load does: they are compared with the raw load followed by one full
read of the file(s) (8 MiB chunks into one buffer); ``verify=False`` is compared with the raw load.
A verified load also re-runs the self-check recorded at save time (a forward pass at batch 2, which
reads every weight): it is timed on its own too, and a derived row gives the load without it. The
loads are also timed cold: each file's pages dropped from the page cache first (``posix_fadvise``),
so every byte comes from the disk, for the raw and the enn_nb side alike. Before each warm load,
the other side's files are dropped from the page cache and its own read once (untimed), so each
side finds only its own checkpoint cached, whatever ran before it.
Peak RSS while saving is measured in the saving process (VmHWM reset before each save) and given
relative to the tensor bytes: ``(peak RSS - RSS before the model existed) / tensor bytes``.

Scale run: with ``--mb`` above 512 (e.g. ``--mb 4096``), the three formats are also measured at
512 MiB in the same run and a second table gives, per format and operation, the time per byte at
the large size over the time per byte at 512 MiB (target <= 1.2: I/O grows linearly). Check
``free -g`` first: the jobs hold two copies of the state (the saved model and the load destination).

Every measurement runs in a child process; files go to ``--dir`` and are deleted afterwards. Each
child first writes and deletes twice the state's size (see ``_prime_disk``), and the saves take turns
at coming first in each repetition: on this VM's disk, which write came first mattered more than
which code wrote.
Usage: ``python benchmarks/checkpoint_io.py [--mb 512] [--reps 5] [--dir out/bench]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("pt", "safetensors", "dcp")
TARGETS = {"save": 1.10, "load": 1.10, "throughput": 0.80, "rss": 1.25, "scale": 1.20}
SCALE_BASE_MB = 512


# -- process memory ---------------------------------------------------------------------------------------
def _status() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {key: int(re.search(rf"{key}:\s+(\d+)", text).group(1)) * 1024 for key in ("VmRSS", "VmHWM")}


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS


# -- the model --------------------------------------------------------------------------------------------
def wide_model(mb: int) -> Any:
    """A reference model whose width makes its state about ``mb`` MiB (8·d² float32 per block, 2 blocks)."""
    from enn_nb.reference import ModelConfig, ReferenceModel

    d = max(8, int(round(math.sqrt(mb * 2**20 / 64) / 8)) * 8)
    config = ModelConfig(d_model=d, heads=4, depth=2, attention="math", fused_kernel=False, dropout=0.0)
    return ReferenceModel(config).eval()


def warm_up(directory: Path) -> None:
    """Import and exercise every code path once on a tiny model, so that neither timings nor RSS
    include first-call costs (imports, thread pools, allocator growth)."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file, save_file

    import enn_nb

    warnings.filterwarnings("ignore")
    directory.mkdir(parents=True, exist_ok=True)
    tiny = wide_model(1)
    other = wide_model(1)
    for fmt, name in (("pt", "w.pt"), ("safetensors", "w.safetensors"), ("dcp", "w_dcp")):
        path = directory / name
        enn_nb.save(tiny, path)
        enn_nb.load(path, model=other)
        enn_nb.inspect(path)
        _rm(path)
    state = tiny.state_dict()
    torch.save(state, directory / "r.pt")
    other.load_state_dict(torch.load(directory / "r.pt", weights_only=True, mmap=True))
    save_file(state, directory / "r.safetensors")
    other.load_state_dict(load_file(directory / "r.safetensors"))
    dcp.save({"model": state}, checkpoint_id=str(directory / "r_dcp"), no_dist=True)
    dcp.load({"model": other.state_dict()}, checkpoint_id=str(directory / "r_dcp"), no_dist=True)
    for name in ("r.pt", "r.safetensors", "r_dcp"):
        _rm(directory / name)
    gc.collect()


def tensor_bytes(model: Any) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    os.sync()  # earlier writes' writeback must not land inside this measurement
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _read_all(path: Path, buffer: bytearray) -> None:
    """One full read of a file (or every file of a directory) through a reused buffer."""
    for file in [path] if path.is_file() else sorted(path.iterdir()):
        with open(file, "rb", buffering=0) as fh:
            while fh.readinto(buffer):
                pass


def _prime_disk(directory: Path, nbytes: int) -> None:
    """Write and delete ``nbytes`` of scratch before timing anything.

    On a thin-provisioned virtual disk the first write to a block costs several times a rewrite
    (a 4 GiB save: 10.8 s the first time in a process, 1.8 s the next). The filesystem hands the
    freed blocks to the next files, so every measured write lands on blocks written before.
    """
    scratch = directory / "prime.bin"
    chunk = bytes(64 << 20)
    with open(scratch, "wb") as fh:
        for _ in range(max(1, nbytes // len(chunk))):
            fh.write(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    _rm(scratch)
    os.sync()


def _evict(path: Path) -> None:
    """Drop a file's (or a directory's files') pages from the page cache: the next read comes from disk.

    ``posix_fadvise(DONTNEED)`` works for the files' owner without root; the pages are clean (every
    save fsyncs), so the kernel drops them at once.
    """
    for file in [path] if path.is_file() else sorted(path.iterdir()):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _fsync_path(path: Path) -> None:
    for file in [path] if path.is_file() else sorted(path.iterdir()):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _rm(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# -- jobs (run in child processes) --------------------------------------------------------------------------
def rss_job(fmt: str, mb: int, directory: Path) -> dict[str, Any]:
    """Peak RSS of one raw and one enn_nb save, in a process holding nothing but the model."""
    import torch

    import enn_nb

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    warm_up(directory)
    base = _status()["VmRSS"]
    model = wide_model(mb)
    state = model.state_dict()
    path = directory / {"pt": "m.pt", "safetensors": "m.safetensors", "dcp": "m_dcp"}[fmt]
    if fmt == "pt":
        raw = lambda: torch.save(state, path)  # noqa: E731
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        raw = lambda: save_file(state, path)  # noqa: E731
    else:
        import warnings

        import torch.distributed.checkpoint as dcp

        warnings.filterwarnings("ignore")
        raw = lambda: dcp.save({"model": state}, checkpoint_id=str(path), no_dist=True)  # noqa: E731
    out: dict[str, Any] = {"tensor_bytes": tensor_bytes(model), "base_rss": base}
    for label, fn in (("raw", raw), ("enn_nb", lambda: enn_nb.save(model, path, format=fmt))):
        gc.collect()
        _reset_peak()
        before = _status()["VmRSS"]
        fn()
        peak = _status()["VmHWM"]
        out[label] = {"peak_over_base": peak - base, "extra": peak - before}
        _rm(path)
    return out


def job(name: str, mb: int, reps: int, directory: Path) -> dict[str, Any]:
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if name != "plain":
        warm_up(directory)
    base_rss = _status()["VmRSS"]
    build_s, model = _timed(lambda: wide_model(mb))
    other = wide_model(mb)  # the destination of loads (built once: construction is not timed)
    nbytes = tensor_bytes(model)
    results: dict[str, Any] = {"job": name, "tensor_bytes": nbytes, "tensors": len(model.state_dict()),
                               "build_s": build_s, "base_rss": base_rss, "runs": []}
    directory.mkdir(parents=True, exist_ok=True)
    ops = _plain_ops(model, directory) if name == "plain" else _format_ops(name, model, other, directory)
    _prime_disk(directory, 2 * nbytes)
    saves = [op for op in ops if op[1] == "save"]
    rest = [op for op in ops if op[1] != "save"]
    for rep in range(reps):
        # A big write leaves this VM's disk slower for the next one for a while: the saves take turns
        # at coming first (rotated each repetition), so no side always follows the other's write.
        turn = rep % len(saves) if saves else 0
        for label, kind, fn, cleanup, *prepare in saves[turn:] + saves[:turn] + rest:
            for step in prepare:
                step()
            _reset_peak()
            before = _status()["VmRSS"]
            seconds, _ = _timed(fn)
            peak = _status()["VmHWM"]
            results["runs"].append({"op": label, "kind": kind, "s": seconds, "peak_extra": peak - before})
            if cleanup:
                cleanup()
    return results


def _plain_ops(model: Any, directory: Path) -> list[tuple[str, str, Callable[[], Any], Callable[[], None] | None]]:
    from enn_nb.checkpoint.tensors import byte_view, cpu_contiguous

    views = [byte_view(cpu_contiguous(t)) for t in model.state_dict().values()]
    path = directory / "plain.bin"

    def write(sync: bool) -> None:
        with open(path, "wb") as fh:
            for view in views:
                fh.write(view)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())

    import hashlib

    import blake3

    return [("plain write", "save", lambda: write(False), lambda: _rm(path)),
            ("plain write + fsync", "save", lambda: write(True), lambda: _rm(path)),
            ("sha256, 1 thread", "info", lambda: [hashlib.sha256(v).digest() for v in views], None),
            ("blake3, 1 thread", "info", lambda: [blake3.blake3(v).digest() for v in views], None),
            ("blake3, all threads", "info",
             lambda: [blake3.blake3(v, max_threads=blake3.blake3.AUTO).digest() for v in views], None)]


def _format_ops(fmt: str, model: Any, other: Any, directory: Path) -> list[Any]:
    import torch

    import enn_nb

    suffix = {"pt": ".pt", "safetensors": ".safetensors", "dcp": ""}[fmt]
    raw_path, ours_path = directory / f"raw{suffix}", directory / f"ours{suffix}"
    state = model.state_dict()

    if fmt == "pt":
        def raw_save() -> None:
            torch.save(state, raw_path)

        def raw_load() -> None:
            other.load_state_dict(torch.load(raw_path, weights_only=True, mmap=True))

        def raw_read_only() -> None:
            torch.load(raw_path, weights_only=True, mmap=True)
    elif fmt == "safetensors":
        from safetensors.torch import load_file, save_file

        def raw_save() -> None:
            save_file(state, raw_path)

        def raw_load() -> None:
            other.load_state_dict(load_file(raw_path))

        def raw_read_only() -> None:
            load_file(raw_path)
    else:
        import warnings

        import torch.distributed.checkpoint as dcp

        warnings.filterwarnings("ignore")

        def raw_save() -> None:
            dcp.save({"model": state}, checkpoint_id=str(raw_path), no_dist=True)

        def raw_load() -> None:
            dcp.load({"model": other.state_dict()}, checkpoint_id=str(raw_path), no_dist=True)

        raw_read_only = None

    def raw_save_fsync() -> None:
        raw_save()
        _fsync_path(raw_path)

    buffer = bytearray(8 << 20)

    def raw_load_read() -> None:
        raw_load()
        _read_all(raw_path, buffer)

    def warm(own: Path, other_side: Path) -> Callable[[], None]:
        # A warm load finds its own files in the page cache and not the other side's: with two
        # checkpoints and two models held at 4 GiB, both sides' pages would not fit beside each other.
        def prepare() -> None:
            if other_side.exists():
                _evict(other_side)
            _read_all(own, buffer)
        return prepare

    ops: list[Any] = [
        ("raw save", "save", raw_save, None),
        ("raw load", "load", raw_load, None, warm(raw_path, ours_path)),
        ("raw load + full read", "load", raw_load_read, None, warm(raw_path, ours_path)),
    ]
    if raw_read_only is not None:
        ops.append(("raw read only", "info", raw_read_only, None))
    if fmt != "dcp":  # DCP's FileSystemWriter already fsyncs (sync_files=True)
        ops.append(("raw save + fsync", "save", raw_save_fsync, None))
    from enn_nb.checkpoint import selfcheck

    recorded: dict[str, Any] = {}

    def restore_check() -> None:  # what verify=True adds after the copy: the recorded forward pass
        recorded.setdefault("v", enn_nb.inspect(ours_path).self_check)
        selfcheck.check(other, recorded["v"])

    ops += [
        ("enn_nb save", "save", lambda: enn_nb.save(model, ours_path, format=fmt), None),
        ("enn_nb load", "load", lambda: enn_nb.load(ours_path, model=other), None, warm(ours_path, raw_path)),
        ("enn_nb load verify=False", "load", lambda: enn_nb.load(ours_path, model=other, verify=False), None,
         warm(ours_path, raw_path)),
        ("restore self-check", "info", restore_check, None),
        # the same loads with the files' pages dropped first: every byte comes from the disk
        ("raw load cold", "load", raw_load, None, lambda: _evict(raw_path)),
        ("raw load + full read cold", "load", raw_load_read, None, lambda: _evict(raw_path)),
        ("enn_nb load cold", "load", lambda: enn_nb.load(ours_path, model=other), None, lambda: _evict(ours_path)),
        ("enn_nb load verify=False cold", "load", lambda: enn_nb.load(ours_path, model=other, verify=False), None,
         lambda: _evict(ours_path)),
        ("enn_nb inspect", "info", lambda: enn_nb.inspect(ours_path), lambda: (_rm(ours_path), _rm(raw_path))),
    ]
    return ops


# -- orchestration and the table ------------------------------------------------------------------------------
def _run_child(name: str, args: argparse.Namespace, mb: int | None = None) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--job", name, "--mb", str(mb or args.mb),
           "--reps", str(args.reps), "--dir", str(args.dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"job {name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _best(result: dict[str, Any], op: str) -> dict[str, float]:
    runs = [r for r in result["runs"] if r["op"] == op]
    return {"s": min(r["s"] for r in runs), "max": max(r["s"] for r in runs),
            "peak_extra": max(r["peak_extra"] for r in runs)}


SPREAD_OPS = ("raw save + fsync", "raw save", "enn_nb save", "raw load + full read", "enn_nb load", "raw load",
              "enn_nb load verify=False")


def _runs(result: dict[str, Any], op: str) -> int:
    return sum(r["op"] == op for r in result["runs"])


def table(results: dict[str, dict[str, Any]]) -> str:
    plain = results["plain"]
    nbytes = plain["tensor_bytes"]
    mib = nbytes / 2**20
    plain_s = _best(plain, "plain write")["s"]
    plain_sync_s = _best(plain, "plain write + fsync")["s"]
    lines = [
        f"checkpoint_io: {mib:.0f} MiB in {plain['tensors']} tensors (wide reference model), "
        f"{os.cpu_count()} CPUs, best of the repetitions",
        f"plain write of the same bytes: {plain_s:.3f} s ({mib / plain_s:.0f} MiB/s); with fsync "
        f"{plain_sync_s:.3f} s ({mib / plain_sync_s:.0f} MiB/s)",
        f"hashing the same bytes in memory: BLAKE3 {_best(plain, 'blake3, 1 thread')['s']:.3f} s on 1 thread "
        f"(what a save adds, beside the writer), {_best(plain, 'blake3, all threads')['s']:.3f} s on all threads "
        f"(what verify=True adds); sha256 {_best(plain, 'sha256, 1 thread')['s']:.3f} s on 1 thread",
        "",
        f"{'format':<12}{'operation':<26}{'raw s':>8}{'enn_nb s':>10}{'ratio':>8}{'target':>8}  verdict",
    ]

    def row(fmt: str, label: str, raw: float | None, ours: float, target: float | None, higher_better: bool = False) -> None:
        if raw is None:
            lines.append(f"{fmt:<12}{label:<26}{'':>8}{ours:>10.3f}{'':>8}{'':>8}")
            return
        ratio = ours / raw
        ok = "" if target is None else ("ok" if (ratio >= target if higher_better else ratio <= target) else "MISS")
        tgt = "" if target is None else (f">={target:.2f}" if higher_better else f"<={target:.2f}")
        lines.append(f"{fmt:<12}{label:<26}{raw:>8.3f}{ours:>10.3f}{ratio:>8.2f}{tgt:>8}  {ok}")

    rss_rows = []
    for fmt in FORMATS:
        res = results[fmt]
        raw_save = _best(res, "raw save")
        raw_save_sync = _best(res, "raw save + fsync") if fmt != "dcp" else raw_save
        ours_save = _best(res, "enn_nb save")
        raw_load = _best(res, "raw load")["s"]
        raw_load_read = _best(res, "raw load + full read")["s"]
        # The target compares durable with durable: torch.save and save_file do not fsync, dcp.save does.
        row(fmt, "save vs raw call", raw_save["s"], ours_save["s"], TARGETS["save"] if fmt == "dcp" else None)
        if fmt != "dcp":
            lines[-1] += "  (raw not durable: info)"
            row(fmt, "save vs raw call + fsync", raw_save_sync["s"], ours_save["s"], TARGETS["save"])
        else:
            lines.append(f"{fmt:<12}{'  (dcp.save fsyncs itself)':<26}")
        row(fmt, "save throughput vs plain", None, mib / ours_save["s"], None)
        lines[-1] = (f"{fmt:<12}{'save MiB/s vs plain+fsync':<26}{mib / plain_sync_s:>8.0f}{mib / ours_save['s']:>10.0f}"
                     f"{plain_sync_s / ours_save['s']:>8.2f}{'>=0.80':>8}  "
                     f"{'ok' if plain_sync_s / ours_save['s'] >= 0.8 else 'MISS'}")
        lines.append(f"{fmt:<12}{'save MiB/s vs plain':<26}{mib / plain_s:>8.0f}{mib / ours_save['s']:>10.0f}"
                     f"{plain_s / ours_save['s']:>8.2f}{'':>8}  (plain not durable: info)")
        verified = _best(res, "enn_nb load")["s"]
        check_s = _best(res, "restore self-check")["s"]
        row(fmt, "load (verify=True)", raw_load_read, verified, TARGETS["load"])
        lines[-1] += "   (raw: load + one full read)"
        row(fmt, "  of which restore check", None, check_s, None)
        lines[-1] += "   (the recorded forward pass, timed on its own)"
        row(fmt, "  hashes only (derived)", raw_load_read, verified - check_s, TARGETS["load"])
        lines[-1] += "   (load - restore check)"
        row(fmt, "load (verify=False)", raw_load, _best(res, "enn_nb load verify=False")["s"], TARGETS["load"])
        row(fmt, "cold load (verify=True)", _best(res, "raw load + full read cold")["s"],
            _best(res, "enn_nb load cold")["s"], TARGETS["load"])
        lines[-1] += "   (pages dropped first: bytes from disk)"
        row(fmt, "cold load (verify=False)", _best(res, "raw load cold")["s"],
            _best(res, "enn_nb load verify=False cold")["s"], TARGETS["load"])
        if any(r["op"] == "raw read only" for r in res["runs"]):
            row(fmt, "  raw read only (no copy)", None, _best(res, "raw read only")["s"], None)
        row(fmt, "inspect (manifest only)", None, _best(res, "enn_nb inspect")["s"], None)
        rss = results[f"rss-{fmt}"]
        rss_rows.append((fmt, rss["raw"]["peak_over_base"] / nbytes, rss["enn_nb"]["peak_over_base"] / nbytes,
                         rss["raw"]["extra"] / 2**20, rss["enn_nb"]["extra"] / 2**20))
    lines += ["", f"spread: best / slowest of the {_runs(results['pt'], 'enn_nb save')} repetitions, seconds"]
    for fmt in FORMATS:
        res = results[fmt]
        cells = [f"{op} {_best(res, op)['s']:.3f}/{_best(res, op)['max']:.3f}" for op in SPREAD_OPS
                 if any(r["op"] == op for r in res["runs"])]
        lines.append(f"{fmt:<12}" + ";  ".join(cells))
    lines += ["", "peak RSS while saving, over the process's RSS before the model existed, / tensor bytes:",
              f"{'format':<12}{'raw':>8}{'enn_nb':>8}{'target':>8}  {'raw +MiB':>9}  {'enn_nb +MiB':>11}  verdict"]
    for fmt, raw_r, ours_r, raw_extra, extra in rss_rows:
        lines.append(f"{fmt:<12}{raw_r:>8.2f}{ours_r:>8.2f}{'<=1.25':>8}  {raw_extra:>9.0f}  {extra:>11.0f}  "
                     f"{'ok' if ours_r <= TARGETS['rss'] else 'MISS'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=512, help="approximate state size in MiB")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (best time kept, slowest shown)")
    parser.add_argument("--dir", type=Path, default=ROOT / "out" / "bench", help="scratch directory")
    parser.add_argument("--job", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = parser.parse_args()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "inductor"))
    if args.job:
        if args.job.startswith("rss-"):
            print(json.dumps(rss_job(args.job[4:], args.mb, args.dir / args.job)))
        else:
            print(json.dumps(job(args.job, args.mb, args.reps, args.dir / args.job)))
        return
    names = ("plain", *FORMATS, *(f"rss-{fmt}" for fmt in FORMATS))
    results: dict[str, Any] = {}
    small: dict[str, Any] = {}
    try:
        for name in names:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            results[name] = _run_child(name, args)
        if args.mb > SCALE_BASE_MB:
            for name in FORMATS:
                print(f"running {name} at {SCALE_BASE_MB} MiB ...", file=sys.stderr, flush=True)
                small[name] = _run_child(name, args, SCALE_BASE_MB)
    finally:
        for name in names:
            _rm(args.dir / name)
    if args.json:
        args.json.write_text(json.dumps({"results": results, f"at_{SCALE_BASE_MB}": small}, indent=1))
    print(table(results))
    if small:
        print()
        print(scale_table(results, small))


SCALE_OPS = ("raw save", "enn_nb save", "raw load", "enn_nb load", "enn_nb load verify=False")


def scale_table(big: dict[str, Any], small: dict[str, Any]) -> str:
    """Per format and operation: seconds per GiB at both sizes and their ratio (linear growth: 1.0)."""
    gib_big = big["plain"]["tensor_bytes"] / 2**30
    gib_small = small[FORMATS[0]]["tensor_bytes"] / 2**30
    lines = [f"scale: {gib_big * 1024:.0f} MiB against {gib_small * 1024:.0f} MiB, seconds per GiB (best of the "
             "repetitions), ratio = large / small",
             f"{'format':<12}{'operation':<26}{'small s/GiB':>12}{'large s/GiB':>12}{'ratio':>8}{'target':>8}  verdict"]
    for fmt in FORMATS:
        for op in SCALE_OPS:
            per_small = _best(small[fmt], op)["s"] / gib_small
            per_big = _best(big[fmt], op)["s"] / gib_big
            ratio = per_big / per_small
            verdict = "" if op.startswith("raw") else ("ok" if ratio <= TARGETS["scale"] else "MISS")
            target = "" if op.startswith("raw") else f"<={TARGETS['scale']:.2f}"
            lines.append(f"{fmt:<12}{op:<26}{per_small:>12.3f}{per_big:>12.3f}{ratio:>8.2f}{target:>8}  {verdict}")
    rss = [(fmt, big[f"rss-{fmt}"]["enn_nb"]["peak_over_base"] / big["plain"]["tensor_bytes"]) for fmt in FORMATS]
    lines.append("peak RSS while saving / tensor bytes at the large size: "
                 + ", ".join(f"{fmt} {r:.2f} ({'ok' if r <= TARGETS['rss'] else 'MISS'})" for fmt, r in rss))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
