"""Imported by the warm fork server (``engine/warm.py``) when an export compiles with inductor.

A module rather than a call because the server's only hook is a list of modules to import. It runs
inductor's CPU ISA detection once (every worker forked afterwards inherits the answer) and imports
the inductor modules a first compile would import lazily (about 1 s per worker otherwise). Imports
only: nothing here starts a torch thread pool, which ``fork()`` would break.
"""

import contextlib
import importlib

from enn_nb.engine.inductor import warm_vec_isa

MODULES = (
    "torch._inductor.compile_fx",
    "torch._inductor.codegen.cpp",
    "torch._inductor.codegen.cpp_wrapper_cpu",
    "torch._inductor.package",
)

for _name in MODULES:
    with contextlib.suppress(Exception):  # an optimisation: a worker imports what is missing itself
        importlib.import_module(_name)
warm_vec_isa()
