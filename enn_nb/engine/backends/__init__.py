"""Export backends: one module per backend, all implementing :class:`enn_nb.engine.backends.base.Backend`."""
