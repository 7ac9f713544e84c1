"""``enn-nb backends``, ``enn-nb export``, ``enn-nb verify`` and ``enn-nb build-trt`` (heavy imports inside ``func``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from enn_nb._paths import CHECKPOINT_SUFFIXES, did_you_mean
from enn_nb._safeio import escape, escape_lines
from enn_nb.engine import sidecar as sc, verify
from enn_nb.engine.complete import complete
from enn_nb.engine.options import describe_backend
from enn_nb.engine.outlog import LOGGER
from enn_nb.engine.registry import backends, get_backend, resolve_request
from enn_nb.engine.settings import ExportSettings
from enn_nb.engine.vocabulary import NOT_OK_STATUSES
from enn_nb.errors import EnnError, FlagError, OptionError, PlatformUnavailableError
from enn_nb.model.signature import parse
from enn_nb.storage import add_cli_argument, cli_options, existing, is_url
from enn_nb.surfaces.cli.command import add_command
from enn_nb.surfaces.factory import load_with_model
from enn_nb.surfaces.sweep.cluster import CLUSTER_HELP

#: Statuses that make ``enn-nb export`` exit non-zero (``unavailable`` only for a backend named).
FAILING = NOT_OK_STATUSES

#: ``enn-nb build-trt``'s exit code when this machine cannot build TensorRT engines (``enn_nb.cli.EXIT_CODES``).
EXIT_UNAVAILABLE = 3


def register(subparsers: Any) -> None:
    p = add_command(
        subparsers,
        "backends",
        _backends,
        help="list export backends and whether they work here",
        description="List every export backend: its artifact suffix, whether it converts here, whether its "
        "runtime can run the artifact here (for parity), and for a missing one why and the pip line that "
        "installs it.",
        epilog="example:\n  enn-nb backends\n  enn-nb backends --json | python -m json.tool",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--options", action="store_true", help="list each backend's options (name, type, range, default, help)")

    p = add_command(
        subparsers,
        "export",
        _export,
        help="export a checkpoint to one or more backends",
        description="Export SRC (a checkpoint) to each backend, with parity checks and a sidecar per artifact; with "
        "--each GLOB, every matching checkpoint into <out>/<its name>/ and an index.html over them. "
        "Exits 1 when any requested backend failed, mismatched or crashed, or a quantized artifact is `degraded` "
        "(over its accuracy budget) without --allow-degraded; 3 when the only problem is a requested "
        "backend unavailable here (with `--backends all`, unavailable ones are listed but do not fail the command); "
        "2 when SRC does not exist or an argument is bad.",
        epilog="examples:\n  enn-nb export model.safetensors -b onnx,ort,pt2 -o exports\n"
        "  enn-nb export --each 'ckpts/*.safetensors' -b onnx,pt2 -o nightly --cluster local:4\n"
        "  enn-nb export model.pt -b all -o exports --json > report.json\n"
        "  enn-nb export model.safetensors -b ort -o exports --option ort.optimization_level=basic\n"
        "  enn-nb export model.pt -b onnx,executorch,litert -o exports --quantize int8 --calibration calib.safetensors",
    )
    p.add_argument("src", metavar="SRC", nargs="?", help="checkpoint path (.pt, .safetensors or a DCP folder) or URL")
    p.add_argument("--each", metavar="GLOB", help="export every checkpoint matching GLOB (instead of SRC)")
    p.add_argument("--cluster", metavar="local[:N]|tcp://HOST:PORT", help="with --each: " + CLUSTER_HELP)
    p.add_argument("--backends", "-b", required=True, help="comma-separated names, or 'all' (see `enn-nb backends`)")
    p.add_argument("--out", "-o", required=True, metavar="DIR",
                   help="output folder (created if missing), or a URL: staged locally, verified, then uploaded")
    p.add_argument("--stem", default="model", help="artifact file name stem (default: model)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-verify", action="store_true", help="skip parity checks")
    p.add_argument("--no-isolate", action="store_true", help="convert in this process (no child process)")
    p.add_argument("--no-cache", action="store_true", help="always convert, even when an identical export exists")
    p.add_argument("--static-batch", action="store_true", help="fix the batch size to the example input's")
    add_model_arguments(p)
    p.add_argument("--strict", action="store_true", help="raise on the first backend that is not ok")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="kill a backend's isolated conversion and verification after SECONDS (status `timeout`); "
                   "default: each backend's own (`enn-nb backends --options`, option timeout_s)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="also print the warnings and converter output captured during the export (always kept in "
                   "each backend's <artifact>.enn.log)")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="BACKEND.KEY=VALUE",
        help="a backend option, e.g. ort.optimization_level=basic (VALUE is parsed as JSON when it can be); "
        "`enn-nb backends --options` lists them",
    )
    add_cli_argument(p)
    add_quantize_arguments(p)

    p = add_command(
        subparsers,
        "verify",
        _verify,
        help="re-check an exported artifact against its saved vectors",
        description="Run ARTIFACT in its runtime on the inputs saved beside it at export time "
        "(<stem>.vectors.safetensors) and compare with the eager model's saved outputs, within the "
        "sidecar's tolerance (or --atol/--rtol). Works on any machine with the runtime; needs no model "
        "and no checkpoint; for a checkpoint use `enn-nb inspect` (verify is for exported artifacts). "
        "Exits 1 on a mismatch, 2 when ARTIFACT does not exist or is not an exported artifact, 3 when its "
        "runtime is not installed here (nothing was checked). A quantized artifact (model.int8.onnx) is held to "
        "its accuracy budget instead: its error against the float model's outputs in the export's vectors file, "
        "beside the figures recorded at export; over budget it is `degraded` (exit 1).",
        epilog="examples:\n  enn-nb verify exports/model.onnx\n  enn-nb verify exports/model.pt2.enn.json --atol 1e-5",
    )
    p.add_argument("artifact", metavar="ARTIFACT",
                   help="the artifact (or its .enn.json sidecar), or its URL: fetched into the cache, hashes checked first")
    p.add_argument("--atol", type=float, default=None, help="override the sidecar's absolute tolerance")
    p.add_argument("--rtol", type=float, default=None, help="override the sidecar's relative tolerance")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--trust", action="store_true",
                   help="allow loading a native-code artifact (an AOTInductor package runs its code when loaded)")
    add_cli_argument(p)

    _register_build_trt(subparsers)


def _register_build_trt(subparsers: Any) -> None:
    p = add_command(
        subparsers,
        "build-trt",
        _build_trt,
        help="build the TensorRT engine of a deferred tensorrt export (on a CUDA host with TensorRT)",
        description="Build the engine a deferred `tensorrt` sidecar describes (TensorRT-ready ONNX + profile), "
        "check parity against the vectors file beside it and rewrite the sidecar. Exit codes: 0 built and "
        f"parity passed, 1 failed or mismatched, {EXIT_UNAVAILABLE} no TensorRT or no CUDA device here.",
        epilog="example:\n  enn-nb build-trt exports/model.engine.enn.json --out model.engine",
    )
    p.add_argument("sidecar", metavar="SIDECAR", help="the .enn.json sidecar of the deferred tensorrt export")
    p.add_argument("--out", default=None, metavar="ENGINE", help="engine path (default: the sidecar's artifact name)")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--model pkg.module:factory`` and ``--input name:dtype[dims]`` (shared by export and report)."""
    p.add_argument(
        "--model", metavar="PKG.MODULE:FACTORY", default=None,
        help="build the model with this factory and load the checkpoint into it: for checkpoints of your own "
        "models, which name no registered builder. The module is imported by name (never from a file path), "
        "so its top-level code runs: keep a script's saves and exports under `if __name__ == \"__main__\":` "
        "(enn_nb refuses them during that import)",
    )
    add_model_path_argument(p)
    p.add_argument(
        "--input", action="append", default=[], metavar="NAME:DTYPE[DIMS]",
        help="the model's inputs, one flag each, e.g. --input values:float32[B,24,6] --input mask:bool[B,24] "
        "(B = batch, T = time; ids:int64[B,16]{1000} for 1000 category codes); default: the checkpoint's signature",
    )


