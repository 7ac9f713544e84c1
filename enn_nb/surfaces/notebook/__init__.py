"""Jupyter surfaces over the core API: the ``%enn_*`` magics, progress bars, the wizard.

Importing this package imports nothing heavy; ``%load_ext enn_nb`` loads :mod:`enn_nb.surfaces.notebook.magics`
and torch only loads when a magic first needs it.
"""

from __future__ import annotations

__all__: list[str] = []
