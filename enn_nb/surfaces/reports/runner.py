"""Execute a report template with papermill, check its parameters, attach the sidecars, keep failures."""

from __future__ import annotations

import contextlib
import dataclasses
import html as _html
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from enn_nb import _reentry
from enn_nb._fs import atomic_path, check_same_kind, remove_path, replace_path, temp_path
from enn_nb._safeio import escape
from enn_nb._optional import require
from enn_nb._version import __version__
from enn_nb.engine.settings import prepare_out_dir
from enn_nb.errors import OutputDirError, ReportCellError, ReportError, ReportInputError
from enn_nb.surfaces.factory import child_pythonpath
from enn_nb.surfaces.reports.catalog import (
    check_parameters,
    declared_parameters,
    paths_as_text,
    resolve_template,
    template_metadata,
)
from enn_nb.surfaces.reports.html import to_html
from enn_nb.surfaces.reports.progress import ENV, BackendBar, create_events_file
from enn_nb.surfaces.reports.sections import link
from enn_nb.surfaces.reports.verdict import Verdict, find_verdict

#: Key of the executed notebook's metadata that holds what enn_nb attached (verdict, sidecars...).
METADATA_KEY = "enn_nb"


@dataclasses.dataclass
class ReportResult:
    """One executed report.

    Attributes:
        template: the template's name (``export_report``) or path.
        notebook: the executed notebook (kept also when a cell failed).
        html: the HTML rendering, when requested.
        parameters: the values the kernel received (paths made absolute).
        verdict: the verdict the report computed, or None for a template without one.
        duration_s: wall time of the execution, kernel start included.
        error: the failing cell's error (batch runs keep going and record it here).
    """

    template: str
    notebook: Path
    html: Path | None
    parameters: dict[str, Any]
    verdict: Verdict | None
    duration_s: float
    error: ReportError | None = None

    @property
    def ok(self) -> bool:
        """The CI gate: the report ran to the end and its verdict (if any) passed."""
        return self.error is None and (self.verdict is None or self.verdict.ok)

    @property
    def failures(self) -> list[str]:
        """Why the gate failed, one line each (empty when it passed)."""
        lines = [str(self.error).splitlines()[0]] if self.error is not None else []
        return lines + (list(self.verdict.failures) if self.verdict is not None else [])

    @property
    def status(self) -> str:
        if self.error is not None:
            return "error"
        return "pass" if self.ok else "fail"

    def __repr__(self) -> str:
        from enn_nb._safeio import escape

        head = f"{self.status.upper()}: {escape(self.notebook)}" + (f" (html: {escape(self.html)})" if self.html else "")
        detail = [f"  {escape(self.verdict.headline)}"] if self.verdict is not None else []
        return "\n".join([head, *detail, *[f"  - {escape(line)}" for line in self.failures]])

    def _repr_html_(self) -> str:
        links = f"<a href='{_html.escape(link(self.notebook))}'>{_html.escape(str(self.notebook))}</a>"
        if self.html:
            links += f" · <a href='{_html.escape(link(self.html))}'>HTML</a>"
        body = self.verdict._repr_html_() if self.verdict is not None else ""
        if self.error is not None:
            body += f"<pre style='color:#8a1111'>{_html.escape(str(self.error))}</pre>"
        return f"<div><b>{self.status.upper()}</b> {links} ({self.duration_s:.1f} s){body}</div>"


