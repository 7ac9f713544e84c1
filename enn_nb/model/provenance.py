"""Where a save or export started from a notebook came from: cell source hash, execution count, notebook path.

Core, not notebook layer: it reads an IPython shell it is handed but never imports IPython.
"""

from __future__ import annotations

import hashlib
import os
import sys
from typing import Any

from enn_nb._fs import timestamp

#: Namespace variables and environment variables that name the running notebook, most specific first.
#: VS Code sets ``__vsc_ipynb_file__``; ipykernel copies Jupyter Server's ``JPY_SESSION_NAME`` (the
#: notebook's path relative to the server root) into ``__session__``.
NOTEBOOK_NS_KEYS = ("__vsc_ipynb_file__", "__session__")
NOTEBOOK_ENV_KEYS = ("JPY_SESSION_NAME",)


#: What provenance says when no notebook path is known.
UNKNOWN_NOTEBOOK = (
    "unknown: the kernel was not told its notebook (JupyterLab and Jupyter Server set JPY_SESSION_NAME, "
    "VS Code sets __vsc_ipynb_file__; papermill, nbclient and plain IPython set neither)"
)


def notebook_path(shell: Any) -> str | None:
    """The path of the notebook this kernel runs, when the kernel was told; otherwise None."""
    return notebook_origin(shell)[0]


def notebook_origin(shell: Any) -> tuple[str | None, str]:
    """``(path, where it was read)``, e.g. ``("notebooks/a.ipynb", "JPY_SESSION_NAME")``, or ``(None, why not)``."""
    user_ns = getattr(shell, "user_ns", None) or {}
    for key in NOTEBOOK_NS_KEYS:
        value = user_ns.get(key)
        if isinstance(value, str) and value.strip():
            return value, key
    for key in NOTEBOOK_ENV_KEYS:
        value = os.environ.get(key)
        if value and value.strip():
            return value, key
    return None, UNKNOWN_NOTEBOOK


def current_cell(shell: Any) -> tuple[str | None, int | None]:
    """The raw source and execution count of the cell running now, or ``(None, None)`` outside a cell.

    While a cell runs, IPython hands its displayhook the cell's ``ExecutionResult`` (source and
    count) and takes it back after; a magic called directly through ``run_line_magic`` sees none.
    The count is None for a cell run without storing history (a silent cell gets no number).
    """
    result = getattr(getattr(shell, "displayhook", None), "exec_result", None)
    info = getattr(result, "info", None)
    source = getattr(info, "raw_cell", None)
    if not isinstance(source, str):
        return None, None
    count = getattr(result, "execution_count", None)
    return source, count if getattr(info, "store_history", False) and isinstance(count, int) else None


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def collect(shell: Any, *, magic: str, line: str, cell: str | None = None) -> dict[str, Any]:
    """Provenance of a magic call, as a JSON object for a manifest's metadata or a sidecar.

    Args:
        shell: the running InteractiveShell.
        magic: the magic's name with its prefix, e.g. ``"%enn_save"`` or ``"%%enn_export"``.
        line: the magic's argument line.
        cell: a cell magic's body.

    Returns:
        ``{"magic", "cell_sha256", "execution_count", "notebook", "notebook_source", "recorded_at"}``.
        ``cell_sha256`` hashes the whole cell's source when the magic runs in a cell, else the magic
        invocation itself; ``execution_count`` and ``notebook`` are None when unknown;
        ``notebook_source`` says where the path was read, or why it is unknown.
    """
    source, count = current_cell(shell)
    if source is None:
        source = f"{magic} {line}".rstrip() + (f"\n{cell}" if cell is not None else "")
    notebook, origin = notebook_origin(shell)
    return {
        "magic": magic,
        "cell_sha256": sha256_text(source),
        "execution_count": count,
        "notebook": notebook,
        "notebook_source": origin,
        "recorded_at": timestamp(),
    }


def from_kernel() -> dict[str, Any] | None:
    """Notebook path, cell source hash and execution count when running inside an IPython kernel."""
    if "IPython" not in sys.modules:  # never import IPython just to ask
        return None
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except Exception:
        return None
    if shell is None:
        return None
    source, count = current_cell(shell)
    notebook, origin = notebook_origin(shell)
    return {
        "notebook": notebook,
        "notebook_source": origin,
        "cell_sha256": sha256_text(source) if source is not None else None,
        "execution_count": count,
        "recorded_at": timestamp(),
    }
