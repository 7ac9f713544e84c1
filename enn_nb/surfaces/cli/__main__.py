"""``python -m enn_nb.surfaces.cli`` runs the ``enn-nb`` command."""

from __future__ import annotations

from enn_nb.surfaces.cli import main

raise SystemExit(main())
