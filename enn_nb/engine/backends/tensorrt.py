"""TensorRT backend: an engine built from the shared ONNX on a CUDA host, or a deferred, buildable plan.

Two halves, both real:

* **On a CUDA host with ``tensorrt`` importable**: the TensorRT-ready ONNX is parsed, an engine is
  built with one optimisation profile (min/opt/max batch) and run through the TensorRT runtime
  for parity (inputs/outputs as torch CUDA tensors). The sidecar records the TensorRT version and the
  GPU's compute capability: an engine runs only on the GPU model and TensorRT version it was built with.
* **Anywhere else** (no ``tensorrt``, or no CUDA device): status ``deferred``, never a fake success.
  The TensorRT-ready ONNX (``<stem>.trt.onnx``, essentials in ``metadata_props``) is written, checked
  with ``onnx.checker`` (full check) and linted with ``polygraphy check lint``; the profile is written
  as JSON (``<stem>.trt-profile.json``) and the sidecar's ``details.build`` holds the exact
  ``trtexec`` command and ``enn-nb build-trt SIDECAR``, so the engine can be built later from the
  sidecar alone: ``TensorrtBackend.complete`` builds it and the engine's
  :func:`enn_nb.engine.complete.complete` verifies it and rewrites the sidecar as an export would.

Profile defaults: ``min``/``opt``/``max`` batch = the export's ``batch_range`` (``(1, 8, 64)`` by
default), overridable with the options ``min_batch``/``opt_batch``/``max_batch``; every other dim is
the captured one. A static capture gives min = opt = max.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from enn_nb._fs import write_bytes
from enn_nb._optional import install_line, is_installed, require
from enn_nb._safeio import confined, escape, plain_name
from enn_nb.errors import BackendError, ExportError, PlatformUnavailableError
from enn_nb.engine.backends._edge_common import demote_float64_onnx, demotion_note
from enn_nb.engine.backends._onnx_common import describe
from enn_nb.engine.backends.base import Backend, Conversion, ExportJob, Runner, TensorInfo
from enn_nb.engine.options import Option, defaults
from enn_nb.engine.sidecar import sha256_file

SIDECAR_SUFFIX = ".enn.json"

_TORCH_DTYPES = {
    "FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
    "INT32": "int32", "INT64": "int64", "BOOL": "bool",
}


class TensorrtBackend(Backend):
    """ONNX -> TensorRT engine (``.engine``) on a CUDA host; a deferred build plan elsewhere.

    Converting needs only ``onnx`` and ``polygraphy`` (the deferred half runs everywhere); building
    and running the engine need ``tensorrt`` and a CUDA GPU (torch with CUDA moves the tensors).

    Options:
        min_batch / opt_batch / max_batch: the optimisation profile's batch sizes (default: the
            export's ``batch_range``).
        fp16: allow fp16 kernels (default False). TensorRT 10.x: the ``FP16`` builder flag. TensorRT
            11.x removed precision flags (networks are strongly typed): the build then fails with a
            message naming the ModelOpt AutoCast step that makes an fp16 ONNX. Pass
            ``tolerances=(1e-2, 1e-2)`` for fp16 engines.
        tf32: allow TF32 for fp32 matmuls on Ampere+ (default False: fp32 parity).
        workspace_mb: the builder's workspace memory pool limit (default 2048 MiB).
        builder_optimization_level: 0-5 (default: TensorRT's own, 3).
        lint: lint the ONNX with polygraphy (default True).
    """

    name: ClassVar[str] = "tensorrt"
    suffix: ClassVar[str] = ".engine"
    description: ClassVar[str] = "TensorRT engine (.engine) built on a CUDA host; a deferred build plan elsewhere"
    extra: ClassVar[str] = "tensorrt"
    requires: ClassVar[tuple[str, ...]] = ("onnx", "polygraphy")
    runtime_requires: ClassVar[tuple[str, ...] | None] = ("tensorrt",)
    consumes: ClassVar[str] = "onnx"
    # GPU kernels (cuBLAS GEMMs, fused softmax/layernorm) reorder fp32 sums; TF32 is off by default.
    default_tolerance: ClassVar[tuple[float, float]] = (1e-3, 1e-3)
    options: ClassVar[tuple[Option, ...]] = (
        Option("min_batch", int, None, "the optimisation profile's smallest batch (None: batch_range's min)", min=1),
        Option("opt_batch", int, None, "the batch TensorRT tunes for (None: batch_range's opt)", min=1),
        Option("max_batch", int, None, "the optimisation profile's largest batch (None: batch_range's max)", min=1),
        Option("fp16", bool, False, "allow fp16 kernels (TensorRT 10 and older; 11.x builds strongly typed networks)"),
        Option("tf32", bool, False, "allow TF32 matrix multiplies on Ampere and newer GPUs"),
        Option("workspace_mb", int, 2048, "the builder's workspace memory limit in MiB", min=1),
        Option("builder_optimization_level", int, None, "TensorRT builder optimisation level", min=0, max=5),
        Option("lint", bool, True, "lint the TensorRT-ready ONNX with polygraphy before planning the build"),
    )
    default_options: ClassVar[dict[str, Any]] = defaults(options)

    # -- availability ----------------------------------------------------------------------------
    # ``unavailable_reason`` is the base one: only a missing onnx/polygraphy makes conversion
    # unavailable; a missing tensorrt or GPU makes the conversion *deferred*, not unavailable.
    def runtime_unavailable_reason(self) -> str | None:
        return build_unavailable_reason()

    # -- work --------------------------------------------------------------------------------------
    def convert(self, job: ExportJob, out_path: Path, options: dict[str, Any]) -> Conversion:
        opts = {**self.default_options, **options}

        onnx = require("onnx", purpose="the `tensorrt` backend")
        model = onnx.load(str(job.onnx_path))
        counts = demote_float64_onnx(model)
        _set_metadata(model, job.essentials)
        onnx.checker.check_model(model, full_check=True)
        stem = out_path.name[: -len(self.suffix)] if out_path.name.endswith(self.suffix) else out_path.stem
        trt_onnx = out_path.with_name(f"{stem}.trt.onnx")
        onnx.save(model, str(trt_onnx))
        inputs, outputs = describe(model)
        dynamic = bool(job.dynamic_batch) and any(isinstance(t.shape[0], str) for t in inputs if t.shape)
        profile = make_profile(inputs, job, opts, dynamic=dynamic)
        profile_file = out_path.with_name(f"{stem}.trt-profile.json")
        profile_file.write_text(json.dumps(profile, indent=1) + "\n", encoding="utf-8")
        lint = polygraphy_lint(trt_onnx) if opts["lint"] else {"status": "skipped"}
        if lint.get("status") == "failed":
            raise BackendError(
                f"`tensorrt`: polygraphy lint found problems in the TensorRT-ready ONNX: {lint.get('problems')}",
                backend=self.name, stage="convert",
            )

        details: dict[str, Any] = {
            "onnx": {"file": trt_onnx.name, "sha256": sha256_file(trt_onnx), "checker": "full_check passed"},
            "profile": profile,
            "profile_file": profile_file.name,
            "build": build_commands(trt_onnx.name, out_path.name, profile, opts),
            "build_options": {k: opts[k] for k in ("fp16", "tf32", "workspace_mb", "builder_optimization_level")},
            "lint": lint,
            "float64_demoted": counts,
        }
        notes = [n for n in [demotion_note(counts, "TensorRT")] if n]
        notes.append(
            "a TensorRT engine has no metadata slot: the essentials are in the sidecar and in the "
            f"TensorRT-ready ONNX's metadata_props (`{trt_onnx.name}`)."
        )
        common = dict(
            artifact=out_path,
            inputs=inputs,
            outputs=outputs,
            extra_files=[trt_onnx, profile_file],
            dynamic_batch=dynamic,
            notes=notes,
            details=details,
            embedded_metadata=False,
        )
        reason = build_unavailable_reason()
        if reason:
            return Conversion(
                **common,
                format={"name": "TensorRT engine (deferred)", "onnx_opset": _opset(model)},
                deferred=(
                    f"{reason}. Build it on a CUDA host with TensorRT: `{details['build']['enn_nb']}` "
                    f"(or `{details['build']['trtexec']}`) in the folder of the sidecar."
                ),
            )
        engine, info = build_engine(trt_onnx, profile, opts)
        write_bytes(out_path, engine)
        details["engine"] = info
        return Conversion(
            **common,
            format={
                "name": "TensorRT engine",
                "tensorrt": info["tensorrt"],
                "compute_capability": info["compute_capability"],
                "onnx_opset": _opset(model),
            },
        )

    def complete(self, sidecar: dict[str, Any], base: Path, out_path: Path, options: dict[str, Any]) -> Conversion:
        return complete_deferred(sidecar, base, out_path, options)

    def load(self, artifact: Path, options: dict[str, Any]) -> Runner:
        reason = build_unavailable_reason()
        if reason:
            raise PlatformUnavailableError(f"Cannot run `{Path(artifact).name}`: {reason}.")
        return engine_runner(Path(artifact).read_bytes())


# -- availability ----------------------------------------------------------------------------------
def build_unavailable_reason() -> str | None:
    """None when TensorRT engines can be built and run here; else one line saying why not."""
    if not is_installed("tensorrt"):
        return (
            "TensorRT is not installed here (it installs on a CUDA host only: "
            f"{install_line('tensorrt')})"
        )
    if not _cuda_available():
        return "TensorRT needs a CUDA GPU and none is visible here (no CUDA device)"
    return None


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # a broken CUDA setup counts as none
        return False


# -- the TensorRT-ready ONNX -----------------------------------------------------------------------
def _set_metadata(model: Any, essentials: dict[str, str]) -> None:
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in essentials]
    del model.metadata_props[:]
    for key, value in [*keep, *sorted(essentials.items())]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _opset(model: Any) -> int | None:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def make_profile(inputs: list[Any], job: ExportJob, opts: dict[str, Any], *, dynamic: bool) -> dict[str, Any]:
    """``{input: {"min": [...], "opt": [...], "max": [...]}}`` for every input of the ONNX.

    Raises:
        ValueError: a batch range that is not ``1 <= min <= opt <= max`` (names the options).
    """
    low = int(opts["min_batch"] or job.batch_range[0])
    opt = int(opts["opt_batch"] or job.batch_range[1])
    high = int(opts["max_batch"] or job.batch_range[2])
    if not 1 <= low <= opt <= high:
        raise ValueError(
            f"`tensorrt` profile batch sizes must satisfy 1 <= min <= opt <= max, got min={low}, opt={opt}, "
            f"max={high} (options `min_batch`/`opt_batch`/`max_batch` or the export's `batch_range`)."
        )
    profile: dict[str, Any] = {}
    for info, example in zip(inputs, job.example_inputs):
        rest = [int(d) for d in example.shape[1:]]
        if dynamic and info.shape and isinstance(info.shape[0], str):
            profile[info.name] = {"min": [low, *rest], "opt": [opt, *rest], "max": [high, *rest]}
        else:
            fixed = [int(d) for d in example.shape]
            profile[info.name] = {"min": fixed, "opt": fixed, "max": fixed}
    return profile


def build_commands(onnx_name: str, engine_name: str, profile: dict[str, Any], opts: dict[str, Any]) -> dict[str, str]:
    """The exact commands that build the engine later, run in the sidecar's folder."""

    def shapes(which: str) -> str:
        return ",".join(f"{name}:{'x'.join(str(d) for d in p[which])}" for name, p in profile.items())

    parts = [
        "trtexec",
        f"--onnx={onnx_name}",
        f"--saveEngine={engine_name}",
        f"--minShapes={shapes('min')}",
        f"--optShapes={shapes('opt')}",
        f"--maxShapes={shapes('max')}",
        f"--memPoolSize=workspace:{int(opts['workspace_mb'])}M",
    ]
    if not opts["tf32"]:
        parts.append("--noTF32")
    if opts["builder_optimization_level"] is not None:
        parts.append(f"--builderOptimizationLevel={int(opts['builder_optimization_level'])}")
    out = {
        "trtexec": shlex.join(parts),
        "enn_nb": shlex.join(["enn-nb", "build-trt", f"{engine_name}{SIDECAR_SUFFIX}"]),
        "cwd": "the folder of the sidecar",
    }
    if opts["fp16"]:
        out["trtexec"] += " --fp16"
        out["fp16_on_tensorrt_11"] = (
            f"python -m modelopt.onnx.autocast --onnx_path {onnx_name} --output_path fp16_{onnx_name} && "
            + shlex.join([p if not p.startswith("--onnx=") else f"--onnx=fp16_{onnx_name}" for p in parts])
        )
    return out


def polygraphy_lint(onnx_path: Path, timeout_s: float = 300) -> dict[str, Any]:
    """``polygraphy check lint`` in a child process; a summary (passing/failing node counts, entries)."""
    with tempfile.TemporaryDirectory(prefix="enn-lint-") as tmp:
        report = Path(tmp) / "lint.json"
        code = "import sys; from polygraphy.tools import main; sys.argv[0] = 'polygraphy'; sys.exit(main())"
        cmd = [sys.executable, "-c", code, "check", "lint", str(onnx_path), "-o", str(report)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        if not report.exists():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
            raise BackendError(
                f"`tensorrt`: `polygraphy check lint` did not run (exit code {proc.returncode}):\n{tail}",
                backend="tensorrt", stage="convert",
            )
        data = json.loads(report.read_text(encoding="utf-8"))
    summary = data.get("summary", {})
    entries = data.get("lint_entries", [])
    errors = [e for e in entries if str(e.get("level", "")).lower() in ("exception", "error")]
    return {
        "status": "failed" if (summary.get("failing") or errors) else "passed",
        "tool": "polygraphy check lint",
        "passing_nodes": len(summary.get("passing", [])),
        "failing_nodes": len(summary.get("failing", [])),
        "entries": [{k: e.get(k) for k in ("level", "source", "message", "nodes")} for e in entries][:20],
        "problems": [str(e.get("message"))[:300] for e in errors][:5],
        "exit_code": proc.returncode,
    }


# -- the CUDA half ---------------------------------------------------------------------------------
def build_engine(onnx_path: Path, profile: dict[str, Any], opts: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """Parse the ONNX, build a serialized engine with ``profile``; ``(engine bytes, build facts)``.

    Raises:
        BackendError: the parser or the builder failed (parser errors are listed).
    """
    import torch

    trt = require("tensorrt", purpose="building TensorRT engines")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode since TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BackendError(
            f"`tensorrt`: the ONNX parser rejected `{onnx_path.name}`: " + "; ".join(errors[:5]),
            backend="tensorrt", stage="convert",
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts["workspace_mb"]) << 20)
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if tf32 is not None and not opts["tf32"]:
        config.clear_flag(tf32)
    if opts["fp16"]:
        fp16 = getattr(trt.BuilderFlag, "FP16", None)
        if fp16 is None:
            raise BackendError(
                f"`tensorrt` option fp16=True: TensorRT {trt.__version__} builds strongly typed networks only "
                "(precision flags were removed in 11.x). Make an fp16 ONNX first with "
                "`python -m modelopt.onnx.autocast --onnx_path MODEL.onnx --output_path MODEL_fp16.onnx` "
                "and build that, or export with fp16=False.",
                backend="tensorrt", stage="convert",
            )
        config.set_flag(fp16)
    if opts.get("builder_optimization_level") is not None:
        config.builder_optimization_level = int(opts["builder_optimization_level"])
    trt_profile = builder.create_optimization_profile()
    for name, shapes in profile.items():
        trt_profile.set_shape(name, tuple(shapes["min"]), tuple(shapes["opt"]), tuple(shapes["max"]))
    config.add_optimization_profile(trt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(
            "`tensorrt`: the builder returned no engine (see TensorRT's log above for the failing layer).",
            backend="tensorrt", stage="convert",
        )
    device = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(device)
    info = {
        "tensorrt": str(trt.__version__),
        "compute_capability": f"{major}.{minor}",
        "gpu": torch.cuda.get_device_name(device),
        "cuda": str(torch.version.cuda),
        "fp16": bool(opts["fp16"]),
        "tf32": bool(opts["tf32"]),
        "runs_only_on": f"compute capability {major}.{minor} with TensorRT {trt.__version__}",
    }
    return bytes(serialized), info


def engine_runner(engine_bytes: bytes) -> Runner:
    """A runner executing a serialized engine; numpy in, numpy out, tensors on the current CUDA device."""
    import numpy as np
    import torch

    trt = require("tensorrt", purpose="running TensorRT engines")
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise BackendError(
            "`tensorrt`: this engine cannot be deserialized here (built for another GPU or TensorRT version?); "
            "rebuild it with `enn-nb build-trt SIDECAR`.",
            backend="tensorrt", stage="verify",
        )
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def dtype(name: str) -> Any:
        key = str(engine.get_tensor_dtype(name)).rsplit(".", 1)[-1]
        return getattr(torch, _TORCH_DTYPES[key])

    def run(inputs: list[Any]) -> list[Any]:
        stream = torch.cuda.current_stream()
        held = []
        for name, arr in zip(ins, inputs):
            tensor = torch.from_numpy(np.ascontiguousarray(arr)).to("cuda", dtype=dtype(name))
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
            held.append(tensor)
        results = []
        for name in outs:
            tensor = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype(name), device="cuda")
            context.set_tensor_address(name, tensor.data_ptr())
            results.append(tensor)
        if not context.execute_async_v3(stream.cuda_stream):
            raise BackendError("`tensorrt`: execute_async_v3 failed", backend="tensorrt", stage="verify")
        stream.synchronize()
        return [r.cpu().numpy() for r in results]

    run.engine = engine  # type: ignore[attr-defined]  # keep the engine alive with its context
    return run


_SAFE_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}$")
_SAFE_INPUT_NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,200}$")