def report(
    template: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    /,
    *,
    name: str | None = None,
    html: bool = False,
    no_input: bool = True,
    progress: bool = True,
    kernel_name: str | None = None,
    timeout: float | None = None,
    parameters: Mapping[str, Any] | None = None,
    model_path: Sequence[str | os.PathLike[str]] = (),
    **params: Any,
) -> ReportResult:
    """Execute a report template through a real kernel and write ``<out_dir>/<name>.ipynb``.

    Args:
        template: a built-in template name (``"export_report"``, ``"checkpoint_report"``) or the
            path of any notebook with a cell tagged ``parameters``.
        out_dir: folder for the executed notebook, its HTML and (unless the template's ``out_dir``
            parameter is given) its artifacts under ``<name>-artifacts/``. The kernel runs there.
        name: file stem of the outputs; defaults to the template's name.
        html: also write ``<name>.html`` through nbconvert.
        no_input: leave the code out of the HTML (outputs and markdown only), the default: a report
            is read by people who did not write it; False keeps the code (`--show-code`).
        progress: show a progress bar: over the backends for a template whose metadata says
            ``"progress": "backends"`` (the export report), else over the cells.
        kernel_name: the Jupyter kernel; defaults to the template's kernelspec (``python3``, which
            Jupyter maps to the running interpreter).
        timeout: seconds a single cell may run; None waits.
        parameters: template parameters as a mapping (for names that clash with this function's).
        model_path: folders the ``model`` parameter's module is imported from. The kernel runs in the report
            folder: these and the PYTHONPATH entries reach it as absolute paths (a relative entry is
            resolved against this working directory).
        **params: template parameters, e.g. ``checkpoint="model.safetensors", backends=["onnx"]``.

    Returns:
        The executed report, with its verdict read back from the notebook.

    Raises:
        UnknownNameError: unknown template, or a parameter the template does not declare.
        ReportError: a bad value, or the kernel could not run the notebook.
        ReportCellError: a cell raised; the partial notebook is kept at ``error.output_path``.
        SideEffectError: called by importing a module (a ``--model`` factory, an export worker): nothing written.
    """
    _reentry.check("enn_nb.report")

    path = resolve_template(template)
    values = paths_as_text({**dict(parameters or {}), **params})
    declared = declared_parameters(path)
    check_parameters(path, values, declared=declared)
    _check_inputs(path, values)  # as the caller typed them, relative to the working directory
    values = _absolute_paths(values, template_metadata(path).get("path_parameters", []))
    out = _output_dir(out_dir)
    stem = name or path.stem
    if "out_dir" in declared and "out_dir" not in values:
        values["out_dir"] = str(out / f"{stem}-artifacts")
    nb_path = out / f"{stem}.ipynb"
    papermill = require("papermill", purpose="report templates")
    _check_output(nb_path)
    if html:
        _check_output(nb_path.with_suffix(".html"))

    start = time.perf_counter()
    error: ReportError | None = None
    by_backend = progress and template_metadata(path).get("progress") == "backends"
    written = _fresh_file(nb_path)  # papermill writes here (it opens its output path and follows links)
    try:
        with _backend_bar(nb_path, stem) if by_backend else contextlib.nullcontext(), child_pythonpath(model_path):
            papermill.execute_notebook(
                str(path),
                str(written),
                parameters=values,
                kernel_name=kernel_name,
                progress_bar={"desc": stem, "unit": "cell"} if progress and not by_backend else False,
                cwd=str(out),
                execution_timeout=timeout,
                # jupyter_client interrupts the kernel before every shutdown; the kernel then logs a
                # spurious "KeyboardInterrupt caught in kernel". Cell errors travel as messages, not logs.
                extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
            )
    except papermill.PapermillExecutionError as exc:
        _keep(written, nb_path)
        error = _cell_error(exc, path, nb_path)
    except Exception as exc:  # kernel did not start / died: keep what was saved, say what happened
        if not _keep(written, nb_path):
            raise ReportError(
                f"The report `{path.stem}` could not run: {type(exc).__name__}: {exc}. "
                "Check that a Jupyter kernel for this Python is installed (`pip install ipykernel`)."
            ) from exc
        error = ReportCellError(
            f"The report `{path.stem}` stopped: {type(exc).__name__}: {str(exc).strip()[:500]}. "
            f"The partial notebook is kept at {nb_path}.",
            ename=type(exc).__name__,
            evalue=str(exc),
            output_path=str(nb_path),
        )
    else:
        _keep(written, nb_path)
    finally:
        with contextlib.suppress(OSError, ReportError):
            _keep(written, nb_path)  # an interrupt: the partial notebook, as before
        remove_path(written)
    duration = time.perf_counter() - start

    if error is not None and nb_path.exists():  # a failed report is still a report: FAIL box, folded traceback
        from enn_nb.surfaces.reports.failed import make_readable

        index = getattr(error, "cell_index", None)
        make_readable(nb_path, where=f"cell {index} of {path.name}" if index is not None else path.name)
    verdict = _attach(nb_path, path, values)
    html_path = None
    if html and nb_path.exists():
        html_path = to_html(nb_path, no_input=no_input)
    if error is not None:
        raise error
    return ReportResult(str(template), nb_path, html_path, values, verdict, duration)


def _check_output(final: Path) -> None:
    """A report file replaces a regular file or a symlink (as a link, its target untouched), nothing else."""
    check_same_kind(final, directory=False, what="report file", error=ReportError)


def _fresh_file(final: Path) -> Path:
    """A new temporary sibling of ``final``, created exclusively: nothing planted at its name is opened."""
    tmp = temp_path(final)
    tmp = tmp.with_name(tmp.name + final.suffix)  # papermill warns about an output not named .ipynb
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644))
    return tmp


