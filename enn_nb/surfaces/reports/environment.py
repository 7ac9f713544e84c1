"""Where a report ran: CPU, threads, Python and library versions, ONNX Runtime providers, git commit."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
from collections.abc import Iterable
from pathlib import Path

from enn_nb._safeio import escape
from enn_nb.table import Table

#: Distributions a reader of an export report asks about, in the order shown (missing ones are left out).
LIBRARIES = ("enn-nb", "torch", "numpy", "onnx", "onnxruntime", "onnxscript", "executorch", "litert-torch",
             "ai-edge-litert", "coremltools", "tensorflow", "onnx2tf", "safetensors", "papermill")  # fmt: skip


def environment(where: Iterable[str | os.PathLike[str]] = (".",)) -> Table:
    """The machine and software a report ran on, as a two-column table.

    Args:
        where: folders to look for the git repository in, first match wins: the report's own folder
            (a checkpoint's folder is someone else's repository; see :func:`git_commit`).
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
    """``<sha> on <branch> (<repo>)`` of the first git repository holding a folder of ``where``, or why there is none.

    Read from ``.git/HEAD`` and the refs as files: no ``git`` program runs, so nothing a repository's
    config can name (``core.fsmonitor``, hooks, filters, a pager) runs either. Uncommitted changes are
    not looked for (that needs ``git status``, which runs such programs).
    """
    for folder in where:
        path = Path(folder).expanduser()
        path = path if path.is_dir() else path.parent
        found = _repository(path) if path.is_dir() else None
        if found is None:
            continue
        top, gitdir = found
        head = _read_small(gitdir / "HEAD")
        if head is None:
            continue
        if head.startswith("ref:"):
            ref = head[4:].strip()
            sha = _resolve_ref(gitdir, ref)
            branch = ref.removeprefix("refs/heads/")
        else:
            sha, branch = head, "a detached HEAD"
        if sha is None or not _SHA.fullmatch(sha):
            return f"unknown: {escape(str(top))} has no commit yet"
        return f"{sha} on {escape(branch)} ({escape(str(top))}; uncommitted changes not checked)"
    return "none: the report's folder is not in a git repository"


_SHA = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")
_MAX_GIT_FILE = 1 << 20


def _repository(start: Path) -> tuple[Path, Path] | None:
    """(working tree, git folder) of the repository holding ``start``: a ``.git`` folder, or a ``.git`` file
    naming one (worktrees, submodules)."""
    for folder in (start.resolve(), *start.resolve().parents):
        dot = folder / ".git"
        if dot.is_dir():
            return folder, dot
        if dot.is_file():
            text = _read_small(dot)
            if text and text.startswith("gitdir:"):
                gitdir = Path(text[7:].strip())
                return folder, gitdir if gitdir.is_absolute() else (folder / gitdir)
            return None
    return None


def _resolve_ref(gitdir: Path, ref: str) -> str | None:
    """The commit a ref names: its loose file, else ``packed-refs``; a worktree's refs live in its common folder."""
    if ".." in ref.split("/") or not ref.startswith("refs/"):
        return None
    common_text = _read_small(gitdir / "commondir")
    common = (gitdir / common_text).resolve() if common_text else gitdir
    for base in (gitdir, common):
        sha = _read_small(base / ref)
        if sha is not None:
            return sha
    packed = _read_small(common / "packed-refs") or ""
    for line in packed.splitlines():
        sha, _, name = line.partition(" ")
        if name.strip() == ref:
            return sha
    return None


def _read_small(path: Path) -> str | None:
    try:
        if not path.is_file() or path.stat().st_size > _MAX_GIT_FILE:
            return None
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
