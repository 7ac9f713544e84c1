"""Model-zoo benchmark: models x backends, enn_nb next to the raw converter called directly on the same model.

Each cell: ``enn_nb status (max abs err) | raw status (max abs err)``. The raw side is what a user
would write without enn_nb - the converter's plain call on the model and its example inputs, run once
on those inputs (static shapes):

- onnx / ort: ``torch.onnx.export(model, args, dynamo=True)``; onnxruntime (ORT: its ``.ort`` save)
- pt2: ``torch.export.export``; aoti: ``aoti_compile_and_package`` + ``aoti_load_package``
- executorch: ``to_edge_transform_and_lower(ep, [XnnpackPartitioner()]).to_executorch()``, its runtime
- litert: ``litert_torch.convert(model, args)``, called with ``args``
- coreml: ``coremltools.convert(ep.run_decompositions({}))`` (converts only: prediction needs macOS)
- tensorflow: onnx2tf on the static ONNX, input layout kept (``keep_shape_absolutely_input_names``),
  in a child process

enn_nb's side is one ``enn_nb.export`` per model (dynamic batch, its own parity cases at batch 1
and 7, fallbacks recorded). Target: no cell where the raw converter passes and enn_nb does not.
Run: ``python benchmarks/model_zoo.py [--models a,b] [--backends onnx,pt2]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("onnx", "ort", "pt2", "aoti", "executorch", "litert", "coreml", "tensorflow")


def _err(got: Any, expected: Any) -> float:
    import numpy as np
    from torch.utils._pytree import tree_leaves

    g = [np.asarray(x.detach().numpy() if hasattr(x, "detach") else x, dtype=np.float64) for x in tree_leaves(got)]
    e = [np.asarray(x.detach().numpy(), dtype=np.float64) for x in tree_leaves(expected)]
    if len(g) != len(e) or any(a.shape != b.shape for a, b in zip(g, e)):
        raise RuntimeError(f"outputs differ in count/shape: {[a.shape for a in g]} vs {[b.shape for b in e]}")
    return max(float(abs(a - b).max()) for a, b in zip(g, e))


# -- the raw converters ----------------------------------------------------------------------------------
def raw_cell(backend: str, model: Any, inputs: tuple[Any, ...], expected: Any, work: Path) -> tuple[str, float | None]:
    import torch

    onnx_path = work / "raw.onnx"

    def raw_onnx() -> Path:
        if not onnx_path.exists():
            torch.onnx.export(model, inputs, str(onnx_path), dynamo=True, external_data=False)
        return onnx_path

    def ort_run(path: Path, so: Any = None) -> Any:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})

    if backend == "onnx":
        return "ok", _err(ort_run(raw_onnx()), expected)
    if backend == "ort":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.optimized_model_filepath = str(work / "raw.ort")
        so.add_session_config_entry("session.save_model_format", "ORT")
        ort.InferenceSession(str(raw_onnx()), sess_options=so, providers=["CPUExecutionProvider"])
        return "ok", _err(ort_run(work / "raw.ort"), expected)
    ep = torch.export.export(model, inputs)
    if backend == "pt2":
        return "ok", _err(ep.module()(*inputs), expected)
    if backend == "aoti":
        package = torch._inductor.aoti_compile_and_package(ep, package_path=str(work / "raw.pt2"))
        return "ok", _err(torch._inductor.aoti_load_package(package)(*inputs), expected)
    if backend == "executorch":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
        from executorch.runtime import Runtime

        program = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
        method = Runtime.get().load_program(program.buffer).load_method("forward")
        return "ok", _err(list(method.execute(list(inputs))), expected)
    if backend == "litert":
        import litert_torch

        edge = litert_torch.convert(model, inputs)
        return "ok", _err(edge(*inputs), expected)
    if backend == "coreml":
        import coremltools as ct

        ct.convert(ep.run_decompositions({}), convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16)
        return "converted", None
    if backend == "tensorflow":
        import numpy as np

        np.savez(work / "inputs.npz", *[t.numpy() for t in inputs])
        proc = subprocess.run([sys.executable, __file__, "--raw-tf", str(raw_onnx()), str(work)],
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError((proc.stderr or proc.stdout).strip().splitlines()[-1][:200])
        outputs = [np.load(work / f"tf_out_{i}.npy") for i in range(int(proc.stdout.strip().splitlines()[-1]))]
        return "ok", _err(outputs, expected)
    raise KeyError(backend)


def _raw_tf_child(onnx_file: str, work: str) -> int:
    """onnx2tf on a static ONNX with the input layout kept, then the SavedModel run on the saved inputs."""
    import numpy as np
    import onnx
    import onnx2tf
    import tensorflow as tf

    names = [i.name for i in onnx.load(onnx_file, load_external_data=False).graph.input]
    out = Path(work) / "raw_tf"
    onnx2tf.convert(input_onnx_file_path=onnx_file, output_folder_path=str(out), output_signaturedefs=True,
                    keep_shape_absolutely_input_names=names, non_verbose=True)
    fn = tf.saved_model.load(str(out)).signatures["serving_default"]
    data = np.load(Path(work) / "inputs.npz")
    result = fn(**{n: tf.constant(data[f"arr_{i}"]) for i, n in enumerate(names)})
    keys = sorted(result, key=lambda k: int(k.rsplit("_", 1)[-1]) if k.rsplit("_", 1)[-1].isdigit() else 0)
    for i, key in enumerate(keys):
        np.save(Path(work) / f"tf_out_{i}.npy", result[key].numpy())
    print(len(keys))
    return 0


# -- one model ----------------------------------------------------------------------------------------------
def run_model(name: str, backends: list[str]) -> dict[str, dict[str, Any]]:
    import torch

    import enn_nb
    from enn_nb.engine.registry import get_backend
    from enn_nb.reference import zoo

    available = [b for b in backends if get_backend(b).unavailable_reason() is None]
    model = zoo.FACTORIES[name]()
    inputs = zoo.example_inputs(name)
    with torch.no_grad():
        expected = model(*inputs)
    row: dict[str, dict[str, Any]] = {b: {} for b in backends}
    spec = enn_nb.ModelSpec.from_model(model, inputs)
    with tempfile.TemporaryDirectory(prefix=f"zoo-{name}-") as tmp:
        started = time.perf_counter()
        report = enn_nb.export(model, available, out_dir=Path(tmp) / "enn", spec=spec, cache=False)
        enn_s = time.perf_counter() - started
        for r in report.results:
            side = json.loads(Path(r.sidecar).read_text())
            path = side.get("conversion_path") or {}
            status = r.status
            if status == "ok" and r.parity.get("status") == "skipped":
                status = "converted"
            label = path.get("name", "shared")
            if label == "shared" and path.get("costs"):
                label = "cast"  # the artifact takes another dtype (LiteRT's int32), fed by a recorded cast
            row[r.backend]["enn"] = (status, r.max_abs_err, label, (r.error or "")[:120])
        for backend in available:
            work = Path(tmp) / f"raw-{backend}"
            work.mkdir()
            try:
                # the converters print progress to stdout: keep it for the table
                with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):
                    status, err = raw_cell(backend, model, inputs, expected, work)
                row[backend]["raw"] = (status, err, "", "")
            except Exception as exc:  # the raw tool failing is a result of this benchmark
                row[backend]["raw"] = ("failed", None, "", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ''}")
                if os.environ.get("ZOO_TRACEBACKS"):
                    traceback.print_exc()
        for backend in backends:
            row[backend].setdefault("enn", ("unavailable", None, "", ""))
            row[backend].setdefault("raw", ("unavailable", None, "", ""))
        row["_enn_s"] = {"enn": enn_s}  # type: ignore[assignment]
    return row


def _cell(entry: tuple[str, float | None, str, str]) -> str:
    status, err, path, _ = entry
    text = status if err is None else f"{status} {err:.0e}"
    return f"{text} [{path}]" if path and path != "shared" else text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="comma-separated zoo model names (default: all)")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the raw results as JSON")
    parser.add_argument("--raw-tf", nargs=2, metavar=("ONNX", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.raw_tf:
        return _raw_tf_child(*args.raw_tf)
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "inductor"))
    os.environ.setdefault("TORCHINDUCTOR_CPP_CACHE_PRECOMPILE_HEADERS", "0")
    from enn_nb.reference import zoo

    models = args.models.split(",") if args.models else list(zoo.FACTORIES)
    backends = args.backends.split(",")
    table: dict[str, Any] = {}
    worse: list[str] = []
    for name in models:
        table[name] = run_model(name, backends)
        for b in backends:
            enn, raw = table[name][b]["enn"], table[name][b]["raw"]
            if raw[0] in ("ok", "converted") and enn[0] not in ("ok", "converted"):
                worse.append(f"{name} x {b}: enn_nb {enn[0]} ({enn[3]}), raw {raw[0]}")
        print(f"done {name} (enn_nb export {table[name]['_enn_s']['enn']:.0f}s)", file=sys.stderr, flush=True)
    print("cell: enn_nb status (max abs err) [path when a fallback made it] | raw converter status (max abs err)\n")
    print("| model | " + " | ".join(backends) + " |")
    print("|---|" + "---|" * len(backends))
    for name in models:
        cells = [f"{_cell(table[name][b]['enn'])} \\| {_cell(table[name][b]['raw'])}" for b in backends]
        print(f"| {name} | " + " | ".join(cells) + " |")
    failures = [(n, b, side, table[n][b][side][3]) for n in models for b in backends for side in ("enn", "raw")
                if table[n][b][side][0] == "failed"]
    if failures:
        print("\nfailures:")
        for n, b, side, why in failures:
            print(f"- {n} x {b} ({'enn_nb' if side == 'enn' else 'raw'}): {why}")
    print("\nraw passes and enn_nb does not: " + ("; ".join(worse) if worse else "none"))
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1, default=str))
    return 1 if worse else 0


if __name__ == "__main__":
    raise SystemExit(main())
