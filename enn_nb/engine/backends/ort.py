"""ORT backend: the shared ONNX converted to onnxruntime's ``.ort`` format by its own converter."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

from enn_nb.engine.backends._onnx_common import (
    QUANTIZE_MODES,
    RUNTIME_OPTIONS,
    ort_metadata,
    ort_runner,
    ort_session,
    quantize_onnx,
    session_describe,
)
from enn_nb.engine.backends.base import Backend, Conversion, ExportJob
from enn_nb.engine.options import Option, defaults

#: optimisation levels of ``convert_onnx_models_to_ort`` (its ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL)
LEVELS = ("disable", "basic", "extended", "layout", "all")
STYLES = ("Fixed", "Runtime")


class OrtBackend(Backend):
    """``.ort`` via ``python -m onnxruntime.tools.convert_onnx_models_to_ort``.

    Options: ``optimization_level`` (one of :data:`LEVELS`, default ``"extended"``: portable across
    CPUs, unlike ``"all"`` which may bake in layout transforms for this machine), ``optimization_style``
    (``"Fixed"`` default, or ``"Runtime"``), ``target_platform`` (``None``, ``"arm"`` or ``"amd64"``).
    The converter's ``required_operators`` config (input to a minimal onnxruntime build) is kept
    beside the artifact. The ONNX metadata_props survive the conversion.
    """

    name: ClassVar[str] = "ort"
    suffix: ClassVar[str] = ".ort"
    description: ClassVar[str] = "onnxruntime's ORT format (mobile / minimal builds)"
    extra: ClassVar[str] = "onnx"
    requires: ClassVar[tuple[str, ...]] = ("onnx", "onnxscript", "onnxruntime")
    runtime_requires: ClassVar[tuple[str, ...] | None] = ("onnxruntime",)
    consumes: ClassVar[str] = "onnx"
    cost: ClassVar[float] = 1.0
    default_tolerance: ClassVar[tuple[float, float]] = (1e-4, 1e-4)
    thread_option: ClassVar[str | None] = "intra_op_num_threads"
    options: ClassVar[tuple[Option, ...]] = (
        Option("optimization_level", str, "extended", "graph optimisations baked into the .ort file", choices=LEVELS),
        Option("optimization_style", str, "Fixed", "Fixed: optimised for this build; Runtime: optimised when loaded",
               choices=STYLES),
        Option("target_platform", str, None, "tune for a target CPU family", choices=(None, "arm", "amd64")),
        *RUNTIME_OPTIONS,
    )
    default_options: ClassVar[dict[str, Any]] = defaults(options)
    quantize_modes: ClassVar[dict[str, str]] = QUANTIZE_MODES
    quantize = quantize_onnx

    def convert(self, job: ExportJob, out_path: Path, options: dict[str, Any]) -> Conversion:
        level = str(options.get("optimization_level", "extended"))
        style = str(options.get("optimization_style", "Fixed"))
        if level not in LEVELS:
            raise ValueError(f"`optimization_level` is {level!r}; allowed values: {', '.join(LEVELS)}.")
        if style not in STYLES:
            raise ValueError(f"`optimization_style` is {style!r}; allowed values: {', '.join(STYLES)}.")
        source = job.onnx_path
        work = out_path.parent / f".ort-{os.getpid()}"
        src_dir, dst_dir = work / "in", work / "out"
        shutil.rmtree(work, ignore_errors=True)
        src_dir.mkdir(parents=True)
        dst_dir.mkdir()
        stem = out_path.name[: -len(self.suffix)] if out_path.name.endswith(self.suffix) else out_path.stem
        staged = src_dir / f"{stem}.onnx"
        shutil.copyfile(source, staged)
        for data in source.parent.glob(source.name + ".data"):  # external data travels with the model
            shutil.copyfile(data, src_dir / data.name)
        cmd = [
            sys.executable,
            "-m",
            "onnxruntime.tools.convert_onnx_models_to_ort",
            str(staged),
            "--output_dir",
            str(dst_dir),
            "--optimization_style",
            style,
        ]
        if options.get("target_platform"):
            cmd += ["--target_platform", str(options["target_platform"])]
        env = {**os.environ, "ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL": level}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip()[-2000:]
            raise RuntimeError(f"convert_onnx_models_to_ort exited with {proc.returncode}: {tail}")
        produced = sorted(dst_dir.glob("*.ort"))
        if len(produced) != 1:
            raise RuntimeError(f"convert_onnx_models_to_ort produced {[p.name for p in produced]}, expected one .ort file")
        os.replace(produced[0], out_path)
        extra_files: list[Path] = []
        for config in dst_dir.glob("*.config"):
            target = out_path.with_name(f"{out_path.name}.required_operators.config")
            os.replace(config, target)
            extra_files.append(target)
            break
        shutil.rmtree(work, ignore_errors=True)
        session = ort_session(out_path, {})
        inputs, outputs = session_describe(session)
        import onnxruntime

        return Conversion(
            artifact=out_path,
            inputs=inputs,
            outputs=outputs,
            extra_files=extra_files,
            format={
                "format": "ort",
                "optimization_level": level,
                "optimization_style": style,
                "onnxruntime": onnxruntime.__version__,
            },
            dynamic_batch=bool(inputs and inputs[0].shape and isinstance(inputs[0].shape[0], str)),
            embedded_metadata=True,
            details={"converter": "python -m onnxruntime.tools.convert_onnx_models_to_ort"},
        )

    def load(self, artifact: Path, options: dict[str, Any]):  # type: ignore[no-untyped-def]
        return ort_runner(artifact, options)

    def read_metadata(self, artifact: Path) -> dict[str, str] | None:
        return ort_metadata(artifact)
