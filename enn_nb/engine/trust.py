"""What loading an artifact may run: .pt2 archives are checked for pickles, AOTI packages need trust.

A ``.pt2`` archive can carry pickles that ``torch.export.load`` unpickles with ``weights_only=False``
(weights or constants marked ``use_pickle``, legacy ``<model>.pt`` weight files, ``custom_obj_``/
``opaque_obj_`` constants, sample inputs that the weights-only unpickler refuses): :func:`check_pt2_archive`
refuses every one before torch opens the file. An AOTInductor package is a shared library by design:
it runs native code when loaded, so loading one that enn_nb did not just write needs ``trust=True``.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path

from enn_nb._safeio import MAX_JSON_BYTES, escape
from enn_nb.engine.backends.base import Backend
from enn_nb.errors import ExportError, UnsafeArtifactError

#: The uncompressed size a .pt2 archive may claim per member relative to its own size (torch stores, never deflates).
_MAX_EXPANSION = 2


def check_pt2_archive(path: Path) -> None:
    """Refuse a ``.pt2``/``.aoti.pt2`` archive that holds anything ``torch.export.load`` would unpickle unsafely.

    Raises:
        UnsafeArtifactError: a pickled weight/constant, a legacy pickled weights file, a pickled custom
            object, or sample inputs the weights-only unpickler refuses.
        ExportError: not a readable zip archive.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ExportError(f"`{path}` is not a readable .pt2 archive ({exc}); re-export it.") from None
    with archive:
        size = path.stat().st_size
        for info in archive.infolist():
            if info.file_size > size * _MAX_EXPANSION + (1 << 20):
                raise UnsafeArtifactError(
                    f"`{path}` member `{escape(info.filename)}` claims {info.file_size} bytes uncompressed, far more "
                    "than the archive holds (a zip bomb); enn_nb refused to load it.")
        for name in archive.namelist():
            inner = name.split("/", 1)[1] if "/" in name else name
            base = inner.rsplit("/", 1)[-1]
            if inner.startswith("data/constants/") and base.startswith(("custom_obj_", "opaque_obj_")):
                _refuse(path, name, "a pickled custom object")
            if inner.startswith(("data/weights/", "data/constants/")) and base.endswith(".pt"):
                _refuse(path, name, "a legacy pickled weights/constants file")
            if inner.endswith(("_weights_config.json", "_constants_config.json")):
                _check_payload_config(path, archive, name)
            if inner.startswith("data/sample_inputs/"):
                _check_weights_only(path, archive, name)


def _refuse(path: Path, member: str, what: str) -> None:
    raise UnsafeArtifactError(
        f"`{path}` holds {what} (`{escape(member)}`) that `torch.export.load` would unpickle with "
        "`weights_only=False`, which can run any code; enn_nb refused to load it. Re-export the model with enn_nb, "
        "or load it yourself with `torch.export.load` only if you fully trust where it came from."
    )


def _check_payload_config(path: Path, archive: zipfile.ZipFile, member: str) -> None:
    info = archive.getinfo(member)
    if info.file_size > MAX_JSON_BYTES:
        _refuse(path, member, "an oversized payload config")
    try:
        config = json.loads(archive.read(member))
    except (ValueError, RecursionError, zipfile.BadZipFile, OSError) as exc:
        raise ExportError(f"`{path}` member `{escape(member)}` is not valid JSON ({str(exc)[:100]}); re-export it.") from None
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise ExportError(f"`{path}` member `{escape(member)}` is not a payload config; re-export it.")
    for fqn, meta in entries.items():
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            _refuse(path, member, f"a weight/constant `{escape(fqn)}` marked `use_pickle`")


def _check_weights_only(path: Path, archive: zipfile.ZipFile, member: str) -> None:
    """torch falls back to ``weights_only=False`` when the weights-only unpickler refuses sample inputs."""

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about protocols it did not write: noise here
            torch.load(io.BytesIO(archive.read(member)), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - whatever the weights-only unpickler refuses, torch retries unsafely
        _refuse(path, member, "sample inputs the weights-only unpickler refuses")


def require_trust(backend: Backend, artifact: Path, trust: bool) -> None:
    """Refuse to load a native-code artifact (``Backend.runs_native_code``) without ``trust``; with it, warn
    once in one line.

    Raises:
        UnsafeArtifactError: ``backend`` produces native code and ``trust`` is False.
    """
    if not backend.runs_native_code:
        return
    if not trust:
        raise UnsafeArtifactError(
            f"`{artifact}` is an AOTInductor package: loading it runs the native code inside it, and hashes "
            "prove integrity, not who made it. Pass `trust=True` (CLI: `--trust`) only for packages you or "
            "a source you trust built."
        )
    warnings.warn(f"enn_nb: loading `{artifact}` runs its native code (AOTInductor package; trust=True was given).",
                  stacklevel=3)