def _safe_file_name(name: Any, what: str) -> str:
    """A plain file name of letters, digits and ``._+-`` only: safe in a shell command, inside the folder."""
    plain_name(name, what=what, error=ExportError)
    if not _SAFE_FILE_NAME.match(name):
        raise ExportError(f"{what} is {escape(repr(name))[:80]}; build-trt accepts file names of letters, digits and "
                          "`._+-` only. Rename the files and re-export.")
    return name


def validated_build(sidecar: dict[str, Any], engine_name: str) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """(ONNX file name, engine file name, profile, build options) of a deferred sidecar, each checked.

    File names must be plain names in the sidecar's folder, input names plain identifiers, shapes
    positive integers and options of their declared types: anything else is refused, so nothing
    from the sidecar reaches a command line or the builder unchecked.

    Raises:
        ExportError: a field is missing or not of the expected kind (names it).
    """
    details = sidecar.get("details") or {}
    onnx_name = _safe_file_name((details.get("onnx") or {}).get("file"), "The sidecar's ONNX file")
    engine_name = _safe_file_name(engine_name, "The engine file")
    raw = details.get("profile")
    if not isinstance(raw, dict) or not raw:
        raise ExportError("The sidecar holds no optimisation profile; re-export with the tensorrt backend.")
    profile: dict[str, Any] = {}
    for name, shapes in raw.items():
        if not isinstance(name, str) or not _SAFE_INPUT_NAME.match(name) or not isinstance(shapes, dict):
            raise ExportError(f"The sidecar names the input {escape(repr(name))[:80]}, which is not a plain input "
                              "name; re-export.")
        entry = {}
        for which in ("min", "opt", "max"):
            dims = shapes.get(which)
            if not isinstance(dims, list) or not dims or not all(type(d) is int and 0 < d < 1 << 31 for d in dims):
                raise ExportError(f"The sidecar gives input `{name}` the {which} shape {escape(repr(dims))[:80]}; "
                                  "expected positive integers. Re-export.")
            entry[which] = list(dims)
        profile[name] = entry
    given = {**TensorrtBackend.default_options, **(sidecar.get("options") or {}), **(details.get("build_options") or {})}
    checked: dict[str, Any] = {}
    for key, kind in (("workspace_mb", int), ("builder_optimization_level", int), ("tf32", bool), ("fp16", bool)):
        value = given.get(key)
        if value is None and key == "builder_optimization_level":
            checked[key] = None
        elif type(value) is kind or (kind is int and type(value) is float and value.is_integer()):
            checked[key] = kind(value)
        else:
            raise ExportError(f"The sidecar sets `{key}` to {escape(repr(value))[:80]}; expected {kind.__name__}. "
                              "Re-export.")
    return onnx_name, engine_name, profile, checked


