"""Cache hits made true in the folder they land in: their parity vectors, their provenance, their timings.

An export cache hit places the stored artifact and sidecar in ``out_dir`` as hard links (shared with
the store and with every other folder that hit the same key). Three things must still hold there:

* its sidecar's parity vectors must be the file it names: when this export writes a new
  ``<stem>.vectors.safetensors`` (fresh backends) or another hit brings its own, the hit keeps its
  vectors as ``<artifact>.vectors.safetensors`` and its sidecar names that file;
* the sidecar records *this* export's provenance, source and timings, with the first export's in
  ``cached_from`` (a hit converts nothing: its convert seconds are 0 and its total is the lookup);
* nothing is written into a linked file: every file is replaced (a new inode), so another folder or
  the store never sees a change.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enn_nb._fs import atomic_path, remove_path, temp_path, timestamp
from enn_nb.engine import sidecar as sc
from enn_nb.engine.cache import link_or_copy
from enn_nb.engine.parity import VECTORS_SUFFIX
from enn_nb.engine.report import BackendResult

if TYPE_CHECKING:
    from enn_nb.engine.finish import RunInfo
    from enn_nb.engine.plan import Plan
    from enn_nb.engine.settings import ExportSettings


@dataclasses.dataclass
class _Hit:
    plan: Plan
    vectors_sha: str | None  # what its sidecar records
    kept: Path | None  # a hard link to the vectors file it was validated with (its inode outlives a replace)


class Hits:
    """The cache hits of one export, kept from their lookup until :meth:`settle` rewrites their sidecars."""

    def __init__(self, settings: ExportSettings) -> None:
        self.settings = settings
        self.items: list[_Hit] = []
        self._stash: Path | None = None

    def keep(self, plan: Plan, result: BackendResult) -> None:
        """Remember a hit right after its lookup validated it (its vectors file matches its sidecar now)."""
        vectors = (result.parity or {}).get("vectors") or {}
        kept = None
        if vectors.get("file"):
            if self._stash is None:
                self._stash = temp_path(self.settings.out / "cache-hits")
                self._stash.mkdir()
            kept = self._stash / f"{plan.name}{VECTORS_SUFFIX}"
            link_or_copy(self.settings.out / vectors["file"], kept)
        self.items.append(_Hit(plan, vectors.get("sha256"), kept))

    def settle(self, info: RunInfo) -> None:
        """Give each hit its own vectors file where the folder's one changed, and rewrite its sidecar."""
        for hit in self.items:
            if hit.plan.result is not None:
                hit.plan.result = self._settle(hit, info)

    def __enter__(self) -> Hits:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._stash is not None:
            remove_path(self._stash)
            self._stash = None

    def _settle(self, hit: _Hit, info: RunInfo) -> BackendResult:
        started = time.perf_counter()
        result = hit.plan.result
        out = self.settings.out
        side = Path(result.sidecar)
        data = sc.read(side, check_schema=False)
        vectors = (data.get("parity") or {}).get("vectors")
        if vectors and hit.kept is not None:
            current = out / vectors["file"]
            if not current.is_file() or sc.sha256_file(current) != hit.vectors_sha:
                # the folder's vectors are another export's now: this artifact keeps the ones it was checked with
                own = out / f"{Path(result.artifact).name if result.artifact else hit.plan.name}{VECTORS_SUFFIX}"
                with atomic_path(own) as tmp:
                    link_or_copy(hit.kept, tmp)
                data["parity"]["vectors"] = {"file": own.name, "sha256": hit.vectors_sha}
        first = data.get("cached_from") or {
            "created": data.get("created"),
            "provenance": data.get("provenance"),
            "source": data.get("source"),
            "timings": data.get("timings"),
        }
        lookup_s = float(result.timings.get("cache_lookup", 0.0)) + time.perf_counter() - started
        data.update(
            created=timestamp(),
            provenance=dict(self.settings.provenance) if self.settings.provenance else None,
            source=info.source,
            timings={"cache_lookup": lookup_s, "total": lookup_s},  # nothing converted or verified now
            cached_from=first,
        )
        sc.write(side, data)  # a new file: the store and other folders keep theirs
        return BackendResult.from_sidecar(data, out, side, cached=True)
