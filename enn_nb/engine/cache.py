"""The export cache: a content hash of (captured program, inputs, spec, backend, options, versions) -> artifacts.

The key is derived from what the model computes: the captured program's graph, its weights,
constants and non-persistent buffers (:func:`program_digest`), not from module attributes. A hit is
found first in the output directory itself (its sidecar records the key and the files' hashes),
then in the store under the cache folder, from which files are cloned (copy-on-write), else
hard-linked read-only, else copied; the pipeline then re-runs the parity cases on it.
Folders: ``ENN_NB_CACHE_DIR`` if set, else ``<project>/.cache/enn_nb`` when enn_nb runs from a
source checkout, else the user's cache folder (``~/.cache/enn_nb``...). Never the system temp folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb._cachedir import cache_dir, project_cache, user_cache
from enn_nb._fs import atomic_path, check_same_kind
from enn_nb._version import __version__
from enn_nb.errors import ExportError, OutputDirError
from enn_nb.engine import sidecar as sc
from enn_nb.engine.options import TIMEOUT
from enn_nb.engine.parity import VECTORS_SUFFIX
from enn_nb.engine.registry import class_reference
from enn_nb.engine.report import BackendResult

if TYPE_CHECKING:
    import torch

    from enn_nb.engine.plan import Plan
    from enn_nb.engine.settings import ExportSettings

def inductor_cache_dir() -> Path:
    """``TORCHINDUCTOR_CACHE_DIR`` if set, else ``<project>/.cache/inductor`` or ``<user cache>/inductor``."""
    env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if env:
        return Path(env)
    project = project_cache()
    return project / "inductor" if project else user_cache() / "inductor"


def ensure_inductor_cache() -> Path:
    """Point torch's compile cache at :func:`inductor_cache_dir` when the user has not chosen one.

    Called right before compiling (AOTI), never at import: inductor's default is a folder in the
    system temp directory that grows to a gigabyte.
    """
    path = inductor_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(path))
    return path


# -- keys -----------------------------------------------------------------------------------------------
def program_digest(ep: Any) -> str:
    """sha256 of what a captured ``torch.export`` program computes: its graphs (every op, constant argument and
    dtype, as code without type annotations and source-line comments), its signature, its shape constraints, and every tensor
    it holds (parameters, buffers, lifted constants, non-persistent buffers) by name, dtype, shape and bytes.

    Module attributes that change the computation without changing a tensor (a function attribute such as
    ``torch.tanh``/``torch.relu``, a tuple or a dtype setting) are in the graph, so they are in the key.
    """
    import torch

    digest = hashlib.sha256()
    # each graph's code (nested ones of control flow too) without annotations and source comments: the same for
    # a program and its saved-and-loaded copy (a loaded program lacks some symbolic annotations)
    for name, sub in ep.graph_module.named_modules():
        if isinstance(sub, torch.fx.GraphModule):
            lines = (line for line in sub.code.splitlines() if line.strip() and not line.lstrip().startswith("#"))
            digest.update(f"{name}|{chr(10).join(lines)}|".encode())
    digest.update(f"|{ep.graph_signature}|{sorted((str(k), str(v)) for k, v in ep.range_constraints.items())}|".encode())
    tensors = {**dict(ep.state_dict), **dict(ep.constants)}
    for name in sorted(tensors):
        value = tensors[name]
        if not isinstance(value, torch.Tensor):
            digest.update(f"{name}|{type(value).__qualname__}|{value!r}|".encode())  # a script object: its repr
            continue
        t = value.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tensors_digest(tensors: tuple[torch.Tensor, ...]) -> str:
    import torch

    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        digest.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def make_key(**parts: Any) -> str:
    """sha256 of the JSON of ``parts`` (sorted keys)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# -- store ----------------------------------------------------------------------------------------------
def store_dir(key: str) -> Path:
    return cache_dir() / "export" / key[:2] / key


def store(key: str, out_dir: Path, names: list[str]) -> None:
    """Keep copies (hard links where possible) of the named files of ``out_dir`` under the key."""
    target = store_dir(key)
    try:
        with atomic_path(target) as tmp:
            for name in names:
                dst = tmp / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                link_or_copy(out_dir / name, dst)
    except OSError:
        pass  # the cache is an optimisation: a full disk or a read-only cache folder must not fail the export


def fetch(key: str, names: list[str], out_dir: Path) -> bool:
    """Place the stored files of ``key`` into ``out_dir`` (each atomically); False when not stored."""
    source = store_dir(key)
    if not all((source / name).exists() for name in names):
        return False
    for name in names:
        src, dst = source / name, out_dir / name
        check_replaceable_artifact(dst, directory=src.is_dir())
        with atomic_path(dst) as tmp:
            link_or_copy(src, tmp)
    return True


def check_replaceable_artifact(dst: Path, *, directory: bool) -> None:
    """Refuse to replace ``dst`` unless it is absent, a file (for a file) or an earlier enn_nb artifact folder.

    Raises:
        OutputDirError: ``dst`` holds something enn_nb did not write (a user's folder, a FIFO...).
    """

    check_same_kind(dst, directory=directory, what="artifact", error=OutputDirError)
    if directory and dst.is_dir() and not dst.is_symlink() and not _is_enn_artifact_dir(dst):
        raise OutputDirError(
            f"`{dst}` is a folder enn_nb did not write (no sidecar lists its files); enn_nb will not replace it. "
            "Move it away, or export to another `out_dir`/`stem`."
        )


