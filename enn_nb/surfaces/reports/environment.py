"""Where a report ran: CPU, threads, Python and library versions, ONNX Runtime providers, git commit."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path

from enn_nb.table import Table

#: Distributions a reader of an export report asks about, in the order shown (missing ones are left out).
LIBRARIES = ("enn-nb", "torch", "numpy", "onnx", "onnxruntime", "onnxscript", "executorch", "litert-torch",
             "ai-edge-litert", "coremltools", "tensorflow", "onnx2tf", "safetensors", "papermill")  # fmt: skip


def environment(where: Iterable[str | os.PathLike[str]] = (".",)) -> Table:
    """The machine and software a report ran on, as a two-column table.

    Args:
        where: folders to look for a git working tree in, first match wins (the report folder,
            the checkpoint's folder...).
    """
    rows: list[list[str]] = [
        ["CPU", cpu_name()],
        ["cores", str(os.cpu_count() or "?")],
        ["torch threads", torch_threads()],
        ["OS", f"{platform.system()} {platform.release()} ({platform.machine()})"],
        ["Python", platform.python_version()],
    ]
    versions = library_versions()
    rows.append(["libraries", ", ".join(f"{name} {version}" for name, version in versions.items())])
    rows.append(["ONNX Runtime providers", ort_providers()])
    rows.append(["git", git_commit(where)])
    return Table(["", ""], rows)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def torch_threads() -> str:
    try:
        import torch
    except ImportError:
        return "torch not installed"
    return f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op"


def library_versions(names: Iterable[str] = LIBRARIES) -> dict[str, str]:
    """Installed versions by distribution name (read from metadata: nothing is imported)."""
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def ort_providers() -> str:
    try:
        import onnxruntime
    except ImportError:
        return "onnxruntime not installed"
    return ", ".join(onnxruntime.get_available_providers())


def git_commit(where: Iterable[str | os.PathLike[str]]) -> str:
    """``<sha> on <branch> (<repo>)``, with uncommitted changes noted, or why there is none."""
    for folder in where:
        path = Path(folder).expanduser()
        path = path if path.is_dir() else path.parent
        if not path.is_dir():
            continue
        sha = _git(path, "rev-parse", "HEAD")
        if sha is None:
            continue
        top = _git(path, "rev-parse", "--show-toplevel") or str(path)
        branch = _git(path, "rev-parse", "--abbrev-ref", "HEAD") or "?"
        changes = _git(path, "status", "--porcelain")
        dirty = f", {len(changes.splitlines())} uncommitted change(s)" if changes else ", clean"
        return f"{sha} on {branch} ({top}{dirty})"
    return "none: the report and the checkpoint are not in a git working tree"


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
