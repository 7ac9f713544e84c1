"""ExecuTorch backend: the shared ExportedProgram lowered to a ``.pte`` program (XNNPACK or portable)."""

from __future__ import annotations

import copy
import json
from collections import Counter
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar

from enn_nb._fs import write_bytes
from enn_nb._optional import is_installed, require
from enn_nb.errors import BackendError
from enn_nb.engine.backends._edge_common import (
    ESSENTIALS_KEY,
    batch_bounds,
    both_paths_failed,
    captured_output,
    check_option,
    essentials_json,
    first_line,
    program_io,
    retrace,
    to_numpy_outputs,
)
from enn_nb.engine.backends.base import Backend, Conversion, ExportJob, Runner
from enn_nb.engine.options import Option, defaults

DELEGATES = ("xnnpack", "portable")

#: Graph bookkeeping that is never "work" a delegate could take (left out of the delegation ratio).
_BOOKKEEPING_PREFIXES = ("getitem", "sym_", "alloc", "_assert", "aten__assert")
#: Plain Python arithmetic on symbolic sizes (``operator.mul`` of a batch size...).
_SYMBOLIC = ("mul", "add", "sub", "floordiv", "truediv", "mod", "neg")


class ExecutorchBackend(Backend):
    """``to_edge_transform_and_lower`` with the XNNPACK partitioner (or none: the portable kernels).

    Options:
        delegate: ``"xnnpack"`` (default; the CPU delegate for arm/x86 phones and desktops) or
            ``"portable"`` (every op on ExecuTorch's portable kernels, nothing delegated).
        max_batch: upper bound of the dynamic batch (default: the export's ``batch_range`` max).
            ExecuTorch plans memory for the largest input, so a dynamic batch needs a bound; when the
            shared program's batch is unbounded, its graph is traced again with this bound (noted).

    The essentials are stored twice: in the sidecar and as the program's constant method
    ``enn_nb_essentials`` (a JSON string any ExecuTorch runtime can read without running the model).
    """

    name: ClassVar[str] = "executorch"
    suffix: ClassVar[str] = ".pte"
    description: ClassVar[str] = "ExecuTorch program (.pte), XNNPACK-delegated or portable; runs on device"
    extra: ClassVar[str] = "executorch"
    slow: ClassVar[str] = "slow: lowers to XNNPACK, typically a minute or more"
    requires: ClassVar[tuple[str, ...]] = ("executorch",)
    consumes: ClassVar[str] = "exported_program"
    # XNNPACK uses its own fused fp32 GEMM and softmax kernels; observed errors ~1e-6 on the reference.
    default_tolerance: ClassVar[tuple[float, float]] = (1e-4, 1e-4)
    options: ClassVar[tuple[Option, ...]] = (
        Option("delegate", str, "xnnpack", "xnnpack: delegate to XNNPACK kernels; portable: ExecuTorch's own kernels",
               choices=DELEGATES),
        Option("max_batch", int, None, "largest batch a dynamic artifact accepts (None: batch_range's max)", min=1),
    )
    default_options: ClassVar[dict[str, Any]] = defaults(options)
    quantize_modes: ClassVar[dict[str, str]] = {
        "int8-weights": "torchao PT2E + ExecuTorch XNNPACKQuantizer (dynamic)",
        "int8": "torchao PT2E + ExecuTorch XNNPACKQuantizer (static, calibrated)",
    }

    def quantize(self, job: ExportJob, out_path: Path, options: dict[str, Any], mode: str, calibration: Any) -> Conversion:
        from enn_nb.engine.quantize.quantizers import quantize_executorch

        return quantize_executorch(self, job, out_path, options, mode, calibration)

    def convert(self, job: ExportJob, out_path: Path, options: dict[str, Any]) -> Conversion:
        opts = {**self.default_options, **options}
        delegate = check_option(self.name, "delegate", opts["delegate"], DELEGATES)
        require("executorch.exir", purpose="the `executorch` backend")
        notes: list[str] = []
        path = None
        source = _without_inplace_detach(job.exported_program)
        ep = source
        bounds = batch_bounds(ep)
        dynamic = bool(job.dynamic_batch) and bounds is not None
        high = int(opts["max_batch"] or job.batch_range[2])
        if dynamic and bounds is not None:
            if bounds[1] is None or bounds[1] > high:
                ep = retrace(ep, job, (job.batch_range[0], high))
                notes.append(
                    f"ExecuTorch plans memory for the largest input, so the batch is bounded to "
                    f"[{max(1, job.batch_range[0])}, {high}] (option `max_batch`): the shared program, whose "
                    "batch has no upper bound, was traced again from its own graph with that bound."
                )
        try:
            program, info = self._lower(ep, job, delegate)
            if dynamic and info.pop("batch_specialised", False):
                # The edge lowering fixed the batch without an error: say so and make it static on purpose.
                static_ep = retrace(source, job, None)
                program, info = self._lower(static_ep, job, delegate)
                ep, dynamic = static_ep, False
                path = {"name": "static-shapes", "costs": [f"static batch {int(job.example_inputs[0].shape[0])}"]}
                notes.append(
                    "ExecuTorch's edge lowering specialised the dynamic batch of this program to the capture "
                    f"batch; the artifact is static at batch {int(job.example_inputs[0].shape[0])} (torch.export's "
                    "program itself is dynamic, see the pt2 artifact)."
                )
            if dynamic:
                _smoke_run(program.buffer, job)  # some kernels lower with dynamic shapes but fail at run time
        except Exception as exc:
            if not dynamic:
                raise BackendError(
                    f"`executorch` lowering ({delegate}) failed: {first_line(exc)}", backend=self.name, stage="convert"
                ) from exc
            # Some delegates cannot lower dynamic shapes; never fall back silently.
            static_ep = retrace(source, job, None)
            try:
                program, info = self._lower(static_ep, job, delegate)
            except Exception as static_exc:
                raise both_paths_failed(self.name, f"lowering ({delegate})", exc, static_exc) from static_exc
            ep, dynamic = static_ep, False
            batch = int(job.example_inputs[0].shape[0])
            notes.append(
                f"the {delegate} lowering could not handle a dynamic batch ({first_line(exc)}); the artifact "
                f"is static at batch {batch}."
            )
            path = {"name": "static-shapes", "costs": [f"static batch {batch}"]}
        write_bytes(out_path, program.buffer)
        inputs, outputs = program_io(ep, job, dynamic=dynamic)
        details = {"delegate": delegate, **info}
        if dynamic:
            bounds = batch_bounds(ep)
            details["batch_bounds"] = list(bounds) if bounds else None
        return Conversion(
            artifact=out_path,
            inputs=inputs,
            outputs=outputs,
            format={
                "name": "ExecuTorch program",
                "executorch": version("executorch"),
                "methods": ["forward", ESSENTIALS_KEY],
            },
            dynamic_batch=dynamic,
            notes=notes,
            details=details,
            embedded_metadata=True,
            path=path,
        )

    def _lower(self, ep: Any, job: ExportJob, delegate: str) -> tuple[Any, dict[str, Any]]:
        from executorch.exir import to_edge_transform_and_lower

        partitioners = []
        if delegate == "xnnpack":
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

            partitioners.append(XnnpackPartitioner())
        with captured_output():
            edge = to_edge_transform_and_lower(
                ep, partitioner=partitioners, constant_methods={ESSENTIALS_KEY: essentials_json(job)}
            )
            info = delegation(edge.exported_program().graph_module)
            info["batch_specialised"] = _batch_is_static(edge.exported_program())
            program = edge.to_executorch()
        return program, info

    def load(self, artifact: Path, options: dict[str, Any]) -> Runner:
        import torch

        program = _program(artifact)
        with captured_output():  # XNNPACK logs its CPU probing from C++ when the method loads
            method = program.load_method("forward")

        def run(inputs: list[Any]) -> list[Any]:
            tensors = [torch.from_numpy(a.copy()) for a in inputs]
            return to_numpy_outputs(list(method.execute(tensors)))

        return run

    def read_metadata(self, artifact: Path) -> dict[str, str] | None:
        program = _program(artifact)
        if ESSENTIALS_KEY not in program.method_names:
            return None
        (value,) = program.load_method(ESSENTIALS_KEY).execute([])
        return {str(k): str(v) for k, v in json.loads(value).items()}


