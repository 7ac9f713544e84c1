"""TensorRT on a CUDA host: export the reference model, build the engine through the backend, print parity.

Self-contained device check for the ``tensorrt`` backend's CUDA half (the half CI cannot run):

1. trains the reference model (seed 0, CPU, seconds), switches its fast paths to their safe values;
2. captures it once (``torch.export``, dynamic batch) and writes the shared single-file ONNX;
3. ``TensorrtBackend.convert``: TensorRT-ready ONNX (float32, essentials in metadata_props), polygraphy
   lint, optimisation profile from ``--batch-range``, engine build, TensorRT version and compute capability;
4. runs the engine (``TensorrtBackend.load``, torch CUDA tensors) against the eager model with its fast
   paths on, at several batch sizes, and prints a table: max abs/rel error, tolerance, pass/fail, and the
   engine's latency next to eager torch on the same GPU (a side-by-side ratio, not a timed assert).

Needs on the host: torch with CUDA, ``tensorrt`` (10.x or 11.x: ``tensorrt-cu12``/``tensorrt-cu13``
bindings + libs), ``onnx``, ``onnxscript``, ``polygraphy``, ``safetensors``, numpy. Run from the repository
root: ``PYTHONPATH=. python benchmarks/trt_device_check.py [--fp16] [--out DIR]``. Exit code 0 when every
batch passes, 1 on a mismatch, 2 when this host cannot build TensorRT engines (says why).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _job(model, workdir: Path, batch_range: tuple[int, int, int]):
    import copy

    import torch

    from enn_nb.engine.backends.base import ExportJob
    from enn_nb.engine.capture import onnx_from_program
    from enn_nb.engine.wrapper import ForwardExport
    from enn_nb.model.fastpaths import declared_fast_paths
    from enn_nb.reference import sample_features

    safe = copy.deepcopy(model)
    for path in declared_fast_paths(safe):
        setattr(path.module, path.attr, path.safe_value)
    safe.eval()

    module = ForwardExport(safe).eval()
    example = (sample_features(model, 2, seed=0),)
    essentials = {"enn_nb.schema": "enn_nb.export/1", "enn_nb.check": "trt_device_check"}
    cache: dict = {}

    def program():
        if "ep" not in cache:
            cache["ep"] = torch.export.export(module, example, dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        return cache["ep"]

    def onnx_path() -> Path:
        path = workdir / "shared" / "model.onnx"
        if not path.exists():
            onnx_from_program(program(), path, input_names=["features"], output_names=["prediction"], essentials=essentials)
        return path

    return ExportJob(
        module=module, example_inputs=example, dynamic_batch=True, batch_range=batch_range,
        input_names=["features"], output_names=["prediction"], spec=None, essentials=essentials,
        workdir=workdir, get_exported_program=program, get_onnx_path=onnx_path,
    )


def _latency_ms(fn, repeats: int = 50) -> float:
    import torch

    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="folder for the ONNX, profile and engine (default: a temp folder)")
    parser.add_argument("--fp16", action="store_true", help="build with fp16 kernels (TensorRT 10.x only)")
    parser.add_argument("--batch-range", default="1,8,64", help="min,opt,max batch of the profile")
    parser.add_argument("--batches", default="1,7,64", help="batch sizes checked for parity")
    args = parser.parse_args(argv)

    from enn_nb.engine.backends.tensorrt import TensorrtBackend, build_unavailable_reason

    reason = build_unavailable_reason()
    if reason:
        print(f"trt_device_check: cannot run here: {reason}.", file=sys.stderr)
        return 2
    import numpy as np
    import torch

    from enn_nb.reference import sample_features, train_reference

    batch_range = tuple(int(b) for b in args.batch_range.split(","))
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="trt-check-"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = train_reference(seed=0).eval()
    t_train = time.perf_counter() - started
    job = _job(model, out / "work", batch_range)  # type: ignore[arg-type]
    started = time.perf_counter()
    assert job.onnx_path.is_file()
    t_onnx = time.perf_counter() - started
    backend = TensorrtBackend()
    started = time.perf_counter()
    conv = backend.convert(job, out / "model.engine", {"fp16": args.fp16})
    t_build = time.perf_counter() - started
    assert conv.deferred is None, conv.deferred
    engine = conv.details["engine"]
    print(f"TensorRT {engine['tensorrt']} on {engine['gpu']} (compute capability {engine['compute_capability']}, "
          f"CUDA {engine['cuda']}); train {t_train:.1f} s, capture+ONNX {t_onnx:.1f} s, lint+build {t_build:.1f} s")
    print(f"profile {json.dumps(conv.details['profile'])}; lint {conv.details['lint']['status']}; "
          f"float64 demoted {conv.details['float64_demoted']}")
    runner = backend.load(conv.artifact, {})
    atol, rtol = (1e-2, 1e-2) if args.fp16 else backend.default_tolerance
    gpu_model = model.to("cuda")
    header = f"{'batch':>5}  {'max abs err':>11}  {'max rel err':>11}  {'pass':>4}  {'trt ms':>7}  {'eager ms':>8}  {'eager/trt':>9}"
    print(header)
    ok = True
    for i, batch in enumerate(int(b) for b in args.batches.split(",")):
        x = sample_features(model, batch, seed=100 + i)
        with torch.no_grad():
            expected = gpu_model.forward_export(x.to("cuda")).double().cpu().numpy()
        (got,) = runner([x.numpy()])
        err = np.abs(got.astype(np.float64) - expected)
        rel = float((err / np.maximum(np.abs(expected), 1e-30)).max())
        passed = bool(np.all(err <= atol + rtol * np.abs(expected)))
        ok = ok and passed
        xs, x_cuda = x.numpy(), x.to("cuda")
        trt_ms = _latency_ms(lambda xs=xs: runner([xs]))
        with torch.no_grad():
            eager_ms = _latency_ms(lambda x_cuda=x_cuda: gpu_model.forward_export(x_cuda))
        print(f"{batch:>5}  {err.max():>11.3e}  {rel:>11.3e}  {'yes' if passed else 'NO':>4}  {trt_ms:>7.3f}  "
              f"{eager_ms:>8.3f}  {eager_ms / trt_ms:>8.2f}x")
    print(f"tolerance atol={atol:g} rtol={rtol:g}; engine {conv.artifact} ({conv.artifact.stat().st_size} bytes); "
          "trt ms include host<->device copies of inputs and outputs")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
