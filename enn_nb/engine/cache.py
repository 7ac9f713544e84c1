"""The export cache: a content hash of (weights, module settings, spec, backend, options, versions) -> artifacts.

A hit is found first in the output directory itself (its sidecar records the key and the files'
hashes), then in the store under the cache folder, from which files are hard-linked (or copied).
Folders: ``ENN_NB_CACHE_DIR`` if set, else ``<project>/.cache/enn_nb`` when enn_nb runs from a
source checkout, else the user's cache folder (``~/.cache/enn_nb``...). Never the system temp folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def _project_cache() -> Path | None:
    pyproject = _PACKAGE_ROOT / "pyproject.toml"
    try:
        if pyproject.is_file() and 'name = "enn-nb"' in pyproject.read_text(encoding="utf-8"):
            return _PACKAGE_ROOT / ".cache"
    except OSError:
        pass
    return None


def _user_cache() -> Path:
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "enn_nb"


def cache_dir() -> Path:
    """Where exported artifacts are stored for reuse (read at call time, not at import)."""
    env = os.environ.get("ENN_NB_CACHE_DIR")
    if env:
        return Path(env)
    project = _project_cache()
    return project / "enn_nb" if project else _user_cache()


def inductor_cache_dir() -> Path:
    """``TORCHINDUCTOR_CACHE_DIR`` if set, else ``<project>/.cache/inductor`` or ``<user cache>/inductor``."""
    env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if env:
        return Path(env)
    project = _project_cache()
    return project / "inductor" if project else _user_cache() / "inductor"


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
def module_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's state (names, dtypes, shapes, bytes) and its plain settings per submodule.

    Settings (``bool/int/float/str`` attributes such as an attention ``impl`` or a scaler's
    ``compute_dtype``) change what is exported without changing any tensor, so they are hashed too.
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict(keep_vars=False).items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    for name, sub in module.named_modules():
        settings = {
            k: v
            for k, v in sorted(vars(sub).items())
            if not k.startswith("_") and k != "training" and isinstance(v, (bool, int, float, str, type(None)))
        }
        digest.update(f"{name}|{type(sub).__module__}.{type(sub).__qualname__}|{json.dumps(settings, default=str)}".encode())
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
    """``dst`` as a hard link to ``src`` (each file of a folder), a copy where links are impossible.

    Linked files are shared: they are only ever replaced (a new file), never written into."""
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=link_file)
    else:
        link_file(src, dst)


def link_file(src: str | Path, dst: str | Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


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
