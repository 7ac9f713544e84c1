"""AOTI backend: ``torch._inductor.aoti_compile_and_package`` of the shared program, essentials as AOTI metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from enn_nb.engine.backends._torch_common import (
    X86_QUANTIZE_MODES,
    program_io,
    torch_runner,
)
from enn_nb.engine.backends.base import Backend, Conversion, ExportJob
from enn_nb.engine.cache import ensure_inductor_cache
from enn_nb.engine.inductor import headers_in_cache
from enn_nb.engine.options import Option, defaults


class AotiBackend(Backend):
    """``.aoti.pt2``: an AOTInductor package (compiled C++ kernels + weights), loaded with ``aoti_load_package``.

    The essentials go into inductor's ``aot_inductor.metadata`` and come back from
    ``aoti_load_package(path).get_metadata()``. Compilation uses torch's compile cache, kept in
    ``TORCHINDUCTOR_CACHE_DIR`` (set to the project's ``.cache/inductor`` or the user cache folder
    when unset, never the system temp folder). Options: ``inductor_configs`` (extra inductor settings).
    Needs a C++ compiler.
    """

    name: ClassVar[str] = "aoti"
    suffix: ClassVar[str] = ".aoti.pt2"
    description: ClassVar[str] = "AOTInductor package (compiled C++), runs with torch's AOTI loader"
    extra: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ("torch",)
    consumes: ClassVar[str] = "exported_program"
    cost: ClassVar[float] = 10.0
    refuses_other_shapes: ClassVar[bool] = False  # compiled code: a wrong shape may crash, not raise
    default_tolerance: ClassVar[tuple[float, float]] = (1e-4, 1e-4)
    compiles_with_inductor: ClassVar[bool] = True
    slow: ClassVar[str] = "slow: compiles C++, typically a minute or more"
    runs_native_code: ClassVar[bool] = True
    options: ClassVar[tuple[Option, ...]] = (
        Option("inductor_configs", dict, {}, "extra torch._inductor configs for aoti_compile_and_package"),
    )
    default_options: ClassVar[dict[str, Any]] = defaults(options)

    def platform_reason(self) -> str | None:
        import shutil

        if not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
            return "AOTInductor needs a C++ compiler (g++ or clang++) on PATH; install one (e.g. `apt-get install g++`)"
        return None

    quantize_modes: ClassVar[dict[str, str]] = X86_QUANTIZE_MODES

    def quantize(self, job: ExportJob, out_path: Path, options: dict[str, Any], mode: str, calibration: Any) -> Conversion:
        from enn_nb.engine.quantize.quantizers import quantize_pt2

        return quantize_pt2(self, job, out_path, options, mode, calibration)

    def convert(self, job: ExportJob, out_path: Path, options: dict[str, Any]) -> Conversion:
        import torch

        cache = ensure_inductor_cache()
        ep = job.exported_program
        configs = {
            # torch's default, with the headers (~300 MB) kept in the inductor cache folder instead of
            # the system temp folder; off where this torch cannot move them
            "aot_inductor.precompile_headers": headers_in_cache() is not None,
            **dict(options.get("inductor_configs") or {}),
            "aot_inductor.metadata": dict(job.essentials),
        }
        torch._inductor.aoti_compile_and_package(ep, package_path=str(out_path), inductor_configs=configs)
        inputs, outputs, dynamic = program_io(job, ep)
        return Conversion(
            artifact=out_path,
            inputs=inputs,
            outputs=outputs,
            format={"format": "aoti-package", "torch": torch.__version__, "device": "cpu"},
            dynamic_batch=dynamic,
            embedded_metadata=True,
            details={"load": "torch._inductor.aoti_load_package(path)", "inductor_cache": str(cache)},
        )

    def load(self, artifact: Path, options: dict[str, Any]):  # type: ignore[no-untyped-def]
        import torch

        return torch_runner(torch._inductor.aoti_load_package(str(artifact)))

    def read_metadata(self, artifact: Path) -> dict[str, str] | None:
        import torch

        return dict(torch._inductor.aoti_load_package(str(artifact)).get_metadata())
