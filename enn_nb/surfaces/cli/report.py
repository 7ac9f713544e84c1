"""``enn-nb report``: run a report template (or one per file of a glob) and gate on its verdict."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from enn_nb.errors import ReportCellError, ReportError
from enn_nb.surfaces.cli.command import add_command
from enn_nb.surfaces.factory import import_factory


def register(subparsers: Any) -> None:
    from enn_nb.surfaces.reports.catalog import templates

    parser = add_command(
        subparsers,
        "report",
        run,
        help="execute a report template (papermill) and exit non-zero if it fails",
        description=(
            "Execute a report template through a Jupyter kernel and write the executed notebook (and HTML).\n"
            "Exits 1 when a requested backend failed, crashed or mismatched, or a cell raised; the reasons\n"
            "are printed. Built-in templates: " + (", ".join(templates()) or "(none)") + "."
        ),
        epilog=(
            "examples:\n"
            "  enn-nb report export_report -p checkpoint=model.safetensors -p 'backends=[onnx, pt2]' \\\n"
            "      --out reports --html\n"
            "  enn-nb report export_report --each 'ckpts/*.safetensors' -p atol=1e-5 --out nightly --html\n"
            "  enn-nb report checkpoint_report -p checkpoint=a.pt -p other=b.safetensors --out diff\n"
            "  enn-nb report export_report --describe\n"
            "The HTML hides the code (outputs and text only); --show-code keeps it."
        ),
    )
    parser.add_argument("template", metavar="TEMPLATE", help="a built-in template name or a path to an .ipynb")
    parser.add_argument("-p", "--param", dest="params", action="append", default=[], metavar="KEY=VALUE",
                        help="a template parameter; the value is parsed as YAML (numbers, [lists], strings)")
    parser.add_argument("--out", metavar="DIR", help="folder for the executed notebook(s), HTML and artifacts")
    parser.add_argument("--html", action="store_true", help="also write an HTML rendering (nbconvert)")
    parser.add_argument("--show-code", action="store_true",
                        help="keep the code cells in the HTML (by default it shows outputs and text only)")
    parser.add_argument("--no-input", action="store_true",
                        help="leave the code out of the HTML (the default; kept for older scripts)")
    parser.add_argument("--each", metavar="GLOB", help="run one report per matching path and write index.html")
    parser.add_argument("--each-param", metavar="NAME", help="the parameter each match goes to (default: checkpoint)")
    parser.add_argument("--name", metavar="STEM", help="file name of the outputs (default: the template's name)")
    parser.add_argument("--timeout", type=float, metavar="S", help="seconds one cell may run (default: no limit)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    parser.add_argument("--describe", action="store_true", help="list the template's parameters and exit")
    parser.add_argument(
        "--model", metavar="PKG.MODULE:FACTORY", default=None,
        help="the template's `model` parameter: a factory building your own model, imported by module name (never "
        "from a file), into which the checkpoint is loaded",
    )


def run(args: argparse.Namespace) -> int:
    from enn_nb.surfaces.reports.catalog import declared_parameters, parse_assignment, resolve_template

    if args.describe:
        return _describe(declared_parameters(resolve_template(args.template)), args.json)
    if not args.out:
        raise ReportError("`--out DIR` is required: the folder for the executed notebook and its files.")
    if (args.no_input or args.show_code) and not args.html:
        args.html = True  # these only shape the HTML; asking for one means wanting it
    if args.no_input and args.show_code:
        raise ReportError("`--no-input` and `--show-code` contradict each other; pass one of them.")
    params = dict(parse_assignment(text) for text in args.params)
    if args.model:
        import_factory(args.model)  # a typo fails here, before a kernel starts
        params["model"] = args.model
    common = {"html": args.html, "no_input": not args.show_code, "progress": not args.no_progress, "parameters": params}
    if args.each:
        from enn_nb.surfaces.reports.batch import run_batch

        if args.name:
            raise ReportError("`--name` names one report; with `--each` every report is named after its file.")
        batch = run_batch(args.template, args.each, args.out, parameter=args.each_param, **common)
        summary = {
            "ok": batch.ok,
            "index": str(batch.index),
            "reports": [
                {"source": str(e.source), "status": e.result.status, "notebook": str(e.result.notebook),
                 "html": str(e.result.html) if e.result.html else None, "failures": e.result.failures}
                for e in batch.entries
            ],
        }
        _print(summary if args.json else repr(batch), args.json)
        ok, failures = batch.ok, batch.failures
    else:
        from enn_nb.surfaces.reports.runner import report

        if args.each_param:
            raise ReportError("`--each-param` goes with `--each GLOB`.")
        try:
            result = report(args.template, args.out, name=args.name, timeout=args.timeout, **common)
        except ReportCellError as exc:
            print(f"enn-nb report: FAIL: {exc}", file=sys.stderr)
            return 1
        summary = {
            "ok": result.ok,
            "status": result.status,
            "notebook": str(result.notebook),
            "html": str(result.html) if result.html else None,
            "verdict": result.verdict.to_dict() if result.verdict else None,
            "failures": result.failures,
            "duration_s": round(result.duration_s, 2),
        }
        _print(summary if args.json else repr(result), args.json)
        ok, failures = result.ok, result.failures
    if not ok:
        for line in failures:
            print(f"enn-nb report: FAIL: {line}", file=sys.stderr)
        return 1
    return 0


def _print(value: Any, as_json: bool) -> None:
    print(json.dumps(value, indent=2) if as_json else value)


def _describe(declared: dict[str, dict[str, Any]], as_json: bool) -> int:
    if as_json:
        _print({k: dict(v) for k, v in declared.items()}, True)
        return 0
    width = max((len(k) for k in declared), default=0)
    for key, info in declared.items():
        print(f"  {key.ljust(width)}  = {info.get('default')}    {info.get('help') or ''}".rstrip())
    return 0