def add_model_path_argument(p: argparse.ArgumentParser) -> None:
    """``--model-path DIR`` (shared by export and report)."""
    p.add_argument(
        "--model-path", action="append", default=[], metavar="DIR",
        help="a folder --model's module is imported from (repeatable; relative to the working directory, like a "
        "relative PYTHONPATH entry, which is resolved the same way: report kernels get both as absolute paths)",
    )


def add_quantize_arguments(p: argparse.ArgumentParser) -> None:
    """``--quantize``, ``--calibration``, ``--eval-data``, ``--accuracy-budget``, ``--allow-degraded``."""
    p.add_argument("--quantize", default=None, metavar="MODES",
                   help="also write quantized artifacts: fp16, int8-weights (dynamic-range) or int8 (static, "
                   "calibrated), comma-separated, or BACKEND=MODE[+MODE] entries (e.g. onnx=int8,coreml=fp16); a mode "
                   "a backend does not support is refused before any work (`enn-nb backends` lists them)")
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="a .safetensors file of inputs named like the model's (`features`, or `features.0`, "
                   "`features.1`... per batch) to calibrate int8 on; without it inputs are drawn from the signature "
                   "and the accuracy figures say so")
    p.add_argument("--eval-data", default=None, metavar="FILE",
                   help="a .safetensors file of inputs to measure the quantized artifacts on (default: a held-back "
                   "quarter of --calibration, else drawn inputs)")
    p.add_argument("--accuracy-budget", type=float, default=None, metavar="RATIO",
                   help="largest RMSE of a quantized output's difference, as a fraction of the float output's std "
                   "(default 0.03); over it the row is `degraded`")
    p.add_argument("--allow-degraded", action="store_true",
                   help="exit 0 even when a quantized artifact is `degraded` (over its accuracy budget)")


