"""What ``%enn_save`` shows: a one-line summary of the written checkpoint, its manifest table on demand."""

from __future__ import annotations

import dataclasses
import html

from enn_nb._format import human_size
from enn_nb.checkpoint.display import manifest_html
from enn_nb.checkpoint.manifest import Manifest


class SavedManifest(Manifest):
    """The Manifest of a checkpoint just written, displayed as one line instead of the whole table.

    It is the manifest (every attribute, ``to_dict()``, ``isinstance(x, Manifest)``); only its
    display differs: ``repr`` is one line, the HTML form folds the table into ``<details>``, and
    ``print(saved)`` or :meth:`table` gives the full table.
    """

    @classmethod
    def of(cls, manifest: Manifest) -> SavedManifest:
        fields = {f.name: getattr(manifest, f.name) for f in dataclasses.fields(manifest) if f.init}
        return cls(**fields)

    def summary(self) -> str:
        """``saved model.safetensors (safetensors): ReferenceModel, 12,345 parameters, 48.3 KiB, sha256 1a2b…``."""

        spec = self.spec
        what = spec.builder or "model"
        tasks = ", ".join(str(t.get("name", "?")) for t in spec.tasks or [])
        parts = [what, f"{self.parameter_count:,} parameters", human_size(self.tensor_bytes)]
        if tasks:
            parts.append(f"tasks {tasks}")
        digest = (self.content_hash or "")[:12]
        if digest:
            parts.append(f"hash {digest}")
        return f"saved {self.path} ({self.format}): " + ", ".join(parts)

    def table(self) -> Manifest:
        """The plain manifest, which displays as the full table."""
        return Manifest(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init})

    def __repr__(self) -> str:
        return self.summary() + "  (print() it or `%enn_inspect` for the table)"

    def _repr_html_(self) -> str:
        return (
            "<details class='enn-nb-saved'><summary><code>"
            + html.escape(self.summary())
            + "</code> <small>(manifest: click)</small></summary>"
            + manifest_html(self)
            + "</details>"
        )
