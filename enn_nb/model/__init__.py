"""The model description every layer above shares: what a model is, takes and gives, and how to feed it.

``spec`` (ModelSpec and the builder registry), ``signature`` (input/output tensor signatures),
``fastpaths`` (the export-safe switches a model declares), ``provenance`` (where a model came from)
and ``examples`` (example inputs, eval-only calls and resampling, used by both checkpoints and export).
Nothing here imports ``checkpoint``, ``engine``, ``adapters`` or the surfaces.
"""

from __future__ import annotations
