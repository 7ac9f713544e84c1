"""Export backends: one module per backend, all implementing :class:`enn_nb.export.backends.base.Backend`."""
