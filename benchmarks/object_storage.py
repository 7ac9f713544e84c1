"""Checkpoints on a local S3 server: enn_nb.save/load to an ``s3://`` URL next to raw s3fs plus the raw library call.

A real S3 API server (``python -m moto.server``, its own process on a free 127.0.0.1 port) and s3fs
as the client, for both sides. The state is a reference model about ``--mb`` MiB wide (512 by default).
Per format, in one child process per repetition (fresh memory), interleaved:

- save, raw: the library's own save to a local file or folder (``torch.save``, ``safetensors.torch.save_file``,
  ``torch.distributed.checkpoint.save``), then ``s3fs.put`` of it (the local file deleted after, untimed).
- save, enn_nb: ``enn_nb.save(model, "s3://...")``: streamed into one upload (DCP: torch's FsspecWriter;
  safetensors: tensor parts uploaded while they are hashed, the header part last, see
  ``enn_nb.storage_parts``), every tensor hashed (BLAKE3), the upload committed only when complete.
- load, raw: ``s3fs.get`` into a local file or folder, the library's load (``torch.load(weights_only=True,
  mmap=True)``, ``safetensors.torch.load_file``, ``dcp.load`` in place) and ``load_state_dict`` into a model.
- load, enn_nb (cold): ``enn_nb.load("s3://...")`` with an empty cache: fetched once into the cache,
  every hash verified, the model rebuilt from its spec and its recorded self-check re-run.
- load, enn_nb (cached): the same call again: the object's ETag is unchanged, nothing is downloaded.

Peak RSS: VmHWM reset before each operation; given as ``(peak - RSS before the operation) / tensor bytes``
(the saved model already exists for the saves; the loads run after it is freed and build their own).
Threads: ``torch.set_num_threads(--threads)`` (2 by default) in every child. Times are medians over
``--reps`` with the min-max spread of the enn_nb/raw ratio. Targets (issue 25): save and verified load
<= 1.15x raw, RSS <= 1.25x tensor bytes.

Usage: ``python benchmarks/object_storage.py [--mb 512] [--reps 3] [--threads 2] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("pt", "safetensors", "dcp")
NAMES = {"pt": "model.pt", "safetensors": "model.safetensors", "dcp": "model_dcp"}
TARGETS = {"time": 1.15, "rss": 1.25}


# -- the server -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def moto_server() -> Any:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).read()  # noqa: S310 - local server
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("moto.server did not start")
        yield endpoint
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def options(endpoint: str) -> dict[str, Any]:
    # long timeouts: on a loaded machine moto answers a 512 MiB request slowly, and both sides get the same
    return {"key": "bench", "secret": "bench-secret", "client_kwargs": {"endpoint_url": endpoint},
            "config_kwargs": {"read_timeout": 600, "connect_timeout": 60, "retries": {"max_attempts": 5}},
            "skip_instance_cache": True}


# -- memory and the model: the checkpoint benchmark's own ------------------------------------------------
sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint_io import _reset_peak, _status, wide_model  # noqa: E402


def _measured(fn: Callable[[], Any]) -> tuple[float, int, Any]:
    gc.collect()
    _reset_peak()
    before = _status()["VmRSS"]
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return seconds, _status()["VmHWM"] - before, result


# -- one repetition of one format (child process) ----------------------------------------------------------
def child(fmt: str, mb: int, endpoint: str, bucket: str, threads: int, work: Path) -> dict[str, Any]:
    import warnings

    import s3fs
    import torch

    import enn_nb

    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    opts = options(endpoint)
    fs = s3fs.S3FileSystem(**opts)
    run = uuid.uuid4().hex[:8]
    raw_key, enn_url = f"{bucket}/{run}/raw/{NAMES[fmt]}", f"s3://{bucket}/{run}/enn/{NAMES[fmt]}"
    local = work / NAMES[fmt]
    # warm-up: imports, thread pools, the s3fs session, on a tiny model (untimed)
    tiny = wide_model(1)
    enn_nb.save(tiny, f"s3://{bucket}/{run}/warm/{NAMES[fmt]}", storage_options=opts)
    enn_nb.load(f"s3://{bucket}/{run}/warm/{NAMES[fmt]}", storage_options=opts)
    model = wide_model(mb)
    state = model.state_dict()
    nbytes = sum(t.numel() * t.element_size() for t in state.values())

    def raw_save() -> None:
        if fmt == "pt":
            torch.save(state, local)
        elif fmt == "safetensors":
            from safetensors.torch import save_file

            save_file(state, local)
        else:
            import torch.distributed.checkpoint as dcp

            dcp.save({"model": state}, checkpoint_id=str(local), no_dist=True)
        fs.put(str(local), raw_key, recursive=fmt == "dcp")

    out: dict[str, Any] = {"format": fmt, "tensor_bytes": nbytes, "threads": threads}
    order = [("save_raw", raw_save), ("save_enn", lambda: enn_nb.save(model, enn_url, storage_options=opts))]
    for label, fn in order:
        seconds, rss, _ = _measured(fn)
        out[label] = {"s": seconds, "rss": rss}
        shutil.rmtree(local, ignore_errors=True) if local.is_dir() else local.unlink(missing_ok=True)
    del model, state
    gc.collect()

    def raw_load() -> Any:
        target = wide_model(mb)
        fs.get(raw_key, str(local), recursive=fmt == "dcp")
        if fmt == "pt":
            loaded = torch.load(local, map_location="cpu", weights_only=True, mmap=True)
        elif fmt == "safetensors":
            from safetensors.torch import load_file

            loaded = load_file(local)
        else:
            import torch.distributed.checkpoint as dcp

            loaded = target.state_dict()
            dcp.load({"model": loaded}, checkpoint_id=str(local), no_dist=True)
        target.load_state_dict(loaded)
        return target

    def enn_load() -> Any:
        return enn_nb.load(enn_url, storage_options=opts).model

    cache = Path(os.environ["ENN_NB_CACHE_DIR"])
    shutil.rmtree(cache, ignore_errors=True)
    for label, fn in (("load_raw", raw_load), ("load_enn", enn_load), ("load_enn_cached", enn_load)):
        seconds, rss, result = _measured(fn)
        out[label] = {"s": seconds, "rss": rss}
        del result
        gc.collect()
        if label == "load_raw":
            shutil.rmtree(local, ignore_errors=True) if local.is_dir() else local.unlink(missing_ok=True)
    fs.rm(f"{bucket}/{run}", recursive=True)
    shutil.rmtree(cache, ignore_errors=True)
    return out


# -- the parent: runs, then the table --------------------------------------------------------------------
def _table(results: list[dict[str, Any]], mb: int, threads: int) -> str:
    lines = [f"object storage, {mb} MiB state, moto.server on 127.0.0.1 + s3fs, torch threads {threads}, "
             f"{max(sum(r['format'] == f for r in results) for f in FORMATS)} reps (median, enn/raw ratio min-max)",
             "format       op     raw s   enn_nb s  ratio  spread        enn cached s  RSS raw  RSS enn  (x tensor bytes)"]
    verdicts = []
    for fmt in FORMATS:
        runs = [r for r in results if r["format"] == fmt]
        if not runs:
            continue
        nbytes = runs[0]["tensor_bytes"]
        for op in ("save", "load"):
            raw = [r[f"{op}_raw"]["s"] for r in runs]
            enn = [r[f"{op}_enn"]["s"] for r in runs]
            ratios = [e / r for e, r in zip(enn, raw)]
            cached = statistics.median(r["load_enn_cached"]["s"] for r in runs) if op == "load" else None
            rss_raw = max(r[f"{op}_raw"]["rss"] for r in runs) / nbytes
            rss_enn = max(r[f"{op}_enn"]["rss"] for r in runs) / nbytes
            ratio = statistics.median(ratios)
            lines.append(f"{fmt:<12} {op:<5} {statistics.median(raw):7.2f}  {statistics.median(enn):8.2f}  "
                         f"{ratio:5.2f}  {min(ratios):.2f}-{max(ratios):.2f}     "
                         f"{(f'{cached:8.2f}' if cached is not None else '       -')}      "
                         f"{rss_raw:6.2f}   {rss_enn:6.2f}")
            verdicts.append(f"{fmt} {op}: time {'meets' if ratio <= TARGETS['time'] else 'MISSES'} <= "
                            f"{TARGETS['time']}x raw ({ratio:.2f}x); RSS {'meets' if rss_enn <= TARGETS['rss'] else 'MISSES'}"
                            f" <= {TARGETS['rss']}x tensor bytes ({rss_enn:.2f}x)")
    return "\n".join(lines + [""] + verdicts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=512)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--json", type=Path, default=None, help="also write every measurement here")
    parser.add_argument("--child", nargs=3, metavar=("FORMAT", "ENDPOINT", "BUCKET"), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        fmt, endpoint, bucket = args.child
        print(json.dumps(child(fmt, args.mb, endpoint, bucket, args.threads, args.work)))
        return 0
    formats = [f for f in args.formats.split(",") if f]
    results: list[dict[str, Any]] = []
    with moto_server() as endpoint, tempfile.TemporaryDirectory(dir=ROOT / ".cache", prefix="bench-s3-") as tmp:
        import s3fs

        bucket = f"bench{uuid.uuid4().hex[:8]}"
        s3fs.S3FileSystem(**options(endpoint)).mkdir(bucket)
        env = {**os.environ, "ENN_NB_CACHE_DIR": str(Path(tmp) / "cache"), "PYTHONPATH": str(ROOT)}
        for rep in range(args.reps):
            for fmt in formats:
                work = Path(tmp) / "work"
                work.mkdir(exist_ok=True)
                proc = subprocess.run([sys.executable, __file__, "--mb", str(args.mb), "--threads", str(args.threads),
                                       "--child", fmt, endpoint, bucket, "--work", str(work)],
                                      capture_output=True, text=True, env=env, cwd=ROOT)
                if proc.returncode != 0:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    return 1
                results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(f"rep {rep + 1}/{args.reps} {fmt}: " + ", ".join(
                    f"{k} {v['s']:.2f}s" for k, v in results[-1].items() if isinstance(v, dict)), file=sys.stderr)
    print(_table(results, args.mb, args.threads))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
