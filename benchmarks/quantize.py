"""Quantized exports through enn_nb vs the same quantizers called directly, printed as a table.

For the reference model and the zoo's GRU forecaster (and, with ``--models wide``, the reference model at
d_model=256: 1.06M parameters, where the weights outweigh each format's overhead), per backend x mode:

- size: the quantized artifact / the float artifact of the same backend (target: every int8 artifact <= 0.35x);
  beside it, the weights alone: the bytes of the constant tensors read back from each artifact
  (``readback.weight_bytes``), quantized / float -- what quantization shrinks, apart from the graph, names,
  per-channel scales and metadata the format keeps or adds;
- latency: quantized / float at batch 1 and 8, one intra-op thread, median of >= 20 calls (IQR shown);
  static artifacts (LiteRT) at their own batch only; CoreML cannot run off macOS;
- accuracy change: RMSE of the difference / the float output's std (worst output) on one evaluation set,
  for enn_nb's artifact and for the raw call's (target: enn_nb's <= the raw call's);
- export time: enn_nb (its shared capture / ONNX export + the quantized row's conversion) vs the raw calls
  (torch.export or torch.onnx.export + the quantizer + the converter), both in this process after an
  untimed warm-up of every converter, with the same intra-op threads (``--threads``, default 1);
  ``--reps N`` rounds, enn_nb's export and the raw calls interleaved, medians with min-max (target <= 1.15x).

The raw side calls each library the way its documentation shows: ``onnxruntime.quantization``
(``quantize_static`` QDQ / ``quantize_dynamic``), torchao's ``prepare_pt2e``/``convert_pt2e`` with
ExecuTorch's ``XNNPACKQuantizer`` then ``to_edge_transform_and_lower``, ``litert_torch.convert`` then
``ai_edge_quantizer``, ``coremltools.convert`` then ``coremltools.optimize.coreml.linear_quantize_weights``,
the same PT2E flow with ``X86InductorQuantizer`` then ``torch.export.save`` (pt2) or
``aoti_compile_and_package`` (aoti).
Both sides get the same calibration batches (256 rows of N(0, 1) features in batches of 32, seeded) and
are evaluated on the same 128 rows.
Run: ``OMP_NUM_THREADS=1 python benchmarks/quantize.py [--models reference,gru,wide] [--backends onnx] [--reps 5]``.

Measured (2 shared cores, one thread, --reps 1): int8 size/float on the reference (18k parameters) 0.82x onnx,
0.72x executorch, 0.68x litert, with the weights alone at 0.28-0.32x -- the format's overhead outweighs the
weights; on ``wide`` (1.06M) 0.27x onnx, 0.27x executorch, 0.28x litert (weights 0.25-0.26x), RMSE/std
0.47% / 0.31% / 1.40%. The raw LiteRT call fails on both (``tfl.greater`` on the Scaler's float64 is
illegal; enn_nb demotes float64 first), so its raw columns stay empty.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

PLAN = {"onnx": ["int8", "int8-weights", "fp16"], "executorch": ["int8", "int8-weights"],
        "litert": ["int8", "int8-weights"], "coreml": ["fp16", "int8-weights"], "pt2": ["int8", "int8-weights"],
        "aoti": ["int8"]}


# The reference model at a device size where the weights dominate the file (1.06M parameters, 4.3 MB float,
# vs 18k for the reference): at 18k the int8 artifacts' format overhead (ONNX QDQ nodes and names, LiteRT
# per-channel zero points and op tables, the ExecuTorch program) outweighs the weights, so the size target
# cannot tell the quantizer's work from the container's. 100 training steps: the loss has dropped (1.89 ->
# 0.36 held-out), enough for realistic weight and activation ranges, at ~25 s on one thread.
WIDE = {"d_model": 256, "heads": 8, "depth": 2}


# -- models and data ------------------------------------------------------------------------------------------
class Forward(torch.nn.Module):
    """``forward_export`` of a model as its forward (what enn_nb exports)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        call = getattr(self.model, "forward_export", None)
        return call(x) if callable(call) else self.model(x)


