"""Attack families of issue 21, items 1-7: code that ran without trust, report outputs, and the export cache.

``pt2_members`` (a plain ``.pt2`` carrying an AOTInductor library and other foreign members),
``report_params`` (YAML tags and non-plain values in report parameters), ``git_config`` (a
checkpoint folder whose ``.git/config`` names programs), ``adapter_imports`` (an ``enn_torch``
module planted in the working folder), ``report_outputs`` (report files pre-planted as symlinks),
``cache_links`` (cache hits sharing files) and ``cache_collisions`` (models that differ only in what
their graph computes, and planted cache entries). Registered in :mod:`tests.security.families`.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import enn_nb

from .runner import Case, Refused, cli, snapshot

if TYPE_CHECKING:  # families.py imports this module at its end: its names are read when a generator runs
    from .families import Base, Victim

ROOT = Path(__file__).resolve().parents[2]
#: Below this many fuzzing cases (the test suite's run) each family tries a representative subset; the campaign
#: (``benchmarks/attack_campaign.py``, 200 by default) tries every variant.
QUICK_BELOW = 20


# -- helpers ------------------------------------------------------------------------------------------
def constructor_library(marker: Path, where: Path) -> bytes:
    """A shared library whose constructor writes ``marker`` when it is loaded (dlopen runs it)."""
    source = where / "pwn.c"
    source.write_text(textwrap.dedent(f"""
        #include <stdio.h>
        __attribute__((constructor)) static void pwn(void) {{
            FILE *f = fopen({json.dumps(str(marker))}, "w");
            if (f) {{ fputs("pwned", f); fclose(f); }}
        }}
        """))
    library = where / "pwn.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True, capture_output=True)
    return library.read_bytes()


def exported(base: Base, name: str = "exported21") -> Path:
    """A genuine pt2 export of the victim (artifact, sidecar, vectors), made once per work directory."""
    from .families import Victim

    src = base.root / name
    if not (src / "model.pt2").exists():
        enn_nb.export(Victim(), "pt2", out_dir=src, example_inputs=torch.randn(2, 4), isolate=False, cache=False)
    return src


def reference_checkpoint(base: Base) -> Path:
    """A checkpoint of enn_nb's reference model: a report's kernel can build it (the victim's builder lives
    only in this process)."""
    from tests.fixtures.models import tiny_reference

    path = base.root.parent / "reference" / "ref.safetensors"  # shared by the families of one run
    if not path.exists():
        enn_nb.save(tiny_reference(), path)
    return path


def fresh_copy(base: Base, src: Path) -> Path:
    base.counter += 1
    out = base.root / f"c21-{base.counter:05d}"
    shutil.copytree(src, out)
    return out


def reseal(out: Path, name: str = "model.pt2", change: Callable[[dict], Any] | None = None) -> None:
    """Recompute the sidecar's file hashes (what a forger does after editing the artifact)."""
    from enn_nb.engine import sidecar as sc

    side = out / f"{name}{sc.SIDECAR_SUFFIX}"
    data = json.loads(side.read_text())
    if change is not None:
        change(data)
    for entry in data["files"]:
        p = out / entry["path"]
        if p.is_file() and p.resolve().is_relative_to(out.resolve()):  # a path escaping the folder stays as forged
            entry.update(sha256=sc.sha256_file(p), size=p.stat().st_size)
    side.write_text(json.dumps(data))


def add_members(path: Path, members: dict[str, bytes]) -> None:
    """Add ``members`` (relative to the archive's root folder unless they start with ``/``) to a zip archive."""
    with zipfile.ZipFile(path) as zf:
        existing = {i.filename: zf.read(i) for i in zf.infolist()}
    root = next(iter(existing)).split("/", 1)[0]
    for name, data in members.items():
        existing[name[1:] if name.startswith("/") else f"{root}/{name}"] = data
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in existing.items():
            zf.writestr(name, data)