def _keep(written: Path, final: Path) -> bool:
    """Move what papermill wrote onto ``final`` (a link there is replaced, never written through); False when
    it wrote nothing."""
    try:
        if written.stat().st_size == 0:
            return False
    except FileNotFoundError:
        return False
    replace_path(written, final)
    return True


@contextlib.contextmanager
def _backend_bar(nb_path: Path, desc: str) -> Iterator[None]:
    """A bar over the export's backends, fed by the kernel (it inherits :data:`progress.ENV`)."""

    events = create_events_file(nb_path.parent, nb_path.stem)
    before = os.environ.get(ENV)
    os.environ[ENV] = str(events)
    try:
        with BackendBar(events, desc):
            yield
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before


def _output_dir(out_dir: str | os.PathLike[str]) -> Path:
    try:
        return prepare_out_dir(out_dir, "out")
    except OutputDirError as exc:
        raise ReportError(f"The report folder cannot be used: {exc} Pass another --out.") from None


def _check_inputs(template: Path, values: dict[str, Any]) -> None:
    """Each local file the template reads exists: a typo is one error before a kernel starts (exit 2 on the CLI)."""
    from enn_nb._paths import did_you_mean
    from enn_nb.storage import is_url

    for key in template_metadata(template).get("input_parameters", []):
        given = values.get(key)
        if isinstance(given, str) and given and not is_url(given) and not Path(given).exists():
            raise ReportInputError(f"The report's `{key}` `{escape(given)}` does not exist"
                                   f"{escape(did_you_mean(given)) or '.'} Nothing was run.")


def _absolute_paths(values: dict[str, Any], names: list[str]) -> dict[str, Any]:
    # The kernel runs in the report folder; paths the caller typed are relative to the caller (URLs stay URLs).
    from enn_nb.storage import is_url

    def absolute(v: Any) -> Any:
        if not isinstance(v, (str, os.PathLike)) or not str(v) or is_url(v):
            return v
        return str(Path(v).expanduser().resolve())

    out = dict(values)
    for key in names:
        if key in out:
            value = out[key]
            out[key] = [absolute(v) for v in value] if isinstance(value, list) else absolute(value)
    return out


def _cell_error(exc: Any, template: Path, nb_path: Path) -> ReportCellError:
    index = _template_index(nb_path, exc.cell_index)
    first = next((line.strip() for line in str(exc.source).splitlines() if line.strip()), "")
    where = f"cell {index}" if index is not None else f"cell {exc.cell_index}"
    message = (
        f"The report `{template.stem}` failed in {where} of {template.name} (In [{exc.exec_count}]: "
        f"`{first[:80]}`): {exc.ename}: {str(exc.evalue).strip()[:500]}. "
        f"The partial notebook is kept at {nb_path}."
    )
    return ReportCellError(message, cell_index=index, ename=exc.ename, evalue=exc.evalue, output_path=str(nb_path))


def _template_index(nb_path: Path, executed_index: int) -> int | None:
    """The failing cell's index in the template: the executed notebook has papermill's injected cell."""
    try:
        cells = json.loads(nb_path.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError):
        return None
    cells = [c for c in cells if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])]
    injected = [i for i, c in enumerate(cells) if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    if injected and executed_index > injected[0]:
        return executed_index - 1
    return executed_index


def _attach(nb_path: Path, template: Path, values: dict[str, Any]) -> Verdict | None:
    """Put the verdict, the parameters and every sidecar's content into the notebook's metadata."""
    if not nb_path.exists():
        return None
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    if isinstance(nb.metadata.get("papermill"), dict):
        nb.metadata["papermill"]["output_path"] = str(nb_path)  # not the temporary name papermill wrote to
    found = find_verdict(nb)
    verdict = Verdict.from_dict(found) if found is not None else None
    sidecars: dict[str, Any] = {}
    for backend, sidecar in (verdict.sidecars if verdict else {}).items():
        file = Path(sidecar)
        if not file.is_absolute():
            file = nb_path.parent / file
        try:
            content = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            content = {"error": f"could not read the sidecar: {exc}"}
        sidecars[backend] = {"path": os.path.relpath(file, nb_path.parent), "content": content}
    nb.metadata[METADATA_KEY] = {
        "template": template.stem,
        "enn_nb_version": __version__,
        "parameters": json.loads(json.dumps(values, default=str)),
        "verdict": verdict.to_dict() if verdict else None,
        "sidecars": sidecars,
    }
    with atomic_path(nb_path) as tmp:
        nbformat.write(nb, str(tmp))
    return verdict
