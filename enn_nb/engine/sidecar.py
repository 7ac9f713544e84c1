"""The ``<artifact>.enn.json`` sidecar: built, validated against ``export.schema.json``, written atomically."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

from enn_nb._fs import timestamp, write_text
from enn_nb._safeio import MAX_JSON_BYTES, confined, escape, json_loads, read_capped
from enn_nb._version import __version__
from enn_nb.errors import ExportError

SCHEMA = "enn_nb.export/1"
SIDECAR_SUFFIX = ".enn.json"
_SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schemas" / "export.schema.json"


def sidecar_path(artifact: Path) -> Path:
    """``model.onnx`` -> ``model.onnx.enn.json`` (a directory artifact gets its sidecar beside it)."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + SIDECAR_SUFFIX)


@functools.lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The JSON Schema of sidecars (shipped as ``enn_nb/schemas/export.schema.json``)."""
    return json.loads(_SCHEMA_FILE.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema

    return jsonschema.Draft202012Validator(schema())


def warm_up() -> None:
    """Compile the sidecar validator (milliseconds); jsonschema is imported only to explain a refusal.

    The engine calls it in a background thread while the children convert.
    """
    from enn_nb._schema_check import warm_up as compile_validator  # the schema compiler loads on first use

    compile_validator(_SCHEMA_FILE)


def validate(data: dict[str, Any]) -> None:
    """Raise ExportError naming the first schema violation (path and message)."""
    from enn_nb._schema_check import passes_compiled

    if passes_compiled(_SCHEMA_FILE, data):
        return
    validator = _validator()
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "<root>"
        raise ExportError(
            f"The sidecar does not match schema `{SCHEMA}` at `{where}`: {first.message}. "
            "This is a bug in enn_nb or in a backend plugin's conversion result; please report it."
        )


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entries(artifact: Path | None, extra_files: list[Path], base: Path) -> list[dict[str, Any]]:
    """sha256 and size of every file of an artifact (a directory artifact lists each file inside it).

    ``artifact`` is None when it could not be finished here (a deferred TensorRT engine): the files
    it is to be built from are still listed.
    """
    entries: list[dict[str, Any]] = []

    def add(path: Path, role: str) -> None:
        entries.append(
            {"path": path.relative_to(base).as_posix(), "sha256": sha256_file(path), "size": path.stat().st_size, "role": role}
        )

    if artifact is None:
        pass
    elif artifact.is_dir():
        for path in sorted(p for p in artifact.rglob("*") if p.is_file()):
            add(path, "artifact")
    else:
        add(artifact, "artifact")
    for path in extra_files:
        if path.is_dir():
            for inner in sorted(p for p in path.rglob("*") if p.is_file()):
                add(inner, "extra")
        else:
            add(path, "external_data" if path.name.endswith(".data") else "extra")
    return entries


def check_files(sidecar: dict[str, Any], base: Path, artifact: Path | None = None) -> list[str]:
    """Problems with the files a sidecar lists (missing, other size, other sha256); empty when all match.

    Every listed path must stay inside ``base`` (symlinks included) and be a regular file; when
    ``artifact`` is given, every file it consists of must be listed (an unlisted file would be loaded
    unchecked).
    """

    problems = []
    listed = set()
    for entry in sidecar.get("files", []):
        path = confined(base, entry["path"], what="A file the sidecar lists", error=ExportError, must_exist=False)
        listed.add(path.resolve())
        shown = escape(entry["path"])
        if not path.is_file():
            problems.append(f"`{shown}` is missing or not a regular file")
        elif path.stat().st_size != entry["size"]:
            problems.append(f"`{shown}` has {path.stat().st_size} bytes, the sidecar says {entry['size']}")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"`{shown}` has another sha256 than the sidecar records")
    if artifact is not None and artifact.exists():
        parts = [p for p in artifact.rglob("*") if not p.is_dir()] if artifact.is_dir() else [artifact]
        unlisted = [p for p in parts if p.resolve() not in listed]
        if unlisted:
            problems.append(f"`{escape(unlisted[0].relative_to(base) if unlisted[0].is_relative_to(base) else unlisted[0])}` "
                            f"is part of the artifact but not listed in its sidecar ({len(unlisted)} unlisted)")
    return problems


@functools.lru_cache(maxsize=1)
def host() -> dict[str, Any]:
    """OS, machine, CPU and Python of this host."""
    cpu = platform.processor() or None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "os": f"{platform.system()} {platform.release()}",
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def versions(extra: dict[str, str] | None = None) -> dict[str, str]:
    """enn_nb, python, torch and numpy versions, plus the backend's own (``extra``)."""
    out = {"enn_nb": __version__, "python": platform.python_version()}
    for dist in ("torch", "numpy", "safetensors"):
        found = dist_version(dist)
        if found:
            out[dist] = found
    out.update(extra or {})
    return out


@functools.lru_cache(maxsize=None)
def dist_version(dist: str) -> str | None:
    """An installed distribution's version (cached: metadata lookups scan every site folder)."""
    from importlib.metadata import PackageNotFoundError, version  # ~40 modules (email, zipfile): on first use

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def build(**fields: Any) -> dict[str, Any]:
    """A sidecar dict with every required key, defaults filled in for what ``fields`` lacks."""
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "backend": "",
        "status": "failed",
        "stage": None,
        "error": None,
        "created": timestamp(),
        "artifact": None,
        "directory_artifact": False,
        "files": [],
        "inputs": [],
        "outputs": [],
        "dynamic_batch": None,
        "dynamic_dims": {},
        "format": {},
        "options": {},
        "spec": None,
        "source": {"kind": "model"},
        "deviations": [],
        "parity": {"status": "not_run"},
        "timings": {},
        "versions": versions(),
        "host": host(),
        "provenance": None,
        "metadata": None,
        "embedded": None,
        "embedded_metadata": False,
        "notes": [],
        "details": {},
        "deferred": None,
        "cache_key": None,
    }
    data.update(fields)
    return json.loads(json.dumps(data, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return repr(value)


def jsonable(value: Any) -> Any:
    """``value`` through JSON: arrays become lists, anything else JSON lacks becomes its ``repr``."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else repr(v)))


def write(path: Path, data: dict[str, Any]) -> Path:
    """Validate ``data`` and write it to ``path`` atomically."""
    validate(data)
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def read(path: Path, *, check_schema: bool = True) -> dict[str, Any]:
    """Load and validate a sidecar (``path`` may be the artifact or the sidecar itself).

    ``check_schema=False`` skips the JSON Schema validation (importing jsonschema takes seconds):
    the cache uses it for sidecars it wrote itself and checks the key and the files' hashes instead.

    Raises:
        ExportError: no sidecar, not JSON, another schema, or invalid.
    """
    path = Path(path)
    if not path.name.endswith(SIDECAR_SUFFIX):
        path = sidecar_path(path)
    if not path.is_file():
        raise ExportError(
            f"No sidecar `{path.name}` beside the artifact in `{path.parent}`; enn_nb verifies only artifacts it "
            "exported (re-export with `enn_nb.export`)."
        )

    data = json_loads(read_capped(path, MAX_JSON_BYTES, what="The sidecar", error=ExportError),
                      what=f"The sidecar `{path}` (damaged: re-export the artifact)", error=ExportError)
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ExportError(f"`{path}` has schema {found!r}; this enn_nb reads `{SCHEMA}`.")
    if check_schema:
        validate(data)
    return data
