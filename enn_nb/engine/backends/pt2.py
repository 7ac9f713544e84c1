"""PT2 backend: ``torch.export.save`` of the shared ExportedProgram, essentials in ``extra_files``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from enn_nb.engine.backends._torch_common import (
    X86_QUANTIZE_MODES,
    program_io,
    register_quantized_ops,
    torch_runner,
)
from enn_nb.engine.backends.base import Backend, Conversion, ExportJob

EXTRA_FILE = "enn_nb.json"


class Pt2Backend(Backend):
    """``.pt2`` (torch.export archive); runs with ``torch.export.load(path).module()``.

    The essentials are stored as ``extra_files={"enn_nb.json": ...}``; read them back with
    ``torch.export.load(path, extra_files={"enn_nb.json": ""})``.
    """

    name: ClassVar[str] = "pt2"
    suffix: ClassVar[str] = ".pt2"
    description: ClassVar[str] = "torch.export program (.pt2), runs in PyTorch"
    extra: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ("torch",)
    consumes: ClassVar[str] = "exported_program"
    cost: ClassVar[float] = 0.5
    default_tolerance: ClassVar[tuple[float, float]] = (1e-5, 1e-5)
    options: ClassVar[tuple[Any, ...] | None] = ()  # none but the common `timeout_s`

    quantize_modes: ClassVar[dict[str, str]] = X86_QUANTIZE_MODES

    def quantize(self, job: ExportJob, out_path: Path, options: dict[str, Any], mode: str, calibration: Any) -> Conversion:
        from enn_nb.engine.quantize.quantizers import quantize_pt2

        return quantize_pt2(self, job, out_path, options, mode, calibration)

    def convert(self, job: ExportJob, out_path: Path, options: dict[str, Any]) -> Conversion:
        import torch

        from enn_nb._fs import write_guarded

        ep = job.exported_program
        # Through a file that never raises into torch's C++ zip writer: a full disk there aborts the
        # interpreter (its destructor throws); here the OSError is raised once the writer is done.
        extra = {EXTRA_FILE: json.dumps(job.essentials, sort_keys=True)}
        write_guarded(out_path, lambda f: torch.export.save(ep, f, extra_files=extra))
        inputs, outputs, dynamic = program_io(job, ep)
        return Conversion(
            artifact=out_path,
            inputs=inputs,
            outputs=outputs,
            format={"format": "torch.export", "torch": torch.__version__, "extra_files": [EXTRA_FILE]},
            dynamic_batch=dynamic,
            embedded_metadata=True,
            details={"load": "torch.export.load(path).module()" + (
                " (after `import torch.ao.quantization.fx._decomposed`: the program calls its quantize ops)"
                if any("quantized_decomposed" in str(n.target) for n in ep.graph.nodes) else "")},
        )

    def load(self, artifact: Path, options: dict[str, Any]):  # type: ignore[no-untyped-def]
        import torch

        from enn_nb.engine.trust import check_pt2_archive

        check_pt2_archive(artifact)  # torch.export.load unpickles some payloads with weights_only=False
        register_quantized_ops()  # a quantized program calls them
        return torch_runner(torch.export.load(str(artifact)).module())

    def read_metadata(self, artifact: Path) -> dict[str, str] | None:
        import torch

        from enn_nb.engine.trust import check_pt2_archive

        check_pt2_archive(artifact)
        register_quantized_ops()
        extra = {EXTRA_FILE: ""}
        torch.export.load(str(artifact), extra_files=extra)
        return json.loads(extra[EXTRA_FILE]) if extra[EXTRA_FILE] else {}

    def program_digest(self, artifact: Path) -> str | None:
        import torch

        from enn_nb.engine.cache import program_digest
        from enn_nb.engine.trust import check_pt2_archive

        check_pt2_archive(artifact)
        register_quantized_ops()
        return program_digest(torch.export.load(str(artifact)))