def _smoke_run(buffer: bytes, job: ExportJob) -> None:
    """Run a freshly lowered dynamic program on the example inputs and at batch 1 (skipped without the runtime)."""

    if not is_installed("executorch.runtime"):
        return
    runtime = require("executorch.runtime", purpose="running `.pte` programs")
    with captured_output():
        method = runtime.Runtime.get().load_program(bytes(buffer)).load_method("forward")
        method.execute([t.contiguous() for t in job.example_inputs])
        method.execute([t[:1].contiguous() if t.dim() else t for t in job.example_inputs])  # batch 1 too


def _batch_is_static(ep: Any) -> bool:
    """True when the program's first user input has a concrete (int) batch dimension."""
    names = list(ep.graph_signature.user_inputs)
    for node in ep.graph.nodes:
        if node.op == "placeholder" and names and node.name == names[0]:
            from torch.fx.experimental.symbolic_shapes import is_concrete_int

            shape = getattr(node.meta.get("val"), "shape", ())
            return bool(shape) and is_concrete_int(shape[0])
    return False


def _without_inplace_detach(ep: Any) -> Any:
    """The program with in-place ``aten.detach_`` nodes made functional ``aten.detach`` (a copy), else ``ep``.

    ``torch.tensor(...)`` inside a traced forward becomes ``lift_fresh_copy`` + ``detach_``, which
    ExecuTorch's edge lowering refuses ("Can't detach views in-place"). Detaching in place changes
    nothing in an inference graph; the node's users already read its result, so only the op changes.
    """

    import torch

    if not any(node.target is torch.ops.aten.detach_.default for node in ep.graph.nodes):
        return ep
    ep = copy.deepcopy(ep)
    for node in ep.graph.nodes:
        if node.target is torch.ops.aten.detach_.default:
            node.target = torch.ops.aten.detach.default
    ep.graph_module.recompile()
    return ep


def _program(artifact: Path) -> Any:
    runtime = require("executorch.runtime", purpose="running `.pte` programs")
    with captured_output():  # the runtime logs CPU probing from C++ on first use
        return runtime.Runtime.get().load_program(str(artifact))


def delegation(graph_module: Any) -> dict[str, Any]:
    """How much of the lowered graph runs in delegates: node counts, ratio, ops left on portable kernels."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    delegated: Counter[str] = Counter()
    portable: Counter[str] = Counter()
    for op, row in info.delegation_by_operator.items():
        if op.startswith(_BOOKKEEPING_PREFIXES) or op in _SYMBOLIC:
            continue
        if row.delegated:
            delegated[op] += row.delegated
        if row.non_delegated:
            portable[op] += row.non_delegated
    n_del, n_port = sum(delegated.values()), sum(portable.values())
    return {
        "delegated_nodes": n_del,
        "non_delegated_nodes": n_port,
        "delegated_subgraphs": int(info.num_delegated_subgraphs),
        "delegated_ratio": round(n_del / (n_del + n_port), 4) if n_del + n_port else 0.0,
        "non_delegated_ops": dict(sorted(portable.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
