"""The one YAML loader for user text (``--meta``, ``-p``, the ``%%enn_export`` body, report parameters).

PyYAML's ``safe_load`` constructs no objects, but it follows YAML 1.1 (``1e-5`` is a string there;
people mean the number) and it expands aliases: 382 bytes of nested ``&a``/``*a`` become hundreds of
megabytes. This loader reads YAML 1.2 floats, refuses anchors and aliases (user parameters never need
them), and bounds the text's size and nesting depth.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from enn_nb.errors import SpecError

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 32

# YAML 1.2 floats: `1e-5`, `.5`, `3.`, `-2E+3` (YAML 1.1 insists on a dot before the exponent).
_FLOAT_1_2 = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")


class UnsafeYamlError(SpecError):
    """User YAML refused before parsing completed: anchors/aliases, too large or too deep."""


@functools.lru_cache(maxsize=1)
def _loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        _depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise UnsafeYamlError(_refusal(self, "an alias (`*name`)"))
            event = self.peek_event()
            if getattr(event, "anchor", None) is not None:
                raise UnsafeYamlError(_refusal(self, f"an anchor (`&{event.anchor}`)"))
            self._depth += 1
            try:
                if self._depth > MAX_DEPTH:
                    raise UnsafeYamlError(f"The YAML nests deeper than {MAX_DEPTH} levels; flatten it.")
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789."))
    return Loader


def _refusal(loader: Any, what: str) -> str:
    mark = loader.peek_event().start_mark
    return (f"The YAML holds {what} at line {mark.line + 1}; enn_nb refuses anchors and aliases in parameters "
            "(they can expand a few bytes into gigabytes). Write the value out in full.")


def safe_load(text: str) -> Any:
    """Parse user YAML: plain data only, YAML 1.2 floats, no anchors/aliases, bounded size and depth.

    Raises:
        UnsafeYamlError: anchors or aliases, more than :data:`MAX_BYTES`, deeper than :data:`MAX_DEPTH`.
        yaml.YAMLError: the text is not valid YAML (callers turn it into their own error with the mark).
    """
    import yaml

    if len(text.encode("utf-8", "replace")) > MAX_BYTES:
        raise UnsafeYamlError(f"The YAML is {len(text)} characters, more than the {MAX_BYTES}-byte limit for "
                              "parameters; pass large data through a file path instead.")
    return yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass
