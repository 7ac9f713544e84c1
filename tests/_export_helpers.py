"""Test helpers of the export engine: tiny models and deliberately misbehaving backends.

The backends live in an importable module (not in a test function) so that the isolated child
process can import them by name, as it would a real plugin.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from enn_nb.engine.backends.base import Backend, Conversion, ExportJob, TensorInfo


class TinyMLP(nn.Module):
    """A plain nn.Module (no ENN contract): [B, 6] -> [B, 3]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Misbehaving(Backend):
    suffix: ClassVar[str] = ".bad"
    requires: ClassVar[tuple[str, ...]] = ()
    consumes: ClassVar[str] = "exported_program"

    def load(self, artifact: Path, options: dict[str, Any]):  # type: ignore[no-untyped-def]
        raise AssertionError("never reached")


class SegfaultBackend(_Misbehaving):
    """Dies of SIGSEGV in the middle of its conversion, as a broken native converter would."""

    name: ClassVar[str] = "segfault"
    suffix: ClassVar[str] = ".segv"

    def convert(self, job: ExportJob, out_path: Path, options: dict[str, Any]) -> Conversion:
        job.exported_program  # touch the shared capture first, as a real converter does
        print("segfault backend: about to crash", flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
        raise AssertionError("unreachable")


class AbortBackend(_Misbehaving):
    """Calls abort() (SIGABRT), like a failed C++ assertion."""

    name: ClassVar[str] = "abort"
    suffix: ClassVar[str] = ".abrt"

    def convert(self, job: ExportJob, out_path: Path, options: dict[str, Any]) -> Conversion:
        os.abort()


class ExitBackend(_Misbehaving):
    """Exits the process with code 3 (a converter calling exit())."""

    name: ClassVar[str] = "exit3"
    suffix: ClassVar[str] = ".exit3"

    def convert(self, job: ExportJob, out_path: Path, options: dict[str, Any]) -> Conversion:
        os._exit(3)


class HalfWriteBackend(_Misbehaving):
    """Writes half an artifact named like the pt2 backend's, then fails."""

    name: ClassVar[str] = "halfpt2"
    suffix: ClassVar[str] = ".pt2"

    def convert(self, job: ExportJob, out_path: Path, options: dict[str, Any]) -> Conversion:
        out_path.write_bytes(b"PK\x03\x04 half an archive")
        raise RuntimeError("disk full while writing the archive (simulated)")


class EchoBackend(Backend):
    """A minimal working plugin: saves the program with torch.export and runs it back."""

    name: ClassVar[str] = "echo"
    suffix: ClassVar[str] = ".echo.pt2"
    requires: ClassVar[tuple[str, ...]] = ("torch",)

    def convert(self, job: ExportJob, out_path: Path, options: dict[str, Any]) -> Conversion:
        torch.export.save(job.exported_program, str(out_path))
        shape: list[int | str] = ["batch", *job.example_inputs[0].shape[1:]]
        return Conversion(
            artifact=out_path,
            inputs=[TensorInfo(job.input_names[0], shape, "float32")],
            outputs=[TensorInfo(job.output_names[0], ["batch"], "float32")],
            dynamic_batch=job.dynamic_batch,
        )

    def load(self, artifact: Path, options: dict[str, Any]):  # type: ignore[no-untyped-def]
        module = torch.export.load(str(artifact)).module()
        return lambda inputs: [module(*[torch.from_numpy(a) for a in inputs]).detach().numpy()]


class DeferredEchoBackend(EchoBackend):
    """Defers like TensorRT off a GPU: writes a build plan (the saved program) at export time, and the
    artifact only in ``complete``, when the ``ENN_TEST_CAN_BUILD`` variable says this machine can."""

    name: ClassVar[str] = "deferred-echo"
    suffix: ClassVar[str] = ".later.pt2"

    def convert(self, job: ExportJob, out_path: Path, options: dict[str, Any]) -> Conversion:
        plan = out_path.with_name(out_path.name.replace(self.suffix, ".plan.pt2"))
        torch.export.save(job.exported_program, str(plan))
        shape: list[int | str] = ["batch", *job.example_inputs[0].shape[1:]]
        return Conversion(
            artifact=out_path,
            inputs=[TensorInfo(job.input_names[0], shape, "float32")],
            outputs=[TensorInfo(job.output_names[0], ["batch"], "float32")],
            extra_files=[plan],
            dynamic_batch=job.dynamic_batch,
            details={"plan": plan.name},
            deferred="this machine cannot build it (test)",
        )

    def complete(self, sidecar: dict[str, Any], base: Path, out_path: Path, options: dict[str, Any]) -> Conversion:
        from enn_nb.errors import PlatformUnavailableError

        if not os.environ.get("ENN_TEST_CAN_BUILD"):
            raise PlatformUnavailableError("cannot build here (test): set ENN_TEST_CAN_BUILD")
        plan = base / sidecar["details"]["plan"]
        out_path.write_bytes(plan.read_bytes())
        return Conversion(
            artifact=out_path,
            inputs=[TensorInfo.from_dict(t) for t in sidecar["inputs"]],
            outputs=[TensorInfo.from_dict(t) for t in sidecar["outputs"]],
            extra_files=[plan],
            dynamic_batch=bool(sidecar["dynamic_batch"]),
            details={**sidecar["details"], "built": True},
        )


class ApproxGeluNet(nn.Module):
    """A fast path that is *not* numerically equivalent: tanh-approximated GELU (fast) vs exact (safe).

    Parity compares the artifact (safe path) with the eager model (fast path on), so it reports a
    real mismatch of about 1e-3 here.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.lin = nn.Linear(6, 8)
        self.approximate = "tanh"

    def enn_fast_paths(self):  # type: ignore[no-untyped-def]
        from enn_nb.fastpaths import FastPath

        yield FastPath("approximate", self, "approximate", "none", reason="test: exact GELU for export", kind="other")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(3.0 * self.lin(x), approximate=self.approximate)


@pytest.fixture(autouse=True)
def enn_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Keep the export cache's store of each test in a temporary folder (import this into a test module)."""
    monkeypatch.setenv("ENN_NB_CACHE_DIR", str(tmp_path_factory.mktemp("enn-cache")))
