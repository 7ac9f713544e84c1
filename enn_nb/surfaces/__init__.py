"""Everything a person drives: the notebook magics and wizard, report templates, the ``enn-nb`` CLI,
plots and the demo. Surfaces sit on top of the core (``model``, ``checkpoint``, ``engine``) and build
their export requests through one function, :func:`enn_nb.engine.settings.settings_from_request`.
"""

from __future__ import annotations
