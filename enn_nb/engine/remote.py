"""Exports to and verification from object storage: stage locally, verify, upload; fetch, check hashes, run.

``export(..., out_dir="s3://bucket/exports")`` runs the whole export into a local staging folder
(one per destination URL under the cache folder, so a second export to the same URL finds its
earlier artifacts there), then uploads every file it wrote (artifacts, sidecars, parity vectors,
logs), each file visible on the store only once complete. ``verify("s3://.../model.onnx")`` fetches
the sidecar, then the files it lists and the vectors file, into the cache (keyed by the sidecar's
ETag/version), and verifies the local copy: hashes first, nothing loaded on a mismatch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from enn_nb.errors import ExportError
from enn_nb.storage import Remote, fetch, fetch_many, put_tree


def stage_dir(remote: Remote) -> Path:
    """The local folder an export to ``remote`` is written to before upload (stable per URL)."""
    from enn_nb._cachedir import cache_dir

    return cache_dir() / "staged" / hashlib.sha256(remote.url.encode()).hexdigest()[:24]


def upload(stage: Path, remote: Remote, names: list[str] | None = None) -> list[str]:
    """Upload the staged files (all of them, or those under ``names``) to ``remote``; returns their URLs."""
    done: list[str] = []
    for path in sorted(p for p in stage.iterdir()):
        if names is not None and path.name not in names:
            continue
        if path.name.startswith("."):  # temporaries, lock files
            continue
        done += [r.url for r in put_tree(path, remote.child(path.name))]
    return done


def fetch_artifact(remote: Remote) -> Path:
    """The local copy of an exported artifact at ``remote`` with its sidecar, listed files and vectors.

    Raises:
        ExportError: no sidecar beside the artifact, or a sidecar naming a path outside its folder.
    """
    from enn_nb.engine import sidecar as sc

    if remote.name.endswith(sc.SIDECAR_SUFFIX):
        side = remote
        remote = remote.sibling(remote.name[: -len(sc.SIDECAR_SUFFIX)])
    else:
        side = remote.sibling(remote.name + sc.SIDECAR_SUFFIX)
    try:
        local_side = fetch(side)
    except Exception as exc:  # noqa: BLE001 - NotACheckpointError from the store: say what is missing
        raise ExportError(f"No sidecar `{side.url}` beside `{remote.url}`: verify needs the `.enn.json` the export "
                          f"wrote. ({exc})") from None
    data = sc.read(local_side)
    wanted = [entry["path"] for entry in data.get("files", [])]
    vectors = ((data.get("parity") or {}).get("vectors") or {}).get("file")
    if vectors:
        wanted.append(vectors)
    for rel in wanted:
        _inside(rel, side)
    wanted += _float_side_files(remote, side, data)
    # every file keyed by its own ETag: a file changed on the store is fetched again, and then fails its hash
    local = fetch_many(remote.parent, [side.name, *wanted])
    return local / remote.name


def _inside(rel: Any, side: Remote) -> None:
    """Raise unless ``rel`` (a name a sidecar gives) stays inside the sidecar's folder."""
    parts = PurePosixPath(rel).parts if isinstance(rel, str) else ()
    if not parts or rel.startswith("/") or ".." in parts or "\\" in rel:
        raise ExportError(f"The sidecar `{side.url}` lists `{rel}`, a path outside its folder; it is damaged or forged.")


def _float_side_files(remote: Remote, side: Remote, data: Mapping[str, Any]) -> list[str]:
    """For a quantized artifact: the float artifact's sidecar and the vectors file it names (verify measures the
    quantized artifact against the float model's outputs recorded there); none when there is no such sidecar."""
    from enn_nb.engine import sidecar as sc

    block = data.get("quantization")
    name = block.get("float_artifact") if isinstance(block, Mapping) else None
    if not isinstance(name, str):
        return []
    _inside(name, side)
    float_side = remote.sibling(name + sc.SIDECAR_SUFFIX)
    try:
        float_data = sc.read(fetch(float_side))
    except Exception:  # noqa: BLE001 - not there or unreadable: verify names what is missing
        return []
    vectors = ((float_data.get("parity") or {}).get("vectors") or {}).get("file")
    if vectors is not None:
        _inside(vectors, float_side)
    return [float_side.name, *([vectors] if vectors else [])]


def rewrite_source(source: Mapping[str, Any], url: str) -> dict[str, Any]:
    """The export report's source for a checkpoint read from ``url`` (the URL, never the cache path)."""
    out = dict(source)
    out["path"] = url
    return out
