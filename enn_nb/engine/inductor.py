"""Inductor's one-time costs, paid once per session and kept inside enn_nb's cache folders.

Two things every AOTInductor compile in a fresh process pays before it compiles the model:

- **CPU ISA detection**: inductor compiles and loads a probe program per vector ISA the CPU claims
  (AVX2, AVX-512...): about 6 s on 2 cores with an empty inductor cache, 1 s with a warm one. The
  result is cached per process, so the warm fork server (``engine/warm.py``) runs it once
  (:func:`warm_vec_isa`) and every worker forked from it inherits the answer.
- **Precompiled headers**: with warm headers the reference model's compile took 15.3 s here instead
  of 16.8 s (building them the first time costs about 8 s), but torch keeps them (~300 MB) under
  the system temp folder whatever ``TORCHINDUCTOR_CACHE_DIR`` says. :func:`headers_in_cache` moves
  them into the inductor cache folder; where this torch offers no such switch, the headers stay off.
"""

from __future__ import annotations

import logging
from pathlib import Path

from enn_nb.engine.cache import ensure_inductor_cache

log = logging.getLogger(__name__)

HEADERS = "precompiled_headers"  # the folder name torch uses under its own default cache folder


def headers_in_cache() -> Path | None:
    """Point torch's precompiled-header folder into the inductor cache folder; the folder, or None.

    None when this torch keeps the folder somewhere enn_nb cannot move (then compile without headers).
    """
    from torch._inductor import codecache

    if not isinstance(getattr(codecache, "_HEADER_DIR", None), str) or not hasattr(codecache, "_HEADER_LOCK_DIR"):
        return None
    folder = ensure_inductor_cache() / HEADERS
    if codecache._HEADER_DIR != str(folder):
        codecache._HEADER_DIR = str(folder)
        codecache._HEADER_LOCK_DIR = str(folder / "locks")
        # torch remembers each header's path per process: forget those in the folder used before
        cache_clear = getattr(getattr(codecache, "_precompile_header", None), "cache_clear", None)
        if cache_clear is not None:
            cache_clear()
    return folder


def warm_vec_isa() -> None:
    """Run inductor's CPU ISA detection now (its probes build inside the inductor cache folder).

    Never raises: a failure here only means each compile detects the ISA itself, as without this.
    """
    try:
        ensure_inductor_cache()
        from torch._inductor import cpu_vec_isa

        cpu_vec_isa.valid_vec_isa_list()
    except Exception as exc:  # noqa: BLE001 - an optimisation; the compile repeats the detection
        log.info("inductor ISA detection not warmed (%s: %s)", type(exc).__name__, exc)
