"""Attack families of issue 21, items 8-14: process-wide state, confinement of upstream sidecars, parent
``meta.json`` fallback, terminal escapes in text output, symlink loops in globs, forged sizes, and inputs
that used to end in a raw traceback.

Registered into :data:`tests.security.families.FAMILIES` (the suite and ``benchmarks/attack_campaign.py``
run them like the others); written against the public surface only, so the same cases run against an
older enn_nb for the campaign's before/after table.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

import enn_nb

from .families import (
    VICTIM_BUILDER,
    Base,
    Victim,
    _body,
    _dotted,
    _str,
    disguise_as_aoti,
    read_metadata_unsafely,
    reseal_dcp,
    rewrite_pt_manifest,
)
from .runner import Case, Refused, cli, run_cli

FAMILIES = ("global_state", "sidecar_confinement", "parent_meta", "terminal_escapes", "glob_links", "forged_sizes",
            "raw_tracebacks")
SECRET = "AKIA-SECRET-CREDENTIAL"


# -- 8: DCP metadata must not change process-wide state ------------------------------------------------------
def global_state() -> bytes:
    """What a hostile ``.metadata`` could reach, as bytes: the attributes of every allow-listed class and
    function, ``_get_layout``'s cache, the memory-format enum members and pathlib's classes."""
    import pathlib

    import torch.serialization
    from torch.distributed.checkpoint import filesystem, metadata

    torch.serialization._get_layout("torch.strided")  # torch fills this cache on first use: fill it first
    objects: dict[str, Any] = {
        "PurePath": pathlib.PurePath, "PurePosixPath": pathlib.PurePosixPath, "Path": pathlib.Path,
        "PosixPath": pathlib.PosixPath, "_get_layout": torch.serialization._get_layout,
        "OrderedDict": __import__("collections").OrderedDict, "Size": torch.Size, "_StorageInfo": filesystem._StorageInfo,
    }
    for name in ("Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
                 "ChunkStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING"):
        objects[name] = getattr(metadata, name)
    for member in metadata._MEM_FORMAT_ENCODING:
        objects[f"_MEM_FORMAT_ENCODING.{member.name}"] = member
    snap = {name: sorted((str(k), id(v), repr(v)[:200]) for k, v in vars(obj).items()) for name, obj in objects.items()}
    snap["_get_layout.cache"] = sorted((str(k), repr(v)) for k, v in torch.serialization._get_layout.cache.items())
    return pickle.dumps(snap)


def class_attribute_gadget(module: str, cls: str, attr: str, value: tuple[str, str], tail: bytes) -> bytes:
    """``setattr(module.cls, attr, value)`` through a pickle BUILD with slot state, then ``tail``."""
    state = b"N}" + _str(attr) + _dotted(*value) + b"s\x86"
    return b"\x80\x04" + _dotted(module, cls) + state + b"b0" + tail + b"."


def layout_cache_gadget(tail: bytes) -> bytes:
    """``_get_layout.__dict__.update(cache={"torch.strided": "poison"})``: every later DCP has a bad layout."""
    state = b"}" + _str("cache") + b"}" + _str("torch.strided") + _str("poison") + b"ss"
    return b"\x80\x04" + _dotted("torch.serialization", "_get_layout") + state + b"b0" + tail + b"."


def enum_member_gadget(tail: bytes) -> bytes:
    """A BUILD on a shared enum member (returned by calling the allow-listed enum class)."""
    meta = "torch.distributed.checkpoint.metadata"
    state = b"}" + _str("_value_") + b"K\x07s"
    return b"\x80\x04" + _dotted(meta, "_MEM_FORMAT_ENCODING") + b"K\x00\x85R" + state + b"b0" + tail + b"."


STATE_GADGETS: dict[str, Callable[[bytes], bytes]] = {
    "PosixPath.exists=set": lambda t: class_attribute_gadget("pathlib", "PosixPath", "exists", ("builtins", "set"), t),
    "PosixPath.is_file=frozenset": lambda t: class_attribute_gadget("pathlib", "PosixPath", "is_file",
                                                                    ("builtins", "frozenset"), t),
    "PosixPath.__eq__=PurePosixPath": lambda t: class_attribute_gadget("pathlib", "PosixPath", "__eq__",
                                                                       ("pathlib", "PurePosixPath"), t),
    "Metadata.version": lambda t: class_attribute_gadget("torch.distributed.checkpoint.metadata", "Metadata",
                                                         "version", ("pathlib", "PurePosixPath"), t),
    "layout-cache": layout_cache_gadget,
    "enum-member": enum_member_gadget,
}


def leaves_no_trace(action: Callable[[], Any], genuine: Path, outside_link: Path) -> Callable[[], Any]:
    """Run ``action``; a changed global state (or a broken genuine load, or a symlink read outside) is returned
    as a silent wrong result; an enn_nb refusal with everything intact is re-raised (clean)."""
    def run() -> Any:
        before = global_state()
        refusal: BaseException | None = None
        try:
            action()
        except enn_nb.errors.EnnError as exc:
            refusal = exc
        if global_state() != before:
            return "process-wide state changed"
        try:
            enn_nb.load(genuine)
        except enn_nb.errors.EnnError as exc:
            return f"a genuine DCP no longer loads: {exc}"
        try:
            shown = json.dumps(enn_nb.inspect(outside_link).to_dict())
        except enn_nb.errors.EnnError:
            shown = ""
        if SECRET in shown:
            return "a meta.json symlinked outside was read"
        if refusal is not None:
            raise refusal
        return "the hostile metadata loaded"
    return run


def _outside_meta_link(base: Base) -> Path:
    """An upstream DCP whose ``meta.json`` is a symlink to a secret outside it (refused while confinement works)."""
    path = base.fresh("upstream_dcp")
    secret = path.parent / "credentials.json"
    secret.write_text(json.dumps({"in_dim": 4, "extra": {"builder": VICTIM_BUILDER, "token": SECRET}}))
    (path / "meta.json").unlink()
    (path / "meta.json").symlink_to(secret)
    return path


def global_state_family(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    genuine_dcp = base.fresh("dcp")
    link = _outside_meta_link(base)
    for layout in ("dcp", "upstream_dcp"):
        tail = _body(read_metadata_unsafely(base.dcp if layout == "dcp" else base.upstream_dcp))
        for name, gadget in STATE_GADGETS.items():
            # the suite (small n) tries the stealth variants only; test_state_and_output.py checks them in-process too
            for stealth in (False, True) if n >= 20 else (True,):
                path = base.fresh(layout)
                (path / ".metadata").write_bytes(gadget(tail if stealth else _body(None)))
                if layout == "dcp":
                    reseal_dcp(path)
                for verb, call in (("load", enn_nb.load), ("inspect", enn_nb.inspect)):
                    yield Case("global_state", f"{layout}/{name}/{'stealth' if stealth else 'plain'}/{verb}",
                               leaves_no_trace(lambda c=call, p=path: c(p), genuine_dcp, link), base.marker())


# -- 9: upstream sidecars are confined like every other path -------------------------------------------------
def _plain_safetensors(where: Path) -> Path:
    from safetensors.torch import save_file

    path = where / "model.safetensors"
    save_file({k: v.contiguous() for k, v in Victim().state_dict().items()}, str(path))
    return path


def sidecar_confinement(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    def secret_file(where: Path) -> Path:
        outside = where.parent / f"secret{base.marker().name}.json"
        outside.write_text(json.dumps({"in_dim": 4, "config": {"token": SECRET}, "extra": {"note": SECRET}}))
        return outside

    def shown(path: Path) -> Callable[[], Any]:
        return lambda: json.dumps(enn_nb.inspect(path).to_dict())

    no_secret = (lambda text: SECRET not in text)
    for sidecar in ("model.safetensors.json", "model.json"):
        where = base.root / f"side{base.marker().name}" / "ckpt"
        where.mkdir(parents=True)
        path = _plain_safetensors(where)
        (where / sidecar).symlink_to(secret_file(where))
        yield Case("sidecar_confinement", f"safetensors/{sidecar}-symlinked-outside", shown(path), base.marker(),
                   check=no_secret)
        yield Case("sidecar_confinement", f"safetensors/{sidecar}-symlinked-outside/cli",
                   lambda p=path: _cli_text(["inspect", str(p)]), base.marker(), check=no_secret)
    # a bare state dict's `<stem>.meta.json`, an upstream DCP's meta.json one and two folders up
    where = base.root / f"bare{base.marker().name}" / "ckpt"
    where.mkdir(parents=True)
    bare = where / "model.pt"
    torch.save(Victim().state_dict(), bare)
    (where / "model.meta.json").symlink_to(secret_file(where))
    yield Case("sidecar_confinement", "pt/model.meta.json-symlinked-outside", shown(bare), base.marker(), check=no_secret)
    for up in (1, 2):
        path = _nested_copy(base, base.upstream_dcp)
        (path / "meta.json").unlink()
        folder = path.parents[up - 1]
        (folder / "meta.json").symlink_to(secret_file(folder))
        yield Case("sidecar_confinement", f"dcp/meta.json-{up}-up-symlinked-outside", shown(path), base.marker(),
                   check=no_secret)


def _nested_copy(base: Base, source: Path) -> Path:
    """A copy of ``source`` at ``<unique>/a/b/m_dcp``: the folders one to three up belong to this case alone."""
    path = base.root / f"nest{base.marker().name}" / "a" / "b" / "m_dcp"
    shutil.copytree(source, path)
    return path


def _cli_text(args: list[str]) -> str:
    """stdout and stderr of ``enn-nb ARGS`` (a non-zero exit is a refusal; a traceback raises RawCliError)."""
    code, out, err = run_cli(args)
    if code != 0:
        raise Refused(err.strip().splitlines()[0] if err.strip() else f"exit {code}")
    return out + err


# -- 10: a folder enn_nb wrote never falls back to a parent meta.json -----------------------------------------
def parent_meta(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    upstream_meta = json.dumps({"in_dim": 4, "config": {"d_model": 4}, "extra": {"builder": VICTIM_BUILDER}})
    for damaged in (True, False):
        for up in (1, 2, 3):
            for kind, meta in (("empty", "{}"), ("upstream", upstream_meta)):
                path = _nested_copy(base, base.dcp)
                (path / "enn_nb.manifest.json").unlink()
                if damaged:
                    shard = path / "__0_0.distcp"
                    data = bytearray(shard.read_bytes())
                    data[len(data) // 2] ^= 0xFF
                    shard.write_bytes(bytes(data))
                (path.parents[up - 1] / "meta.json").write_text(meta)
                for verb, call in (("load", enn_nb.load), ("inspect", enn_nb.inspect)):
                    yield Case("parent_meta", f"{'damaged' if damaged else 'intact'}/{up}-up/{kind}/{verb}",
                               lambda c=call, p=path: c(p), base.marker())


def _reports_module(name: str) -> Any:
    """``enn_nb.surfaces.reports.<name>``, or ``enn_nb.reports.<name>`` in an enn_nb from before issue 23's layout
    (the campaign's "before" run; an editable install would otherwise import the new module beside the old tree)."""
    import importlib

    new_layout = (Path(enn_nb.__file__).parent / "surfaces").is_dir()
    return importlib.import_module(f"enn_nb.{'surfaces.' if new_layout else ''}reports.{name}")


# -- 11: names with terminal escapes ------------------------------------------------------------------------
EVIL_NAME = "\x1b]0;owned\x07\x1b[2J\x1b[1;32mALL 9 REPORTS PASSED\x1b[0m\r"


def _terminal_safe(text: str) -> bool:
    return not any(c in text for c in "\x1b\x07\r\x9b")


def terminal_escapes(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    batch, runner = _reports_module("batch"), _reports_module("runner")
    BatchEntry, BatchResult, ReportResult = batch.BatchEntry, batch.BatchResult, runner.ReportResult  # noqa: N806

    where = base.root / f"esc{base.marker().name}"
    where.mkdir()
    source = where / f"{EVIL_NAME}.safetensors"
    shutil.copy(base.st, source)
    notebook = where / f"checkpoint_report-{EVIL_NAME}.ipynb"

    def batch_repr() -> str:
        result = ReportResult("checkpoint_report", notebook, None, {"checkpoint": str(source)}, None, 0.1)
        return repr(BatchResult([BatchEntry(source, result)], where / "index.html"))

    def batch_failures() -> str:
        error = enn_nb.errors.ReportError(f"cell failed on {EVIL_NAME}")
        result = ReportResult("checkpoint_report", notebook, None, {}, None, 0.1, error=error)
        return "\n".join(BatchResult([BatchEntry(source, result)], where / "index.html").failures) + repr(result)

    yield Case("terminal_escapes", "BatchResult.__repr__", batch_repr, base.marker(), check=_terminal_safe)
    yield Case("terminal_escapes", "BatchResult.failures+ReportResult.__repr__", batch_failures, base.marker(),
               check=_terminal_safe)
    yield Case("terminal_escapes", "cli-inspect", lambda: _cli_text(["inspect", str(source)]), base.marker(),
               check=_terminal_safe)
    yield Case("terminal_escapes", "cli-convert", lambda: _cli_text(["convert", str(base.pt), str(where / f"{EVIL_NAME}.pt")]),
               base.marker(), check=_terminal_safe)
    yield Case("terminal_escapes", "cli-export-missing-src",
               lambda: _cli_text(["export", str(where / f"{EVIL_NAME}-missing.pt"), "--backends", "pt2", "--out",
                                  str(where / "out")]), base.marker(), check=_terminal_safe)


# -- 12: symlinked folders in recursive globs -----------------------------------------------------------------
def glob_links(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    run_batch = _reports_module("batch").run_batch

    with contextlib.suppress(enn_nb.errors.EnnError):  # parse the template once here: each forked case reuses it
        empty = base.root / "glob-warm"
        empty.mkdir(exist_ok=True)
        run_batch("checkpoint_report", str(empty / "*.nothing"), empty / "out")
    for links in (2, 3):
        where = base.root / f"glob{base.marker().name}"
        d = where / "d"
        (d / "sub").mkdir(parents=True)
        for i in range(links):
            (d / f"l{i}").symlink_to(".")
        (d / "sub" / "deeper").symlink_to("..")
        out = where / "out"
        for pattern in ("d/**/*.nothing", "d/**/nothing/*.safetensors"):
            def run(w: Path = where, p: str = pattern, o: Path = out) -> Any:
                os.chdir(w)
                return run_batch("checkpoint_report", p, o)
            yield Case("glob_links", f"{links}-links/{pattern}", run, base.marker(), timeout=30)


# -- 13: forged sizes: bounded work, bounded messages ---------------------------------------------------------
MAX_MESSAGE = 20_000


def _short_refusal(action: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        try:
            return action()
        except enn_nb.errors.EnnError as exc:
            if len(str(exc)) > MAX_MESSAGE:
                return f"a {len(str(exc))}-character message"
            raise
    return run


def forged_sizes(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    from enn_nb.reference.config import ModelConfig
    from enn_nb.reference.model import ReferenceModel

    torch.manual_seed(0)
    model = ReferenceModel(ModelConfig(depth=1, attention="math", fused_kernel=False, calibration="static"))
    where = base.root / f"forged{base.marker().name}"
    where.mkdir()
    for depth in (50_000, 2_000) if n >= 20 else (50_000,):
        pt = where / f"d{depth}.pt"
        enn_nb.save(model, pt)
        rewrite_pt_manifest(pt, lambda doc, d=depth: doc["spec"]["config"].update(depth=d))
        dcp_path = where / f"d{depth}_dcp"
        enn_nb.save(model, dcp_path)
        reseal_dcp(dcp_path, lambda doc, d=depth: doc["spec"]["config"].update(depth=d))
        for kind, path in (("pt", pt), ("dcp", dcp_path)):
            yield Case("forged_sizes", f"{kind}/depth={depth}/load", _short_refusal(lambda p=path: enn_nb.load(p)),
                       base.marker(), timeout=30)
            yield Case("forged_sizes", f"{kind}/depth={depth}/load-not-strict",
                       _short_refusal(lambda p=path: enn_nb.load(p, strict=False)), base.marker(), timeout=30)
    # many keys missing or unexpected: the message names a few and counts the rest
    wide = where / "wide.safetensors"
    enn_nb.save({f"w{i}": torch.zeros(1) for i in range(20_000)}, wide, spec={"builder": VICTIM_BUILDER})
    yield Case("forged_sizes", "20000-unexpected-keys", _short_refusal(lambda: enn_nb.load(wide)), base.marker(),
               timeout=60)


# -- 14: raw tracebacks that must be clean errors -------------------------------------------------------------
class ExtraVictim(Victim):
    """A Victim with a non-tensor extra state its ``set_extra_state`` reads as a dict."""

    enn_builder = "tests.security.extra_victim"

    def __init__(self) -> None:
        super().__init__()
        self.mode = "plain"

    def get_extra_state(self) -> dict:
        return {"mode": self.mode}

    def set_extra_state(self, state: dict) -> None:
        self.mode = state["mode"]


enn_nb.register_builder(ExtraVictim.enn_builder, replace=True)(lambda spec: ExtraVictim())


@contextlib.contextmanager
def _mounted(where: Path, options: str) -> Iterator[Path]:
    """A small tmpfs at ``where`` (needs root): read-only or a few KiB, the real errors a disk gives.

    Mounted in a private mount namespace of the (forked) case: a case that crashes leaves no mount behind.
    """
    import ctypes

    if ctypes.CDLL(None, use_errno=True).unshare(0x00020000) != 0:  # CLONE_NEWNS
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS) failed")
    subprocess.run(["mount", "--make-rprivate", "/"], check=True, capture_output=True)
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"cannot mount a tmpfs here: {done.stderr.decode()[:200]}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


def raw_tracebacks(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    from enn_nb.engine import sidecar as sc

    model = base.model
    where = base.root / f"raw{base.marker().name}"
    where.mkdir()
    # vectors metadata whose `cases` is not JSON, sidecar resealed
    exported = where / "exported"
    enn_nb.export(Victim(), "pt2", out_dir=exported, example_inputs=torch.randn(2, 4), isolate=False, cache=False)
    damaged = (("cases", "{not json"), ("cases", "[1, 2]"), ("input_names", "[["), ("cases", "[" * 5000))
    for field, value in damaged if n >= 20 else damaged[:2]:
        out = where / f"vec{base.marker().name}"
        shutil.copytree(exported, out)
        vectors = next(out.glob("*.vectors.safetensors"))
        _rewrite_safetensors_metadata(vectors, field, value)
        side = out / f"model.pt2{sc.SIDECAR_SUFFIX}"
        doc = json.loads(side.read_text())
        for entry in doc["files"]:
            p = out / entry["path"]
            if p.is_file():
                entry.update(sha256=sc.sha256_file(p), size=p.stat().st_size)
        side.write_text(json.dumps(doc))
        yield Case("raw_tracebacks", f"vectors-{field}={value[:10]}/cli", lambda o=out: cli(["verify", str(o / "model.pt2")]),
                   base.marker())
        yield Case("raw_tracebacks", f"vectors-{field}={value[:10]}/api", lambda o=out: enn_nb.verify(o / "model.pt2"),
                   base.marker(), check=lambda r: r.status == "failed")
    # a .pt2 passed off as an AOTI package (sidecar resealed), verified with trust: torch's own log stays off stderr
    out = where / f"aoti{base.marker().name}"
    shutil.copytree(exported, out)
    disguise_as_aoti(out)
    yield Case("raw_tracebacks", "disguised-aoti/verify-trusted",
               _nothing_on_stderr(lambda o=out: enn_nb.verify(o / "model.aoti.pt2", trust=True)), base.marker(),
               timeout=120, check=lambda r: getattr(r, "status", None) == "failed")
    # a manifest giving set_extra_state a string
    extra = where / "extra.pt"
    enn_nb.save(ExtraVictim(), extra)
    rewrite_pt_manifest(extra, lambda doc: doc.update(extra_state={k: "a string" for k in doc.get("extra_state", {"_extra_state": 0})}))
    yield Case("raw_tracebacks", "set_extra_state-gets-a-string", lambda: enn_nb.load(extra), base.marker())
    # --model references that are no factory
    pt = base.pt
    refs = ("..evilmod:x", "os:system", "torch.nn:Linear", ".relative:f", "torch:nn.Linear.__init__")
    for ref in refs if n >= 20 else refs[:3]:
        yield Case("raw_tracebacks", f"--model {ref}/export",
                   lambda r=ref: cli(["export", str(pt), "--backends", "pt2", "--out", str(where / "m"), "--model", r]),
                   base.marker())
    # metadata that is no JSON text: lone surrogates, self-reference
    loop: dict[str, Any] = {}
    loop["self"] = loop
    chain: list[Any] = []
    chain.append(chain)
    for name, meta in (("lone-surrogate", {"note": "\ud800"}), ("surrogate-key", {"\udc80": 1}),
                       ("dict-contains-itself", loop), ("list-contains-itself", {"l": chain})):
        for suffix in (".pt", ".safetensors", "_dcp"):
            yield Case("raw_tracebacks", f"metadata-{name}/save{suffix}",
                       lambda m=meta, s=suffix: enn_nb.save(model, where / f"meta{s}", metadata=m), base.marker())
    # paths that no filesystem takes
    for name, path in (("nul", str(where / "a\x00b.pt")), ("long-name", str(where / ("a" * 300 + ".pt"))),
                       ("long-path", "/".join(["x" * 200] * 30) + ".pt")):
        yield Case("raw_tracebacks", f"path-{name}/load", lambda p=path: enn_nb.load(p), base.marker())
        yield Case("raw_tracebacks", f"path-{name}/save", lambda p=path: enn_nb.save(model, p), base.marker())
        yield Case("raw_tracebacks", f"path-{name}/export-out-dir",
                   lambda p=path: enn_nb.export(nn.Linear(2, 2), "pt2", out_dir=p, example_inputs=torch.randn(2, 2),
                                                isolate=False, cache=False), base.marker())
    # 1-D example inputs: dim 0 is taken as the batch; the model rejects the other batch sizes
    yield Case("raw_tracebacks", "1-D-example-inputs",
               lambda: enn_nb.export(nn.Linear(4, 4), "pt2", out_dir=where / "one-d", example_inputs=torch.randn(4),
                                     isolate=False, cache=False), base.marker(), timeout=120)
    if not _can_mount():
        return
    # DCP save to a read-only filesystem; exports onto a full one
    for name in ("m_dcp", "m.pt", "m.safetensors"):
        def save_ro(n: str = name) -> Any:
            with _mounted(where / f"ro{base.marker().name}", "size=1m,ro") as ro:
                return enn_nb.save(model, ro / n)
        yield Case("raw_tracebacks", f"read-only-filesystem/save-{name}", save_ro, base.marker())
    exports = ((["pt2"], False), (["onnx"], False), (["pt2", "onnx"], True))
    for backends, isolate in exports if n >= 20 else exports[::2]:
        def export_full(b: list[str] = backends, i: bool = isolate) -> Any:
            with _mounted(where / f"full{base.marker().name}", "size=64k") as full:
                report = enn_nb.export(nn.Linear(256, 256), b, out_dir=full / "out", example_inputs=torch.randn(2, 256),
                                       isolate=i, cache=False)
                return report
        yield Case("raw_tracebacks", f"disk-full/export-{'+'.join(backends)}{'-isolated' if isolate else ''}",
                   export_full, base.marker(), timeout=180,
                   check=lambda r: all(x.status != "ok" for x in r.results))


def _nothing_on_stderr(action: Callable[[], Any]) -> Callable[[], Any]:
    """``action`` with file descriptor 2 taken: a traceback or a log line of torch's that reached it is a silent
    wrong result (the one-line warning ``trust=True`` asks for is expected)."""
    import re
    import tempfile

    def run() -> Any:
        with tempfile.TemporaryFile() as sink:
            saved = os.dup(2)
            os.dup2(sink.fileno(), 2)
            refusal: BaseException | None = None
            try:
                result = action()
            except enn_nb.errors.EnnError as exc:
                refusal, result = exc, None
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace")
        noise = [line for line in text.splitlines()
                 if "Traceback" in line or re.match(r"[IWEF]\d{4} \d", line) or line.startswith("  File ")]
        if noise:
            return f"printed on stderr: {' | '.join(noise)[:200]}"
        if refusal is not None:
            raise refusal
        return result
    return run


def _rewrite_safetensors_metadata(path: Path, key: str, value: str) -> None:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    header["__metadata__"][key] = value
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:])


GENERATORS: dict[str, Callable[[Base, random.Random, int], Iterator[Case]]] = {
    "global_state": global_state_family, "sidecar_confinement": sidecar_confinement, "parent_meta": parent_meta,
    "terminal_escapes": terminal_escapes, "glob_links": glob_links, "forged_sizes": forged_sizes,
    "raw_tracebacks": raw_tracebacks,
}
