"""Adapters for model libraries that do not follow enn_nb's contracts themselves.

Adapters sit above the core: each is a module that imports what it needs from ``model``,
``checkpoint`` and ``engine``, while the core finds it only through registries keyed by the top-level
package of a model's class (``enn_nb.model.spec.register_spec_reader``,
``enn_nb.model.fastpaths.register_provider``, and the ``enn_nb.builders`` entry point), registered as
lazy ``"module:attr"`` strings. So ``import enn_nb`` never imports an adapter or its library.
Built-in: ``enn_torch`` (ENN-PyTorch).
"""

from __future__ import annotations