# -- completing a deferred export (`enn-nb build-trt SIDECAR`, enn_nb.engine.complete) ----------------
def complete_deferred(sidecar: dict[str, Any], base: Path, out_path: Path, options: dict[str, Any]) -> Conversion:
    """Build the engine a deferred ``tensorrt`` sidecar describes (``TensorrtBackend.complete``)."""

    details = sidecar.get("details") or {}
    onnx_name, engine_name, profile_checked, build_opts = validated_build(sidecar, out_path.name)
    reason = build_unavailable_reason()
    if reason:
        # Rebuilt from validated fields: free text in a sidecar is never shown as a command to run.
        build = build_commands(onnx_name, engine_name, profile_checked, build_opts)
        raise PlatformUnavailableError(
            f"cannot build the engine on this machine: {reason}. On a CUDA host with TensorRT, in the sidecar's "
            f"folder, run `{build['enn_nb']}` or `{build['trtexec']}`."
        )
    onnx_entry = details.get("onnx") or {}
    onnx_path = confined(base, onnx_name, what="The sidecar's TensorRT-ready ONNX", error=ExportError,
                         must_exist=False)
    if not onnx_path.is_file():
        raise BackendError(f"the TensorRT-ready ONNX `{onnx_entry.get('file')}` is missing beside the sidecar.",
                           backend="tensorrt", stage="convert")
    if onnx_entry.get("sha256") and sha256_file(onnx_path) != onnx_entry["sha256"]:
        raise BackendError(f"`{onnx_path.name}` has another sha256 than the sidecar records; re-export.",
                           backend="tensorrt", stage="convert")
    opts = {**options, **build_opts}
    engine, info = build_engine(onnx_path, profile_checked, opts)
    write_bytes(out_path, engine)
    profile_file = details.get("profile_file")
    profile = confined(base, _safe_file_name(profile_file, "The sidecar's profile file"), what="The profile file",
                       error=ExportError, must_exist=False) if profile_file else base / ".none"
    return Conversion(
        artifact=out_path,
        inputs=[TensorInfo.from_dict(t) for t in sidecar.get("inputs") or []],
        outputs=[TensorInfo.from_dict(t) for t in sidecar.get("outputs") or []],
        extra_files=[p for p in (onnx_path, profile) if p.is_file()],
        format={**(sidecar.get("format") or {}), "name": "TensorRT engine", "tensorrt": info["tensorrt"],
                "compute_capability": info["compute_capability"]},
        dynamic_batch=bool(sidecar.get("dynamic_batch")),
        details={**details, "engine": info},
        embedded_metadata=False,
    )