def parse_quantize_flag(text: str | None) -> Any:
    """``--quantize``'s text as ``export(quantize=...)`` takes it: ``int8,fp16`` or ``onnx=int8,coreml=fp16+int8-weights``."""
    if not text:
        return None
    if "=" not in text:
        return text
    out: dict[str, list[str]] = {}
    for item in text.split(","):
        backend, sep, modes = item.partition("=")
        if not sep or not backend.strip():
            raise FlagError(f"`--quantize {text}`: give MODES (e.g. int8) or BACKEND=MODE entries "
                            "(e.g. onnx=int8,coreml=fp16+int8-weights).")
        out.setdefault(backend.strip(), []).extend(m.strip() for m in modes.split("+") if m.strip())
    return out


def _export_source(args: argparse.Namespace, src: Any, options: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """``(what to export, spec override)`` from ``--model`` and ``--input``."""
    if args.model_path and not args.model:
        raise FlagError("`--model-path` says where `--model`'s module is; pass `--model pkg.module:factory` too.")
    loaded = load_with_model(src, args.model, args.model_path, storage_options=options) if args.model else None
    if not args.input:
        return (loaded if loaded is not None else src), None
    from enn_nb.checkpoint import inspect

    base = loaded.spec if loaded is not None else inspect(src, storage_options=options).spec
    return (loaded if loaded is not None else src), base.replace(inputs=[parse(text) for text in args.input])


def _backends(args: argparse.Namespace) -> int:
    table = backends()
    if args.options:
        described = {row.name: describe_backend(get_backend(row.name)) for row in table if not row.error}
        if args.json:
            print(json.dumps(described, indent=2))
        else:
            print(escape_lines("\n\n".join(f"{name}:\n" + "\n".join(f"  {line}" for line in lines)
                                            for name, lines in described.items())))
        return 0
    print(json.dumps(table.to_json(), indent=2) if args.json else escape_lines(table))
    return 0


def _parse_options(items: list[str]) -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        backend, dot, name = key.partition(".")
        if not sep or not dot or not backend or not name:
            raise OptionError(f"`--option {item}` is not BACKEND.KEY=VALUE; write e.g. "
                              "`--option ort.optimization_level=basic`.")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        options.setdefault(backend, {})[name] = value
    return options


def _with_timeout(options: dict[str, dict[str, Any]], backends: str, timeout: float | None) -> dict[str, dict[str, Any]]:
    """``--timeout`` as every named backend's ``timeout_s`` (an explicit ``--option B.timeout_s`` wins)."""
    if timeout is None:
        return options
    for name in resolve_request(backends)[0]:
        options.setdefault(name, {}).setdefault("timeout_s", timeout)
    return options


def _export(args: argparse.Namespace) -> int:
    from enn_nb.engine import export

    if args.verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        LOGGER.addHandler(handler)
        LOGGER.setLevel(logging.DEBUG)
    if args.each or args.cluster or not args.src:
        return _export_each(args)
    options = cli_options(args)
    src = existing(args.src, options)
    if src is None:
        hint = "" if is_url(args.src) else did_you_mean(Path(args.src), CHECKPOINT_SUFFIXES)
        print(f"enn-nb export: error: `{escape(args.src)}` does not exist; SRC must be a checkpoint file or DCP folder"
              f"{escape(hint) or '.'}", file=sys.stderr)
        return 2
    source, spec = _export_source(args, src, options)
    settings = export_settings(args)
    report = export(source, spec=spec, settings=settings, quiet=True)  # the table and the exit line say it
    print(report.to_json() if args.json else escape_lines(report))
    # with `--backends all` a backend that cannot convert on this machine is listed, not a failure
    bad = [r for r in report.results if settings.fails(r.status)]
    # only unavailable backends: nothing failed, this machine lacks them (the table's 3, as verify and build-trt)
    code = 0 if not bad else EXIT_UNAVAILABLE if all(r.status == "unavailable" for r in bad) else 1
    listed = ", ".join(f"{r.backend} {r.status}" for r in bad)
    # the exit line separates verified from converted-but-not-verified; stderr keeps --json's stdout clean
    print(escape(f"enn-nb export: {report.summary}" + (f"; exit {code}: {listed}" if bad else "")), file=sys.stderr)
    return code


def export_settings(args: argparse.Namespace) -> ExportSettings:
    """The :class:`ExportSettings` of an ``enn-nb export`` command line (creates ``--out``)."""
    return ExportSettings.from_call(args.backends, args.out, **_settings_arguments(args))


def _settings_arguments(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "stem": args.stem,
        "verify": not args.no_verify,
        "isolate": not args.no_isolate,
        "cache": not args.no_cache,
        "dynamic_batch": not args.static_batch,
        "strict": args.strict,
        "options": _with_timeout(_parse_options(args.option), args.backends, args.timeout),
        "storage_options": cli_options(args),
        "quantize": parse_quantize_flag(args.quantize),
        "calibration": args.calibration,
        "eval_data": args.eval_data,
        "accuracy_budget": args.accuracy_budget,
        "allow_degraded": args.allow_degraded,
    }


def _export_each(args: argparse.Namespace) -> int:
    """``enn-nb export --each GLOB``: one export per checkpoint, in this process or on a cluster."""
    from enn_nb.surfaces.sweep import export_many

    problem = ("pass SRC or `--each GLOB`, not both" if args.src and args.each
               else "`--cluster` goes with `--each GLOB`" if args.src
               else "pass SRC (a checkpoint) or `--each GLOB`" if not args.each else None)
    if problem:
        print(f"enn-nb export: error: {problem}.", file=sys.stderr)
        return 2
    try:
        sweep = export_many(args.each, args.backends, out_dir=args.out, cluster=args.cluster, model=args.model,
                            inputs=args.input, **_settings_arguments(args))
    except KeyboardInterrupt:
        print(f"enn-nb export: interrupted; the index of the finished exports: {Path(args.out) / 'index.html'}",
              file=sys.stderr)
        return 130
    bad = sweep.failures()
    if args.json:
        print(json.dumps({"ok": not bad, "index": str(sweep.index), "runner": sweep.runner,
                          "exports": [dataclasses.asdict(e) for e in sweep.exports]}, indent=2, default=str))
    else:
        print(sweep)
    for line in bad:
        print(f"enn-nb export: FAIL: {line}", file=sys.stderr)
    return 1 if bad else 0


def _verify(args: argparse.Namespace) -> int:
    result = verify(args.artifact, tolerances=(args.atol, args.rtol), trust=args.trust,  # a bound not given: the sidecar's
                    storage_options=cli_options(args))
    print(json.dumps(result.to_dict(), indent=2) if args.json else escape_lines(result))
    if result.status == "skipped":
        return EXIT_UNAVAILABLE  # nothing was checked: not a pass, not a mismatch
    return 0 if result.ok else 1


def _build_trt(args: argparse.Namespace) -> int:
    path = Path(args.sidecar)
    if not path.name.endswith(sc.SIDECAR_SUFFIX):
        path = sc.sidecar_path(path)
    if not path.is_file():  # a path that does not exist: unusable input, as on every verb
        print(f"enn-nb build-trt: No sidecar `{path.name}` in `{path.parent}`{did_you_mean(path) or '.'} Run "
              "`enn-nb export SRC -b tensorrt -o DIR` first; it writes the sidecar this command reads.", file=sys.stderr)
        return 2
    try:
        backend = sc.read(path).get("backend")
        if backend != "tensorrt":
            print(escape(f"enn-nb build-trt: `{path.name}` is a `{backend}` sidecar, not a `tensorrt` one."), file=sys.stderr)
            return 2  # another kind of file: unusable input (enn_nb.surfaces.cli.EXIT_CODES)
        result = complete(path, out=args.out)
    except PlatformUnavailableError as exc:
        print(f"enn-nb build-trt: {escape(exc)}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except EnnError as exc:  # a failed build leaves the deferred sidecar as it was
        print(f"enn-nb build-trt: {escape(exc)}", file=sys.stderr)
        return 1
    print(escape(result.summary() + f"; sidecar updated: {path.name}"))
    return 0 if result.ok else 1