def models(names: list[str]) -> dict[str, tuple[torch.nn.Module, tuple[int, ...]]]:
    from enn_nb.reference import train_reference, zoo

    unknown = sorted(set(names) - {"reference", "gru", "wide"})
    if unknown:
        raise SystemExit(f"quantize.py: unknown model(s) {', '.join(unknown)}; choose from reference, gru, wide")
    out: dict[str, tuple[torch.nn.Module, tuple[int, ...]]] = {}
    if "reference" in names:
        ref = train_reference(seed=0)
        out["reference"] = (ref, (int(ref.in_dim),))
    if "gru" in names:
        out["gru"] = (zoo.gru_forecaster(), tuple(zoo.example_inputs("gru_forecaster")[0].shape[1:]))
    if "wide" in names:
        wide = train_reference(seed=0, steps=100, **WIDE)
        out["wide"] = (wide, (int(wide.in_dim),))
    return out


def data(shape: tuple[int, ...]) -> tuple[list[torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    calib = [torch.randn(32, *shape, generator=gen) for _ in range(8)]
    return calib, torch.randn(128, *shape, generator=gen)


def rmse_rel(expected: np.ndarray, got: np.ndarray) -> float:
    diff = got.astype(np.float64) - expected.astype(np.float64)
    return float(np.sqrt(np.mean(diff * diff)) / expected.std())


# -- the raw calls ------------------------------------------------------------------------------------------------
def raw_onnx(module: torch.nn.Module, example: torch.Tensor, mode: str, calib: list[torch.Tensor], out: Path) -> Path:
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    float_path = out / "raw-float.onnx"
    dims = ({0: torch.export.Dim("batch", min=1)},)
    torch.onnx.export(module, (example,), str(float_path), dynamo=True, dynamic_shapes=dims, external_data=False,
                      input_names=["features"])
    target = out / f"raw-{mode}.onnx"
    if mode == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16
        from onnxruntime.transformers.onnx_model import OnnxModel

        model = OnnxModel(convert_float_to_float16(onnx.load(str(float_path)), keep_io_types=True))
        model.topological_sort()
        onnx.save(model.model, str(target))
    elif mode == "int8-weights":
        quantize_dynamic(str(float_path), str(target), weight_type=QuantType.QInt8)
    else:
        class Reader:
            def __init__(self) -> None:
                self.items = iter([{"features": b.numpy()} for b in calib])

            def get_next(self) -> Any:
                return next(self.items, None)

        quantize_static(str(float_path), str(target), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True)
    return target


def raw_executorch(module: torch.nn.Module, example: torch.Tensor, mode: str, calib: list[torch.Tensor],
                   out: Path) -> Path:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    dims = ({0: torch.export.Dim("batch", min=1, max=64)},)
    dynamic = mode == "int8-weights"
    ep = torch.export.export(module, (example,), dynamic_shapes=dims)
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                                is_dynamic=dynamic))
    prepared = prepare_pt2e(ep.module(), quantizer)
    with torch.no_grad():
        for batch in calib[:1] if dynamic else calib:
            prepared(batch)
    qep = torch.export.export(convert_pt2e(prepared), (example,), dynamic_shapes=dims)
    program = to_edge_transform_and_lower(qep, partitioner=[XnnpackPartitioner()]).to_executorch()
    target = out / f"raw-{mode}.pte"
    target.write_bytes(program.buffer)
    return target


def raw_litert(module: torch.nn.Module, example: torch.Tensor, mode: str, calib: list[torch.Tensor],
               out: Path) -> Path:
    import litert_torch
    from ai_edge_quantizer import quantizer as aq
    from ai_edge_quantizer import recipe

    float_path = out / "raw-float.tflite"
    litert_torch.convert(module, (example,)).export(str(float_path))
    qt = aq.Quantizer(str(float_path))
    qt.load_quantization_recipe(recipe.dynamic_wi8_afp32() if mode == "int8-weights" else recipe.static_wi8_ai8())
    result = None
    if qt.need_calibration:
        rows = torch.cat(calib)
        batch = int(example.shape[0])
        samples = [{"args_0": rows[i:i + batch].numpy()} for i in range(0, len(rows) - batch + 1, batch)]
        result = qt.calibrate({"serving_default": samples})
    target = out / f"raw-{mode}.tflite"
    target.write_bytes(bytes(qt.quantize(result, enable_progress_report=False).quantized_model))
    return target