# -- 1: a plain .pt2 carrying AOTI code and other members ----------------------------------------------------
AOTI_METADATA = json.dumps({"AOTI_DEVICE_KEY": "cpu"}).encode()


def aoti_members(library: bytes) -> dict[str, bytes]:
    """The reported planting: an AOTInductor model folder inside a plain .pt2."""
    return {"data/aotinductor/x/x.wrapper.so": library, "data/aotinductor/x/x.wrapper_metadata.json": AOTI_METADATA}


def pt2_members(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    src = exported(base)
    variants: list[tuple[str, Callable[[bytes], dict[str, bytes]]]] = [
        ("aoti-wrapper-so", aoti_members),
        ("aoti-other-model-name", lambda lib: {"data/aotinductor/model/model.wrapper.so": lib,
                                                "data/aotinductor/model/model.wrapper_metadata.json": AOTI_METADATA}),
        ("aoti-cpp-and-so", lambda lib: {**aoti_members(lib), "data/aotinductor/x/x.wrapper.cpp": b"int x;"}),
        ("executorch-payload", lambda lib: {"data/executorch/program.pte": lib}),
        ("mtia-payload", lambda lib: {"data/mtia/blob": lib}),
        ("xl-weights", lambda lib: {"xl_model_weights/model_param_config": b"{}"}),
        ("stray-root-member", lambda lib: {"evil.so": lib}),
        ("second-root-folder", lambda lib: {"/other/data/aotinductor/x/x.wrapper.so": lib}),
        ("weights-so", lambda lib: {"data/weights/x.so": lib}),
        ("constants-library", lambda lib: {"data/constants/lib.so": lib}),
        ("models-not-json", lambda lib: {"models/x.so": lib}),
        ("nested-extra", lambda lib: {"extra/a/b.so": lib}),
    ]
    quick = n < QUICK_BELOW
    for name, members in variants[:4] if quick else variants:
        for verb in ("verify",) if quick else ("verify", "cli-verify"):
            marker = base.marker()
            out = fresh_copy(base, src)
            add_members(out / "model.pt2", members(constructor_library(marker, out)))
            reseal(out)
            action = ((lambda o=out: enn_nb.verify(o / "model.pt2")) if verb == "verify"
                      else (lambda o=out: cli(["verify", str(o / "model.pt2")])))
            yield Case("pt2_members", f"{name}/resealed/{verb}", action, marker, timeout=120)
    # the genuine archive still verifies (the allow-list covers what torch.export.save writes)
    out = fresh_copy(base, src)
    yield Case("pt2_members", "genuine/verify", lambda o=out: enn_nb.verify(o / "model.pt2"), base.marker(),
               check=lambda r: r.ok, timeout=120)


# -- 2: report parameters -------------------------------------------------------------------------------
def payload(marker: Path) -> str:
    """What escapes papermill's raw ``str()`` of a non-str value into the injected cell."""
    return f'" + str(__import__("os").system("touch {marker}")) + "'


def _tagged(marker: Path) -> list[tuple[str, str]]:
    text = payload(marker)
    b64 = base64.b64encode(text.encode()).decode()
    return [
        ("binary", f"!!binary {b64}"),
        ("pairs", f"!!pairs [{{a: {json.dumps(text)}}}]"),
        ("omap", f"!!omap [{{a: {json.dumps(text)}}}]"),
        ("set", f"!!set {{{json.dumps(text)}: null}}"),
        ("timestamp", "!!timestamp 2024-01-01"),
        ("nested-binary", f"[x, {{k: !!binary {b64}}}]"),
        ("binary-key", f"{{? !!binary {b64} : 1}}"),
    ]


def _check_params(template: str, assignment: str) -> Any:
    """The CLI's parsing and the runner's check, the whole path a value takes before a kernel starts."""
    from enn_nb.surfaces.reports.catalog import check_parameters, declared_parameters, parse_assignment, resolve_template

    path = resolve_template(template)
    declared = declared_parameters(path)
    try:
        key, value = parse_assignment(assignment, declared)
    except TypeError:  # enn_nb before issue 21 parsed every value as YAML (the campaign's "before" row)
        key, value = parse_assignment(assignment)
    check_parameters(path, {key: value}, declared=declared)
    return key, value


def report_params(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    params = {"export_report": ("checkpoint", "backends", "out_dir", "batch_sizes", "atol", "model", "options",
                                "threads", "title", "author"),
              "checkpoint_report": ("checkpoint", "other", "title", "author")}
    quick = n < QUICK_BELOW
    for template, names in params.items():
        for param in (names[1::3] if quick else names):
            for tag, text in _tagged(base.marker()):
                # a text-only parameter takes the characters as typed (papermill escapes a str); any other is refused
                check = (lambda kv: isinstance(kv[1], str)) if _text_only(template, param) else None
                yield Case("report_params", f"{template}/{param}/{tag}",
                           lambda t=template, a=f"{param}={text}": _check_params(t, a), base.marker(), check=check)
    # the Python API: non-plain values from a caller (bytes, tuples, sets, a str subclass with its own repr)
    ckpt = base.st  # refused before a kernel starts: it is never read
    for label in ("bytes", "tuple", "set", "str-subclass", "dict-int-key", "object"):
        marker = base.marker()
        text = payload(marker)

        class Sneaky(str):
            def __repr__(self, text: str = text) -> str:
                return f"'{text}'"

            __str__ = __repr__

        value = {"bytes": text.encode(), "tuple": ("a", text), "set": {text}, "str-subclass": Sneaky("x"),
                 "dict-int-key": {1: text}, "object": Sneaky}[label]
        yield Case("report_params", f"api/title/{label}",
                   lambda v=value, m=marker: enn_nb.report("checkpoint_report", m.parent / f"r-{m.name}",
                                                           checkpoint=str(ckpt), title=v, progress=False),
                   marker, timeout=120)
    if quick:  # the real run of `title=!!binary` goes with report_outputs' real run in the test suite
        return
    # the reported run, for real: `-p 'title=!!binary <payload>'` through a kernel; the report runs with that text
    ckpt = reference_checkpoint(base)
    marker = base.marker()
    b64 = base64.b64encode(payload(marker).encode()).decode()
    out = base.root / f"report-{marker.name}"
    yield Case("report_params", "cli-run/checkpoint_report/title-binary",
               lambda: cli(["report", "checkpoint_report", "-p", f"checkpoint={ckpt}", "-p", f"title=!!binary {b64}",
                            "--out", str(out), "--no-progress"]),
               marker, check=lambda code: code == 0 and f"!!binary {b64}" in (out / "checkpoint_report.ipynb").read_text(),
               timeout=180)
    marker = base.marker()
    yield Case("report_params", "cli-run/export_report/options-pairs",
               lambda: cli(["report", "export_report", "-p", f"checkpoint={ckpt}",
                            "-p", f"options=!!pairs [{{a: {json.dumps(payload(marker))}}}]", "--out", str(out)]),
               marker, timeout=60)


@functools.lru_cache(maxsize=None)
def _text_only(template: str, param: str) -> bool:
    from enn_nb.surfaces.reports import catalog

    declared_types = getattr(catalog, "declared_types", None)
    if declared_types is None:  # before issue 21: no declared types
        return False
    declared_parameters, resolve_template = catalog.declared_parameters, catalog.resolve_template
    return declared_types(declared_parameters(resolve_template(template))[param]) == {"str"}


# -- 3: git configuration in the checkpoint's folder -------------------------------------------------------
def hostile_repository(folder: Path, marker: Path, how: str) -> None:
    """A downloaded folder with a ``.git`` whose config names a program (``git status`` would run it)."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    git = ["git", "-C", str(folder), "-c", "user.name=x", "-c", "user.email=x@example.invalid"]
    (folder / "notes.txt").write_text("v1\n")
    subprocess.run([*git, "add", "notes.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    (folder / "notes.txt").write_text("v2, modified\n")  # a dirty tree: status runs the clean filter
    command = f"touch {marker}; false"
    settings = {
        "fsmonitor": [("core", "fsmonitor", command)],
        "hooks": [("core", "hooksPath", str(folder / "hooks"))],
        "filter": [("filter", "evil.clean", f"touch {marker}; cat"), ("filter", "evil.process", f"touch {marker}")],
        "pager-and-diff": [("core", "pager", command), ("diff", "external", command)],
        "sshcommand": [("core", "sshCommand", command), ("core", "editor", command)],
    }[how]
    if how == "hooks":
        (folder / "hooks").mkdir()
        for hook in ("post-checkout", "post-index-change", "reference-transaction"):
            (folder / "hooks" / hook).write_text(f"#!/bin/sh\ntouch {marker}\n")
            (folder / "hooks" / hook).chmod(0o755)
    if how == "filter":
        (folder / ".gitattributes").write_text("* filter=evil\n")
    for section, key, value in settings:
        subprocess.run(["git", "config", "--file", str(folder / ".git" / "config"), f"{section}.{key}", value],
                       check=True)


def git_config(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    from enn_nb.surfaces.reports.environment import environment, git_commit

    for how in ("fsmonitor", "hooks", "filter") if n < QUICK_BELOW else ("fsmonitor", "hooks", "filter", "pager-and-diff",
                                                                         "sshcommand"):
        marker = base.marker()
        folder = base.root / f"download-{marker.name}"
        hostile_repository(folder, marker, how)
        shutil.copy(base.st, folder / "m.safetensors")
        ckpt = folder / "m.safetensors"
        yield Case("git_config", f"{how}/environment-with-checkpoint-folder",
                   lambda c=ckpt: environment([c]), marker, check=lambda table: table is not None)
        yield Case("git_config", f"{how}/git_commit-of-that-folder", lambda f=folder: git_commit([f]), marker,
                   check=lambda text: " on master " in text or " on main " in text)
        yield Case("git_config", f"{how}/environment-from-inside", lambda f=folder: _environment_in(f), marker,
                   check=lambda text: "git" in text)


def _environment_in(folder: Path) -> str:
    from enn_nb.surfaces.reports.environment import environment

    os.chdir(folder)  # the forked child's own working folder
    return repr(environment())


# -- 4: an adapter library planted in the working folder ---------------------------------------------------------
def write_upstream_checkpoint(path: Path) -> Path:
    """An upstream ENN-PyTorch ``model.pt`` written by enn_torch itself (called in a case's forked child, so the
    test process never imports enn_torch)."""
    if not path.exists():
        from enn_torch import save_model

        from tests.fixtures.upstream import tiny_model

        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(tiny_model(), path)
    return path


def run_in(folder: Path, code: str) -> str:
    """``python -c CODE`` in ``folder`` (its working folder is first on ``sys.path``, as for any user)."""
    done = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=240)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise Refused(lines[-1] if lines else f"exit {done.returncode}")
    return done.stdout


def adapter_imports(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    import importlib.util

    if importlib.util.find_spec("enn_torch") is None:
        return
    upstream = base.root / "upstream" / "model.pt"
    plants = {
        "module-file": {"enn_torch.py": "open({m!r}, 'w').write('pwned')\n"},
        "package": {"enn_torch/__init__.py": "open({m!r}, 'w').write('pwned')\n"},
        "submodule-only": {"enn_torch/__init__.py": "", "enn_torch/core/__init__.py": "",
                           "enn_torch/core/config.py": "open({m!r}, 'w').write('pwned')\n"},
    }
    calls = {
        "load": "import enn_nb; m = enn_nb.load('model.pt'); print(type(m.model).__module__)",
        "load-magic": ("from IPython.core.interactiveshell import InteractiveShell; ip = InteractiveShell.instance(); "
                       "ip.run_line_magic('load_ext', 'enn_nb'); ip.run_line_magic('enn_load', 'model.pt --into m'); "
                       "print(type(ip.user_ns['m']).__module__)"),
    }
    quick = n < QUICK_BELOW
    for plant, files in list(plants.items())[:1] if quick else plants.items():
        for verb, code in list(calls.items())[:1] if quick else calls.items():
            marker = base.marker()
            folder = base.root / f"cwd-{marker.name}"
            folder.mkdir()
            for rel, text in files.items():
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                (folder / rel).write_text(text.format(m=str(marker)))
            yield Case("adapter_imports", f"{plant}/{verb}", lambda f=folder, c=code: _load_beside_plant(upstream, f, c),
                       marker,
                       check=lambda text: text.strip().splitlines()[-1].startswith("enn_torch"), timeout=300)


def _load_beside_plant(upstream: Path, folder: Path, code: str) -> str:
    shutil.copy(write_upstream_checkpoint(upstream), folder / "model.pt")
    return run_in(folder, code)


# -- 5: report files pre-planted as symlinks -------------------------------------------------------------------
def report_outputs(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    # the kernel's progress writer: a link at the events file's name is never written through
    victim = base.outside_victim()
    events = base.root / f"events-{victim.name}.jsonl"
    events.symlink_to(victim)
    yield Case("report_outputs", "progress-append-through-link", lambda: _kernel_progress(events), base.marker(),
               victims={victim: snapshot(victim)}, check=lambda r: r is None)
    # a real report into a folder whose output names are links to a user's files; its title the reported
    # `!!binary` payload (a text parameter: the kernel gets those characters, papermill escapes them)
    ckpt = reference_checkpoint(base)
    runs = [("checkpoint_report", [])]
    if n >= QUICK_BELOW:
        runs.append(("export_report", ["-p", "backends=[pt2]", "-p", "batch_sizes=[1]"]))
    for template, extra in runs:
        marker = base.marker()
        title = "!!binary " + base64.b64encode(payload(marker).encode()).decode()
        out = base.root / f"links-{template}-{marker.name}"
        out.mkdir()
        victims = {}
        for name in (f"{template}.ipynb", f"{template}.html", f".{template}.progress.jsonl", "index.html"):
            target = base.outside_victim()
            (out / name).symlink_to(target)
            victims[target] = snapshot(target)
        yield Case("report_outputs", f"{template}/outputs-are-links",
                   lambda t=template, o=out, e=extra, title=title: cli(["report", t, "-p", f"checkpoint={ckpt}", *e,
                                                                          "-p", f"title={title}", "--out", str(o),
                                                                          "--html"]),
                   marker, victims=victims,
                   check=lambda code, t=template, o=out, title=title: code == 0 and not (o / f"{t}.ipynb").is_symlink()
                   and title in (o / f"{t}.ipynb").read_text(), timeout=300)
    # a folder or a FIFO where the notebook goes: refused before a kernel starts
    for kind in ("dir", "fifo"):
        out = base.root / f"kind-{kind}-{base.marker().name}"
        out.mkdir()
        nb = out / "checkpoint_report.ipynb"
        if kind == "dir":
            nb.mkdir()
            (nb / "keep.txt").write_text("mine\n")
        else:
            os.mkfifo(nb)
        yield Case("report_outputs", f"notebook-is-a-{kind}",
                   lambda o=out: cli(["report", "checkpoint_report", "-p", f"checkpoint={ckpt}", "--out", str(o)]),
                   base.marker(), victims={nb: snapshot(nb)}, timeout=60)


def _kernel_progress(events: Path) -> None:
    """What a report's kernel does when a backend finishes: append to the file the runner named."""
    from enn_nb.surfaces.reports.progress import ENV, kernel_callback

    os.environ[ENV] = str(events)
    callback = kernel_callback()
    assert callback is not None
    callback({"backend": "pt2", "stage": "done", "status": "ok", "index": 0, "total": 1})


# -- 6: cache hits sharing files ---------------------------------------------------------------------------
def _shared_safely(a: Path, b: Path) -> bool:
    """Two exported files are safe to edit in place: separate files (clones/copies), or one read-only file."""
    sa, sb = a.stat(), b.stat()
    if (sa.st_dev, sa.st_ino) != (sb.st_dev, sb.st_ino):
        return a.read_bytes() == b.read_bytes()
    return not sa.st_mode & 0o222


def _edit_in_place(path: Path) -> None:
    with open(path, "r+b") as fh:  # what an editor or a script writing into the file does
        fh.seek(0)
        fh.write(b"X")


def _seeded_victim() -> Victim:
    from .families import Victim

    torch.manual_seed(0)
    return Victim()


def cache_links(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    store = base.root / "cache-store-links"
    for backend in ("pt2",) if n < QUICK_BELOW else ("pt2", "onnx"):
        a, b = base.root / f"hitA-{backend}-{base.marker().name}", base.root / f"hitB-{backend}-{base.marker().name}"

        def export_twice(a: Path = a, b: Path = b, backend: str = backend) -> tuple[Path, Path]:
            os.environ["ENN_NB_CACHE_DIR"] = str(store)
            kwargs = {"example_inputs": torch.randn(2, 4), "isolate": False}
            first = enn_nb.export(_seeded_victim(), backend, out_dir=a, **kwargs)[backend]
            second = enn_nb.export(_seeded_victim(), backend, out_dir=b, **kwargs)[backend]
            assert second.cached, "the second export was expected to be a cache hit"
            return first.artifact, second.artifact

        yield Case("cache_links", f"{backend}/hit-files-are-clones-or-read-only",
                   export_twice, base.marker(), check=lambda pair: _shared_safely(*pair), timeout=180)
        if os.geteuid() != 0:  # root writes into read-only files: the mode protects everyone else
            def edit_a(a: Path = a, b: Path = b, backend: str = backend) -> bool:
                first, second = export_twice(a, b, backend)
                before = second.read_bytes()
                try:
                    _edit_in_place(first)
                except PermissionError:
                    return second.read_bytes() == before
                return second.read_bytes() == before

            yield Case("cache_links", f"{backend}/edit-in-place-leaves-the-other-folder",
                       edit_a, base.marker(), check=bool, timeout=180)


# -- 7: cache keys and planted entries ----------------------------------------------------------------------
class Variant(nn.Module):
    """Same weights for every variant; what differs is only in what the graph computes."""

    def __init__(self, act: Any = torch.tanh, extra: float = 0.0, scale: tuple[float, ...] = (1.0,),
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 4)
        self.act = act
        self.scale = scale
        self.out_dtype = dtype
        self.register_buffer("offset", torch.full((4,), extra), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.act(self.fc(x)) * self.scale[0] + self.offset).to(self.out_dtype)


PAIRS = {
    "function-attribute": ({}, {"act": torch.relu}),
    "non-persistent-buffer": ({}, {"extra": 0.5}),
    "tuple-attribute": ({}, {"scale": (3.0,)}),
    "dtype-attribute": ({}, {"dtype": torch.float64}),
}


def runs_like(model: nn.Module, artifact: Path) -> bool:
    """The artifact computes what ``model`` computes (the check the issue ran: 4 of 4 were the first model's)."""
    program = torch.export.load(str(artifact)).module()
    x = torch.randn(3, 4)
    with torch.no_grad():
        want, got = model(x), program(x)
    return want.dtype == got.dtype and torch.allclose(want, got, atol=1e-6)


def cache_collisions(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    store = base.root / "cache-store-collisions"
    kwargs: dict[str, Any] = {"example_inputs": torch.randn(2, 4), "isolate": False}
    quick = n < QUICK_BELOW
    for name, (first_kw, second_kw) in list(PAIRS.items())[:2] if quick else PAIRS.items():
        out = base.root / f"coll-{name}"

        def second_export(first_kw: dict = first_kw, second_kw: dict = second_kw, out: Path = out) -> Any:
            os.environ["ENN_NB_CACHE_DIR"] = str(store)
            enn_nb.export(Variant(**first_kw), "pt2", out_dir=out / "a", **kwargs)
            result = enn_nb.export(Variant(**second_kw), "pt2", out_dir=out / "b", **kwargs)["pt2"]
            return result

        yield Case("cache_collisions", f"{name}/second-model-gets-its-own-artifact", second_export, base.marker(),
                   check=lambda r, kw=second_kw: r.status == "ok" and runs_like(Variant(**kw), r.artifact),
                   timeout=180)
    # a planted store entry: another model's artifact, sidecar and vectors under this model's key
    for where in ("store",) if quick else ("store", "out-folder"):
        out = base.root / f"planted-{where}-{base.marker().name}"

        def planted(out: Path = out, where: str = where) -> Any:
            os.environ["ENN_NB_CACHE_DIR"] = str(out / "store")
            from enn_nb.engine import cache
            from enn_nb.engine import sidecar as sc

            genuine = enn_nb.export(Variant(), "pt2", out_dir=out / "genuine", **kwargs)["pt2"]
            key = sc.read(genuine.sidecar)["cache_key"]
            evil = enn_nb.export(Variant(act=torch.relu), "pt2", out_dir=out / "evil", cache=False, **kwargs)["pt2"]
            target = cache.store_dir(key) if where == "store" else out / "victim"
            if where == "store":
                shutil.rmtree(target)
            target.mkdir(parents=True)
            for p in (out / "evil").iterdir():
                shutil.copy(p, target / p.name)
            reseal(target, change=lambda d: d.update(cache_key=key))
            if where == "out-folder":
                shutil.rmtree(cache.store_dir(key))  # only the planted folder can answer
            dest = out / "genuine2" if where == "store" else target
            return enn_nb.export(Variant(), "pt2", out_dir=dest, **kwargs)["pt2"]

        yield Case("cache_collisions", f"planted-entry-in-{where}", planted, base.marker(),
                   check=lambda r: r.status == "ok" and not r.cached and runs_like(Variant(), r.artifact), timeout=240)
    # verify: another model's .pt2 (and its vectors) under a sidecar resealed for them
    src = exported(base)
    other = base.root / "exported21-other"
    if not (other / "model.pt2").exists():
        enn_nb.export(Variant(act=torch.relu), "pt2", out_dir=other, example_inputs=torch.randn(2, 4), isolate=False,
                      cache=False)
    for swap in ("artifact-and-vectors",) if quick else ("artifact", "artifact-and-vectors"):
        out = fresh_copy(base, src)
        for name in ("model.pt2",) + (("model.vectors.safetensors",) if swap == "artifact-and-vectors" else ()):
            shutil.copy(other / name, out / name)

        def fix_vectors(d: dict, out: Path = out) -> None:
            from enn_nb.engine import sidecar as sc

            vec = d["parity"]["vectors"]
            vec["sha256"] = sc.sha256_file(out / vec["file"])

        reseal(out, change=fix_vectors)
        yield Case("cache_collisions", f"verify-planted-{swap}", lambda o=out: enn_nb.verify(o / "model.pt2"),
                   base.marker(), check=lambda r: not r.ok and bool(r.problems or r.status == "failed"), timeout=120)


GENERATORS = {f.__name__: f for f in (pt2_members, report_params, git_config, adapter_imports, report_outputs,
                                      cache_links, cache_collisions)}