def _is_enn_artifact_dir(path: Path) -> bool:
    """True when ``path``'s sidecar names it as a folder artifact and lists every file inside it."""

    try:
        data = sc.read(sc.sidecar_path(path), check_schema=False)
    except Exception:  # noqa: BLE001 - no readable sidecar: not provably ours
        return False
    if data.get("artifact") != path.name or not data.get("directory_artifact"):
        return False
    listed = {str(entry.get("path")) for entry in data.get("files") or [] if isinstance(entry, dict)}
    try:
        inside = {p.relative_to(path.parent).as_posix() for p in path.rglob("*") if not p.is_dir()}
    except OSError:
        return False
    return inside <= listed


def link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` as a copy-on-write clone of ``src`` (each file of a folder) where the filesystem has them, else a
    read-only hard link, else a copy.

    A clone shares the blocks until either side is written: editing an exported file in place never
    reaches the store or another folder. A hard link is one file under two names, so it is made
    read-only (for everyone but root) and enn_nb itself only ever replaces such files (a new file),
    never writes into them; the README says exported files may be shared with the cache."""
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=link_file)
    else:
        link_file(src, dst)


def link_file(src: str | Path, dst: str | Path) -> None:
    if clone_file(src, dst):
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
        return
    with contextlib.suppress(OSError):
        mode = os.stat(dst).st_mode
        os.chmod(dst, mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int), btrfs, XFS (reflink=1), bcachefs, OCFS2...


def clone_file(src: str | Path, dst: str | Path) -> bool:
    """Make ``dst`` (absent) a copy-on-write clone of ``src``; False where the filesystem cannot (nothing left)."""
    if not sys.platform.startswith("linux"):
        return False
    import fcntl

    try:
        fd_src = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fd_dst = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        os.close(fd_src)
        return False
    try:
        fcntl.ioctl(fd_dst, _FICLONE, fd_src)
    except OSError:
        os.close(fd_dst)
        os.unlink(dst)
        return False
    finally:
        os.close(fd_src)
    os.close(fd_dst)
    shutil.copystat(src, dst)
    return True


# -- an export's key and its hits -----------------------------------------------------------------
def export_key(plan: Plan, digest: dict[str, str], spec: Any, source: dict[str, Any], settings: ExportSettings) -> str:
    """The cache key of one backend's export: everything that can change its artifact."""

    return make_key(
        enn_nb=__version__,
        digest=digest,
        spec=spec.to_dict() if spec is not None else None,
        source_hash=source.get("content_hash"),
        backend=plan.name,
        backend_class=class_reference(type(plan.backend)),
        options=sc.jsonable({k: v for k, v in plan.options.items() if k != TIMEOUT}),  # a limit, not the artifact
        onnx_options=sc.jsonable(settings.onnx_options) if plan.backend.consumes == "onnx" else None,
        versions=sc.versions(plan.backend.versions()),
        tolerance=list(plan.backend.default_tolerance),
        tolerances=settings.tolerances.given(plan.name).to_dict(),
        dynamic_batch=settings.dynamic_batch,
        batch_range=list(settings.batch_range),
        verify=settings.verify,
        safe=settings.safe,
        stem=settings.stem,
        metadata=sc.jsonable(dict(settings.metadata)),
    )


def lookup(plan: Plan, settings: ExportSettings) -> BackendResult | None:
    """The cached result of ``plan`` (its files checked, fetched from the store if needed), or None."""

    out = settings.out
    started = time.perf_counter()
    side = sc.sidecar_path(out / plan.artifact_name(settings.stem))
    data = _valid_cached(side, plan.key, out)
    if data is None:
        names = _stored_listing(plan.key)
        if names and fetch(plan.key, names, out):  # type: ignore[arg-type]
            data = _valid_cached(side, plan.key, out)
    if data is None:
        return None
    result = BackendResult.from_sidecar(data, out, side, cached=True)
    result.timings = {**result.timings, "cache_lookup": time.perf_counter() - started}
    result.timings["total"] = result.timings["cache_lookup"]
    return result


def _valid_cached(side: Path, key: str | None, out: Path) -> dict[str, Any] | None:
    if not key or not side.is_file():
        return None
    try:
        data = sc.read(side, check_schema=False)  # validated when written; the key and hashes are checked here
    except ExportError:
        return None
    if data.get("cache_key") != key or data.get("status") != "ok" or sc.check_files(data, out):
        return None
    vectors = (data.get("parity") or {}).get("vectors")
    if vectors and vectors.get("file"):
        path = out / vectors["file"]
        if not path.is_file() or sc.sha256_file(path) != vectors.get("sha256"):
            return None
    return data


def stored_names(result: BackendResult, settings: ExportSettings) -> list[str]:
    """The files of ``settings.out`` that a finished export stores under its key."""
    names = []
    if result.artifact is not None:
        names.append(Path(result.artifact).name)
    names += [f["path"] for f in result.files if f["role"] != "artifact"]
    if result.sidecar is not None:
        names.append(Path(result.sidecar).name)
    log_file = (result.log or {}).get("file")
    if log_file and (settings.out / log_file).is_file():  # the conversion's captured output travels with its artifact
        names.append(log_file)
    vectors = f"{settings.stem}{VECTORS_SUFFIX}"
    if settings.verify and (settings.out / vectors).exists():
        names.append(vectors)
    return names


def _stored_listing(key: str | None) -> list[str] | None:
    if not key:
        return None
    folder = store_dir(key)
    if not folder.is_dir():
        return None
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