def raw_coreml(module: torch.nn.Module, example: torch.Tensor, mode: str, calib: list[torch.Tensor],
               out: Path) -> Path:
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    ep = torch.export.export(module, (example,)).run_decompositions({})
    precision = ct.precision.FLOAT16 if mode == "fp16" else ct.precision.FLOAT32
    model = ct.convert(ep, convert_to="mlprogram", inputs=[ct.TensorType(name="features", shape=tuple(example.shape))],
                       minimum_deployment_target=ct.target.iOS17, compute_precision=precision)
    if mode == "int8-weights":
        config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric",
                                                                                  dtype="int8", weight_threshold=0))
        model = cto.linear_quantize_weights(model, config=config)
    target = out / f"raw-{mode}.mlpackage"
    model.save(str(target))
    return target


def raw_pt2(module: torch.nn.Module, example: torch.Tensor, mode: str, calib: list[torch.Tensor], out: Path,
            *, compile_aoti: bool = False) -> Path:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    dims = ({0: torch.export.Dim("batch", min=1, max=64)},)
    dynamic = mode == "int8-weights"
    ep = torch.export.export(module, (example,), dynamic_shapes=dims)
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_dynamic=dynamic))
    prepared = prepare_pt2e(ep.module(), quantizer)
    with torch.no_grad():
        for batch in calib[:1] if dynamic else calib:
            prepared(batch)
    qep = torch.export.export(convert_pt2e(prepared), (example,), dynamic_shapes=dims)
    if compile_aoti:
        from enn_nb.engine.cache import ensure_inductor_cache

        ensure_inductor_cache()
        return Path(torch._inductor.aoti_compile_and_package(qep, package_path=str(out / f"raw-{mode}.aoti.pt2")))
    target = out / f"raw-{mode}.pt2"
    torch.export.save(qep, str(target))
    return target


def raw_aoti(module: torch.nn.Module, example: torch.Tensor, mode: str, calib: list[torch.Tensor], out: Path) -> Path:
    return raw_pt2(module, example, mode, calib, out, compile_aoti=True)


RAW = {"onnx": raw_onnx, "executorch": raw_executorch, "litert": raw_litert, "coreml": raw_coreml, "pt2": raw_pt2,
       "aoti": raw_aoti}


def size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    extra = path.with_name(path.name + ".data")
    return path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)


# -- running artifacts ----------------------------------------------------------------------------------------------
def runner(backend: str, path: Path) -> Any:
    """The enn_nb backend's own loader, one intra-op thread (the raw artifact runs through it too)."""
    from enn_nb.engine.registry import get_backend

    b = get_backend(backend)
    if b.runtime_unavailable_reason():
        return None
    option = b.thread_option
    return b.load(path, {**b.default_options, **({option: 1} if option else {})})


def outputs(run: Any, x: torch.Tensor, batch: int) -> np.ndarray:
    rows = len(x) - len(x) % batch
    return np.concatenate([run([x[i:i + batch].numpy()])[0] for i in range(0, rows, batch)])


def latency(run: Any, x: torch.Tensor, batch: int) -> tuple[float, float] | None:
    from enn_nb.engine.timing import sample_call

    try:
        feed = [x[:batch].numpy().copy()]
        run(feed)
    except Exception:  # a static artifact at another batch
        return None
    with torch.no_grad():
        stat = sample_call(lambda: run([feed[0].copy()]), budget_s=0.3, min_calls=20)
    return stat.median_ms, stat.iqr_ms


