"""A bound on the model a checkpoint's spec makes enn_nb build, derived from the tensors it declares.

A manifest's config is data: a forged ``depth=50000`` in a 90 KB checkpoint would have the builder
construct 50,000 blocks (minutes, gigabytes) before the table check could say they do not match.
While a builder runs, torch's global registration hooks count the parameters and buffers it
registers on this thread; past a generous multiple of what the checkpoint declares, the build stops
with one clear error.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from enn_nb.errors import CheckpointError

#: A built model may register more than a checkpoint stores (non-persistent buffers, aliases, a
#: partial checkpoint loaded with ``strict=False``): this factor, plus the fixed room below.
FACTOR = 4
ROOM_TENSORS = 1024
ROOM_ELEMENTS = 1 << 24


class BuildBudgetError(CheckpointError):
    """The spec's builder registers far more tensors than the checkpoint declares: a forged or mismatched config."""


@contextlib.contextmanager
def build_budget(tensors: int, elements: int, *, what: str) -> Iterator[None]:
    """Stop a build on this thread once it registers more than ``FACTOR`` × the declared tensors or elements.

    Raises:
        BuildBudgetError: the limit was passed (inside the builder, or after it if the builder swallowed it).
    """
    from torch.nn.modules.module import (
        register_module_buffer_registration_hook,
        register_module_parameter_registration_hook,
    )

    max_tensors = FACTOR * tensors + ROOM_TENSORS
    max_elements = FACTOR * elements + ROOM_ELEMENTS
    thread = threading.get_ident()
    seen = {"tensors": 0, "elements": 0}
    over: list[BuildBudgetError] = []

    def count(module: Any, name: str, tensor: Any) -> None:
        if tensor is None or threading.get_ident() != thread:
            return
        seen["tensors"] += 1
        with contextlib.suppress(Exception):  # an uninitialized (lazy) parameter has no size yet
            seen["elements"] += int(tensor.numel())
        if not over and (seen["tensors"] > max_tensors or seen["elements"] > max_elements):
            over.append(BuildBudgetError(
                f"{what} declares {tensors} tensors ({elements} values), but the model its spec describes had "
                f"already registered {seen['tensors']} tensors ({seen['elements']} values) when enn_nb stopped "
                "building it: the spec's config (a depth, a width) does not match the stored weights, so the "
                "checkpoint is damaged or forged. Nothing was loaded; pass `model=` to load into a model you built."))
        if over:
            raise over[0]

    handles = [register_module_parameter_registration_hook(count), register_module_buffer_registration_hook(count)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
    if over:  # the builder caught it and went on
        raise over[0]
