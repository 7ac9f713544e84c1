"""What ``%enn_save`` shows: a one-line summary of the written checkpoint, its manifest table on demand."""

from __future__ import annotations

import dataclasses
import html

from enn_nb._format import count_text, human_size, model_counts
from enn_nb.checkpoint.display import manifest_html
from enn_nb.checkpoint.manifest import Manifest


class SavedManifest(Manifest):
    """The Manifest of a checkpoint just written, displayed as one line instead of the whole table.

    It is the manifest (every attribute, ``to_dict()``, ``isinstance(x, Manifest)``); only its
    display differs: ``repr`` is one line, the HTML form folds the table into ``<details>``, and
    ``print(saved)`` or :meth:`table` gives the full table.
    """

    #: the saved model's parameter count (buffers excluded), when the model was at hand
    model_parameters: int | None = None

    @classmethod
    def of(cls, manifest: Manifest, *, model: object = None) -> SavedManifest:
        fields = {f.name: getattr(manifest, f.name) for f in dataclasses.fields(manifest) if f.init}
        saved = cls(**fields)
        if model is not None:  # a frozen dataclass: this display-only attribute is set past its __setattr__
            object.__setattr__(saved, "model_parameters", model_counts(model)[0])
        return saved

    def summary(self) -> str:
        """``saved m.safetensors (safetensors): model, 18,340 parameters (18,452 values with buffers), 72 KiB…``."""

        spec = self.spec
        what = spec.builder or "model"
        tasks = ", ".join(str(t.get("name", "?")) for t in spec.tasks or [])
        parts = [what, count_text(self.model_parameters, self.parameter_count), human_size(self.tensor_bytes)]
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