# -- the table ----------------------------------------------------------------------------------------------------
def bench(name: str, model: torch.nn.Module, shape: tuple[int, ...], out: Path,
          plan: dict[str, list[str]], reps: int = 1) -> list[dict[str, Any]]:
    """The rows of one model. Export time: ``reps`` rounds, each an enn_nb export then every raw call
    (interleaved, so a change in the machine's load falls on both sides); medians and min-max are shown."""
    import enn_nb
    from enn_nb.engine.quantize.readback import read_back
    from enn_nb.engine.registry import get_backend
    from enn_nb.engine.safe import export_safe

    calib, evaluation = data(shape)
    example = torch.randn(2, *shape)
    pairs = [(backend, mode) for backend, modes in plan.items() for mode in modes]
    enn_times: dict[tuple[str, str], list[float]] = {p: [] for p in pairs}
    raw_times: dict[tuple[str, str], list[float]] = {p: [] for p in pairs}
    raw_paths: dict[tuple[str, str], Path | None] = {}
    raw_errors: dict[tuple[str, str], str | None] = {}
    report = None
    for rep in range(reps):
        started = time.perf_counter()
        this = enn_nb.export(model, list(plan), out_dir=out / f"{name}-enn-{rep}", example_inputs=(example,),
                             quantize=plan, calibration=calib, eval_data=evaluation, isolate=False, cache=False)
        total = time.perf_counter() - started
        print(f"{name}: enn_nb export of {len(this.results)} rows in {total:.1f} s (round {rep + 1}/{reps})", flush=True)
        report = report or this  # the first round's artifacts are the ones measured below
        for pair in pairs:
            # the shared capture, the shared ONNX export only where the backend converts from it (an
            # executorch or litert row does not wait for it), and this row's conversion
            t = this[f"{pair[0]}:{pair[1]}"].timings
            onnx = t.get("onnx", 0.0) if get_backend(pair[0]).consumes == "onnx" else 0.0
            enn_times[pair].append(t.get("capture", 0.0) + onnx + t.get("convert", 0.0))
        with export_safe(model) as safe:
            module = Forward(safe.model).eval()
            for backend, mode in pairs:
                raw_dir = out / f"{name}-raw-{backend}-{rep}"
                raw_dir.mkdir(parents=True, exist_ok=True)
                t0 = time.perf_counter()
                try:
                    path: Path | None = RAW[backend](module, example, mode, calib, raw_dir)
                    error = None
                except Exception as exc:  # the raw call failing is a finding too
                    path, error = None, f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:80]}"
                if path is not None:
                    raw_times[(backend, mode)].append(time.perf_counter() - t0)
                raw_paths.setdefault((backend, mode), path)
                raw_errors.setdefault((backend, mode), error)
    assert report is not None
    rows = []
    with export_safe(model) as safe:
        module = Forward(safe.model).eval()
        with torch.no_grad():
            expected = module(evaluation).numpy()
        for backend, modes in plan.items():
            base = report[backend]
            base_run = runner(backend, Path(base.artifact)) if base.artifact else None
            static = 2 if backend == "litert" else None
            base_lat = {b: latency(base_run, evaluation, b) for b in (1, 8)} if base_run else {}
            base_weights = read_back(Path(base.artifact)).get("weight_bytes") if base.artifact else None
            for mode in modes:
                q = report[f"{backend}:{mode}"]
                raw_path, raw_error = raw_paths[(backend, mode)], raw_errors[(backend, mode)]
                enn, raw = enn_times[(backend, mode)], raw_times[(backend, mode)]
                row: dict[str, Any] = {"model": name, "backend": backend, "mode": mode, "status": q.status,
                                       "size_ratio": q.size_bytes / base.size_bytes if q.files else None,
                                       "enn_s": statistics.median(enn), "enn_range": (min(enn), max(enn)),
                                       "raw_s": statistics.median(raw) if raw else None,
                                       "raw_range": (min(raw), max(raw)) if raw else None, "raw_error": raw_error}
                held = (q.quantization or {}).get("artifact") or {}
                if base_weights and held.get("weight_bytes") is not None:
                    row["weights_ratio"] = held["weight_bytes"] / base_weights
                acc = (q.quantization or {}).get("accuracy") or {}
                row["enn_err"] = max((o["rmse_rel"] for o in acc.get("outputs") or []), default=None)
                q_run = runner(backend, Path(q.artifact)) if q.artifact else None
                raw_run = runner(backend, raw_path) if raw_path else None
                if raw_run is not None:
                    try:
                        row["raw_err"] = rmse_rel(expected[: len(evaluation) - len(evaluation) % (static or 1)],
                                                  outputs(raw_run, evaluation, static or 8))
                    except Exception as exc:  # e.g. a raw program whose batch torch.export specialised
                        row["raw_error"] = f"run: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:70]}"
                    # the raw artifact against the raw call's own float file where it writes one (its size
                    # differs from enn_nb's: other metadata), else against enn_nb's float artifact
                    raw_float = raw_path.parent / f"raw-float{raw_path.suffix}"
                    row["raw_size_ratio"] = size(raw_path) / (size(raw_float) if raw_float.exists() else base.size_bytes)
                    raw_weights = read_back(raw_path).get("weight_bytes")
                    raw_base = read_back(raw_float).get("weight_bytes") if raw_float.exists() else base_weights
                    if raw_base and raw_weights is not None:
                        row["raw_weights_ratio"] = raw_weights / raw_base
                for b in (1, 8):
                    ql = latency(q_run, evaluation, b) if q_run else None
                    fl = base_lat.get(b)
                    row[f"lat{b}"] = (ql[0] / fl[0], ql[1], fl[1]) if ql and fl else None
                rows.append(row)
    return rows


