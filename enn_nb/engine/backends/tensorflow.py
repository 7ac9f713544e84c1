"""TensorFlow backend: the shared single-file ONNX converted by onnx2tf into a SavedModel directory."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar

from enn_nb._optional import is_installed, require
from enn_nb.errors import BackendError
from enn_nb.engine.backends._edge_common import (
    BATCH,
    ESSENTIALS_KEY,
    both_paths_failed,
    captured_output,
    demote_float64_onnx,
    demotion_note,
    first_line,
    retrace,
)
from enn_nb.engine.backends._onnx_common import ort_runner
from enn_nb.engine.backends.base import Backend, Conversion, ExportJob, Runner, TensorInfo
from enn_nb.engine.capture import onnx_from_program
from enn_nb.engine.options import Option, defaults

SIGNATURE = "serving_default"
ESSENTIALS_ASSET = f"{ESSENTIALS_KEY}.json"
IO_ASSET = "enn_nb_io.json"


class TensorflowBackend(Backend):
    """onnx2tf (``-osd``, input layout kept with ``-kat <input>``) from the shared ONNX, then re-saved
    as a SavedModel whose ``serving_default`` signature has the job's input and output names and
    which tracks two asset files: ``enn_nb_essentials.json`` (the essentials) and ``enn_nb_io.json``.

    onnx2tf runs in a child Python process: its console output (and TensorFlow's start-up logs) stay
    out of the user's output unless it fails, and TensorFlow is not imported into the caller.

    TensorFlow's onnx2tf path cannot run float64 ``Sub`` (the reference Scaler computes in float64),
    so the ONNX given to onnx2tf is rewritten to float32 first (:func:`demote_float64_onnx`); the
    sidecar notes it, and ``details.float64_demoted.onnxruntime_max_abs_diff`` measures what the
    demotion alone changes on the example inputs (float64 ONNX vs float32 ONNX, both on onnxruntime).

    Options:
        timeout_s: limit for the onnx2tf child (default 900 s).
        keep_tflite: also keep the fp32/fp16 ``.tflite`` files onnx2tf writes, beside the SavedModel
            inside its directory under ``onnx2tf/`` (default False).
    """

    name: ClassVar[str] = "tensorflow"
    suffix: ClassVar[str] = ".savedmodel"
    description: ClassVar[str] = "TensorFlow SavedModel directory via onnx2tf (from the shared ONNX)"
    extra: ClassVar[str] = "tensorflow"
    requires: ClassVar[tuple[str, ...]] = ("onnx", "onnx2tf", "tensorflow")
    runtime_requires: ClassVar[tuple[str, ...] | None] = ("tensorflow",)
    consumes: ClassVar[str] = "onnx"
    directory_artifact: ClassVar[bool] = True
    # float32 instead of float64 scaler arithmetic, TF's own kernels: ~1e-5 on the reference.
    default_tolerance: ClassVar[tuple[float, float]] = (1e-4, 1e-4)
    options: ClassVar[tuple[Option, ...]] = (
        Option("timeout_s", float, 1800.0, "seconds onnx2tf, and the whole isolated conversion and verification, "
               "may take; past it the backend gets status `timeout`", min=1.0),
        Option("keep_tflite", bool, False, "keep the fp32/fp16 .tflite files onnx2tf writes beside the SavedModel"),
    )
    default_options: ClassVar[dict[str, Any]] = defaults(options)

    def convert(self, job: ExportJob, out_path: Path, options: dict[str, Any]) -> Conversion:
        """onnx2tf on the shared ONNX; when that fails (or its artifact cannot run) on a dynamic ONNX,
        onnx2tf on a static-shape ONNX of the same program, as calling onnx2tf directly would: the
        artifact then takes only the capture's sizes, which the sidecar and a note say."""
        opts = {**self.default_options, **options}
        for child_needs in ("onnx2tf", "tensorflow"):  # imported by the child only: check, do not import
            if not is_installed(child_needs):
                require(child_needs, purpose="the `tensorflow` backend")  # raises the install hint
        try:
            conversion = self._convert_onnx(job, job.onnx_path, out_path, opts)
            if conversion.dynamic_batch:
                self._smoke_run(out_path, job)
            return conversion
        except Exception as exc:
            if not job.dynamic_batch:
                raise
            first_error = exc
        try:
            conversion = self._convert_onnx(job, _static_onnx(job), out_path, opts)
        except Exception as static_exc:
            raise both_paths_failed(self.name, "onnx2tf", first_error, static_exc) from static_exc
        sizes = ", ".join(f"`{t.name}` {list(t.shape)}" for t in conversion.inputs)
        conversion.notes = [n for n in conversion.notes if not n.startswith("onnx2tf produced a static batch")]
        conversion.notes.insert(0, (
            f"converted from a static-shape ONNX after onnx2tf failed on the dynamic one ({first_line(first_error, 200)}): "
            f"the SavedModel accepts only the capture's sizes ({sizes})."
        ))
        conversion.path = {"name": "static-onnx", "costs": [f"static shapes: {sizes}"],
                           "dynamic_error": first_line(first_error, 500)}
        return conversion

    def _smoke_run(self, artifact: Path, job: ExportJob) -> None:
        """Run a dynamic SavedModel at the capture batch and at batch 1 (onnx2tf graphs can fail at run time)."""
        run = self.load(artifact, {})
        inputs = [t.detach().cpu().numpy() for t in job.example_inputs]
        run(inputs)
        run([a[:1] if a.ndim else a for a in inputs])

    def _convert_onnx(self, job: ExportJob, source: Path, out_path: Path, opts: dict[str, Any]) -> Conversion:
        onnx = require("onnx", purpose="the `tensorflow` backend")
        model = onnx.load(str(source))
        counts = demote_float64_onnx(model)
        tmp = Path(tempfile.mkdtemp(prefix=".tensorflow-", dir=out_path.parent))
        try:
            tf_onnx = tmp / "model_fp32.onnx"
            onnx.save(model, str(tf_onnx))
            counts_detail: dict[str, Any] = dict(counts)
            if counts["tensors"] or counts["ops"]:
                counts_detail["onnxruntime_max_abs_diff"] = _demotion_effect(source, tf_onnx, job)
            essentials = tmp / ESSENTIALS_ASSET
            essentials.write_text(json.dumps(dict(job.essentials), sort_keys=True, indent=1), encoding="utf-8")
            io_names = tmp / IO_ASSET
            io_names.write_text(json.dumps({"inputs": job.input_names, "outputs": job.output_names}), encoding="utf-8")
            if out_path.exists():
                shutil.rmtree(out_path)
            cmd = [
                sys.executable, "-m", "enn_nb.engine.backends.tensorflow",
                "--onnx", str(tf_onnx), "--work", str(tmp / "onnx2tf"), "--out", str(out_path),
                "--essentials", str(essentials), "--io", str(io_names),
                *(["--keep-tflite"] if opts["keep_tflite"] else []),
            ]
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
            try:
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, env=env, timeout=float(opts["timeout_s"]), check=False
                )
            except subprocess.TimeoutExpired as exc:
                raise BackendError(
                    f"`tensorflow`: onnx2tf did not finish within {opts['timeout_s']} s (option `timeout_s`).",
                    backend=self.name, stage="convert",
                ) from exc
            if proc.returncode != 0 or not (out_path / "saved_model.pb").exists():
                log = (proc.stdout + "\n" + proc.stderr).strip().splitlines()
                tail = "\n".join(line for line in log[-40:])
                raise BackendError(
                    f"`tensorflow`: onnx2tf failed (exit code {proc.returncode}) on `{source.name}`.\n"
                    f"--- onnx2tf output (tail) ---\n{tail}",
                    backend=self.name, stage="convert",
                )
            report = json.loads((out_path / "assets" / IO_ASSET).read_text(encoding="utf-8"))
            report.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        inputs = [TensorInfo.from_dict(t) for t in report["input_specs"]]
        outputs = [TensorInfo.from_dict(t) for t in report["output_specs"]]
        dynamic = bool(inputs) and inputs[0].shape[:1] == [BATCH]
        notes = [n for n in [demotion_note(counts, "TensorFlow (onnx2tf)")] if n]
        if job.dynamic_batch and not dynamic:
            notes.append("onnx2tf produced a static batch; the artifact accepts only the capture batch.")
        return Conversion(
            artifact=out_path,
            inputs=inputs,
            outputs=outputs,
            format={
                "name": "TensorFlow SavedModel",
                "signature": SIGNATURE,
                "tensorflow": report["tensorflow"],
                "onnx2tf": report["onnx2tf"],
                "assets": [ESSENTIALS_ASSET, IO_ASSET],
            },
            dynamic_batch=dynamic,
            notes=notes,
            details={"float64_demoted": counts_detail, "onnx2tf_args": report["onnx2tf_args"]},
            embedded_metadata=True,
        )

    def load(self, artifact: Path, options: dict[str, Any]) -> Runner:
        with captured_output():  # TensorFlow logs its start-up (oneDNN, CUDA probing) from C++
            tf = require("tensorflow", purpose="running SavedModel artifacts")
            loaded = tf.saved_model.load(str(artifact))
        fn = loaded.signatures[SIGNATURE]
        names = json.loads((Path(artifact) / "assets" / IO_ASSET).read_text(encoding="utf-8"))

        def run(inputs: list[Any]) -> list[Any]:
            result = fn(**{n: tf.constant(a) for n, a in zip(names["inputs"], inputs)})
            return [result[n].numpy() for n in names["outputs"]]

        run.saved_model = loaded  # type: ignore[attr-defined]  # keeps the resources alive
        return run

    def read_metadata(self, artifact: Path) -> dict[str, str] | None:
        path = Path(artifact) / "assets" / ESSENTIALS_ASSET
        if not path.exists():
            return None
        return {str(k): str(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}


def _static_onnx(job: ExportJob) -> Path:
    """A static-shape ONNX of the shared program (every dim at its capture size), beside the shared one."""

    path = Path(job.workdir) / "tensorflow-static" / "model.onnx"
    if not path.exists():
        onnx_from_program(
            retrace(job.exported_program, job, None), path, input_names=job.input_names,
            output_names=job.output_names, essentials=job.essentials,
        )
    return path


def _demotion_effect(source: Path, demoted: Path, job: ExportJob) -> float | None:
    """Max abs difference between the float64 ONNX and its float32 rewrite on the example inputs
    (None without onnxruntime)."""
    import numpy as np

    if not is_installed("onnxruntime"):
        return None

    inputs = [t.detach().cpu().numpy() for t in job.example_inputs]
    a = ort_runner(source, {})([x.copy() for x in inputs])
    b = ort_runner(demoted, {})([x.copy() for x in inputs])
    return float(max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max() for x, y in zip(a, b)))


