"""A report whose cell raised, made readable: a FAIL verdict box naming the cause, the traceback folded,
and no empty sections after the cell that stopped it."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

from enn_nb.surfaces.reports.verdict import VERDICT_MIME, Verdict

#: papermill's own banner cells ("An Exception was encountered at ...") carry this tag.
PAPERMILL_ERROR_TAG = "papermill-error-cell-tag"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def failure_verdict(ename: str, evalue: str, where: str) -> Verdict:
    """The verdict of a report that stopped: FAIL, with the exception as its one failure."""
    first = next((line.strip() for line in str(evalue).splitlines() if line.strip()), "")
    cause = f"{ename}: {first}" if first else ename
    return Verdict(ok=False, headline=f"The report stopped in {where}; the cells after it did not run.",
                   failures=[cause])


def make_readable(nb_path: Path, *, where: str) -> Verdict | None:
    """Rewrite the executed notebook of a failed report in place; the FAIL verdict it now opens on.

    * papermill's red banner cells are removed;
    * the verdict box that said "running" (or, without one, the failing cell) shows the FAIL verdict;
    * the failing cell's traceback becomes a folded block under one line naming the exception;
    * the cells after it (never run) are replaced by one line saying the report stopped there.
    """
    import nbformat

    from enn_nb._fs import atomic_path

    nb = nbformat.read(nb_path, as_version=4)
    nb.cells = [c for c in nb.cells if PAPERMILL_ERROR_TAG not in c.get("metadata", {}).get("tags", [])]
    failing = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"
                    and any(o.get("output_type") == "error" for o in c.get("outputs", []))), None)
    if failing is None:
        return None
    cell = nb.cells[failing]
    error = next(o for o in cell.outputs if o.get("output_type") == "error")
    verdict = failure_verdict(str(error.get("ename", "Error")), str(error.get("evalue", "")), where)
    bundle = nbformat.v4.new_output("display_data", data=verdict._repr_mimebundle_())
    if not _replace_pending(nb, bundle):
        cell.outputs.insert(0, bundle)
    cell.outputs = [_folded(o) if o is error else o for o in cell.outputs]
    stopped = nbformat.v4.new_markdown_cell(
        f"*The report stopped in {where}; the sections after it were not run. Fix the cause named in the "
        "verdict above and run the report again.*"
    )
    stopped.metadata["tags"] = ["enn-nb-stopped"]
    nb.cells = [*nb.cells[: failing + 1], stopped]
    with atomic_path(nb_path) as tmp:
        nbformat.write(nb, str(tmp))
    return verdict


def _replace_pending(nb: Any, bundle: Any) -> bool:
    """Put the verdict where the "running" box was (the template's first output cell); False if none."""
    for cell in nb.cells:
        for i, output in enumerate(cell.get("outputs", []) if cell.cell_type == "code" else []):
            data = output.get("data") or {}
            if "data-verdict='running'" in str(data.get("text/html", "")) and VERDICT_MIME not in data:
                cell.outputs[i] = bundle
                return True
    return False


def _folded(error: Any) -> Any:
    """An error output as a display: one line naming the exception, the traceback folded under it."""
    import nbformat

    trace = _ANSI.sub("", "\n".join(error.get("traceback", [])))
    head = f"{error.get('ename', 'Error')}: {error.get('evalue', '')}".strip()
    rendered = (
        f"<div class='enn-nb-error' style='border-left:4px solid #c5221f;padding:4px 10px;margin:4px 0'>"
        f"<div style='white-space:pre-wrap;overflow-wrap:anywhere;color:#8a1111'><b>{html.escape(head)}</b></div>"
        f"<details><summary>Traceback (click to unfold)</summary>"
        f"<pre style='white-space:pre-wrap;overflow-wrap:anywhere;font-size:85%'>{html.escape(trace)}</pre>"
        f"</details></div>"
    )
    return nbformat.v4.new_output("display_data", data={"text/html": rendered, "text/plain": f"{head}\n{trace}"},
                                  metadata={"enn_nb": {"ename": error.get("ename"), "evalue": error.get("evalue")}})