def fmt(value: Any, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="reference,gru", help="a comma-separated subset of reference, gru, "
                        "wide (the reference model at d_model=256, 1.06M parameters)")
    parser.add_argument("--backends", default=",".join(PLAN), help="a comma-separated subset of " + ", ".join(PLAN))
    parser.add_argument("--reps", type=int, default=1, help="rounds of export timing (enn_nb then the raw calls, "
                        "interleaved); the table shows medians and min-max")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both sides' exports and "
                        "every latency (set OMP_NUM_THREADS too for the native libraries)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # before anything is timed: both sides export with the same threads
    chosen = models(args.models.split(","))
    plan = {b: PLAN[b] for b in args.backends.split(",")}
    with tempfile.TemporaryDirectory(prefix="enn-quantize-bench-") as tmp:
        out = Path(tmp)
        warm_up(out, plan)
        rows = []
        for name, (model, shape) in chosen.items():
            rows += bench(name, model, shape, out, plan, reps=args.reps)
            print_table(rows)  # after each model: a long run still leaves its first tables


def warm_up(out: Path, plan: dict[str, list[str]]) -> None:
    """Every raw call once on a small MLP, untimed: the converters' imports and first-call costs are paid
    before either side is timed (enn_nb's export calls the same converters)."""
    tiny = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2)).eval()
    example = torch.randn(2, 8)
    calib, _ = data((8,))
    for backend, modes in plan.items():
        for mode in modes:
            folder = out / f"warmup-{backend}"
            folder.mkdir(parents=True, exist_ok=True)
            RAW[backend](tiny, example, mode, calib, folder)
    print("warm-up done", flush=True)


def _span(bounds: tuple[float, float] | None) -> str:
    return "-" if bounds is None else f"{bounds[0]:.2f}-{bounds[1]:.2f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ("model", "backend", "mode", "status", "size/float (raw)", "weights/float (raw)",
              "lat b1 q/f (IQR ms q, f)", "lat b8 q/f", "RMSE/std enn_nb", "RMSE/std raw",
              "export s enn/raw: median (min-max)", "ratio")
    lines = [header]
    for r in rows:
        lat = [("-" if r[f"lat{b}"] is None else f"{r[f'lat{b}'][0]:.2f}x (±{r[f'lat{b}'][1]:.2g}, ±{r[f'lat{b}'][2]:.2g})")
               for b in (1, 8)]
        ratio = r["enn_s"] / r["raw_s"] if r.get("raw_s") else None
        lines.append((r["model"], r["backend"], r["mode"], r["status"],
                      f"{fmt(r['size_ratio'])}x ({fmt(r.get('raw_size_ratio'))}x)",
                      f"{fmt(r.get('weights_ratio'))}x ({fmt(r.get('raw_weights_ratio'))}x)", lat[0], lat[1],
                      fmt(r["enn_err"], ".2%"), fmt(r.get("raw_err"), ".2%") if not r["raw_error"] else r["raw_error"],
                      f"{fmt(r['enn_s'], '.2f')} ({_span(r['enn_range'])}) / {fmt(r.get('raw_s'), '.2f')} "
                      f"({_span(r.get('raw_range'))})", fmt(ratio, ".2f", "x")))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)))
    int8 = [r for r in rows if r["mode"] == "int8" and r["size_ratio"] is not None]
    # enn_nb's figure comes from its accuracy module, the raw one from rmse_rel here: the ratio shows how far apart
    worst = max((r["enn_err"] / r["raw_err"] for r in rows
                 if r.get("raw_err") and r["enn_err"] is not None), default=float("nan"))
    times = [r["enn_s"] / r["raw_s"] for r in rows if r.get("raw_s")]
    print(f"targets: int8 size <= 0.35x: {all(r['size_ratio'] <= 0.35 for r in int8)} "
          f"(max {max((r['size_ratio'] for r in int8), default=float('nan')):.2f}x; their weights alone "
          f"<= 0.35x: {all((r.get('weights_ratio') or 9) <= 0.35 for r in int8)}); "
          f"enn_nb error <= raw: {worst <= 1.0 + 1e-3} (largest enn_nb/raw error ratio {worst:.4f}); "
          f"export time median ratio {statistics.median(times or [float('nan')]):.2f}x "
          f"(max {max(times, default=float('nan')):.2f}x)\n", flush=True)


if __name__ == "__main__":
    main()