# -- the child process ----------------------------------------------------------------------------------
def _child(argv: Sequence[str] | None = None) -> int:
    """onnx2tf into ``--work``, then a SavedModel at ``--out`` with named signature and assets.

    Prints one JSON line last (versions, signature specs); everything else on stdout/stderr is the
    converters' own noise, shown by the parent only on failure.
    """
    parser = argparse.ArgumentParser(prog="enn_nb.engine.backends.tensorflow")
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--essentials", required=True)
    parser.add_argument("--io", required=True)
    parser.add_argument("--keep-tflite", action="store_true")
    args = parser.parse_args(argv)

    import onnx
    import onnx2tf
    import tensorflow as tf

    names = json.loads(Path(args.io).read_text(encoding="utf-8"))
    graph_inputs = [i.name for i in onnx.load(args.onnx, load_external_data=False).graph.input]
    onnx2tf_args = {
        "output_signaturedefs": True,
        "keep_shape_absolutely_input_names": graph_inputs,
        "non_verbose": True,
    }
    onnx2tf.convert(input_onnx_file_path=args.onnx, output_folder_path=args.work, **onnx2tf_args)
    converted = tf.saved_model.load(args.work)
    inner = converted.signatures[SIGNATURE]
    _, in_specs = inner.structured_input_signature
    out_keys = list(inner.structured_outputs)
    # onnx2tf names outputs output_0, output_1... in the ONNX graph's order
    out_keys.sort(key=lambda k: int(k.rsplit("_", 1)[-1]) if k.rsplit("_", 1)[-1].isdigit() else 0)
    specs = [tf.TensorSpec(in_specs[n].shape, in_specs[n].dtype, name=n) for n in names["inputs"]]

    root = tf.Module()
    root.converted = converted
    root.essentials = tf.saved_model.Asset(args.essentials)
    root.io_names = tf.saved_model.Asset(args.io)

    @tf.function(input_signature=specs)
    def serve(*inputs: Any) -> dict[str, Any]:
        out = inner(**dict(zip(names["inputs"], inputs)))
        return {name: out[key] for name, key in zip(names["outputs"], out_keys)}

    root.serve = serve
    tf.saved_model.save(root, args.out, signatures={SIGNATURE: serve})
    if args.keep_tflite:
        keep = Path(args.out) / "onnx2tf"
        keep.mkdir()
        for path in Path(args.work).glob("*.tflite"):
            shutil.copy2(path, keep / path.name)

    saved = tf.saved_model.load(args.out).signatures[SIGNATURE]

    def spec_dict(name: str, spec: Any) -> dict[str, Any]:
        shape = [BATCH if (d is None and i == 0) else ("?" if d is None else int(d)) for i, d in enumerate(spec.shape)]
        return {"name": name, "shape": shape, "dtype": spec.dtype.name}

    _, saved_in = saved.structured_input_signature
    report = {
        "tensorflow": tf.__version__,
        "onnx2tf": version("onnx2tf"),
        "onnx2tf_args": onnx2tf_args,
        "input_specs": [spec_dict(n, saved_in[n]) for n in names["inputs"]],
        "output_specs": [spec_dict(n, saved.structured_outputs[n]) for n in names["outputs"]],
    }
    sys.stdout.flush()
    print("\n" + json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_child())
