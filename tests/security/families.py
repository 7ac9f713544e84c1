"""Generators of hostile inputs, one per attack family; each yields :class:`~tests.security.runner.Case` s.

``generate(family, workdir, seed, n)`` builds the files under ``workdir`` (victims and markers
included) and yields the cases; ``n`` scales the fuzzing families (the fixed lists of gadgets and
targets are always tried whole). Every forged checkpoint is *resealed* the way an attacker would:
file hashes, tensor hashes and the manifest's self-hash recomputed, so integrity checks alone
cannot be what stops it.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import random
import shutil
import struct
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blake3
import torch
from torch import nn

import enn_nb
from enn_nb.checkpoint.manifest import self_hash

from .runner import Case, cli, snapshot

VICTIM_BUILDER = "tests.security.victim"
FAMILIES = ("unpickler_gadgets", "bytes_entries", "path_escapes", "special_files", "symlinks", "bombs",
            "truncation", "byte_flips", "header_fuzz", "overwrite_targets", "artifacts", "magics")


class Victim(nn.Module):
    """A small model built from its config (so a forged config changes what gets allocated)."""

    enn_builder = VICTIM_BUILDER

    def __init__(self, d_model: int = 4) -> None:
        super().__init__()
        self.config = {"d_model": d_model}
        self.in_dim = d_model
        self.out_shape = (d_model,)
        self.fc = nn.Linear(d_model, d_model)
        self.register_buffer("scale", torch.arange(d_model, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.scale.float()


enn_nb.register_builder(VICTIM_BUILDER, replace=True)(lambda spec: Victim(int((spec.config or {}).get("d_model", 4))))


def victim() -> tuple[Victim, Any]:
    torch.manual_seed(0)
    model = Victim()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return model, opt


def same_weights(model: Any, reference: Victim) -> bool:
    own = model.state_dict()
    return all(torch.equal(own[k], v) for k, v in reference.state_dict().items())


# -- sealing forged checkpoints -----------------------------------------------------------------------
def _digest(data: bytes) -> str:
    """A manifest digest as enn_nb writes it (``blake3:<hex>``): what a forger would compute."""
    return "blake3:" + blake3.blake3(data).hexdigest()


def reseal_dcp(directory: Path, change: Callable[[dict], Any] | None = None) -> None:
    """Recompute every file hash in a DCP manifest (and the self-hash), after ``change(doc)``."""
    file = directory / "enn_nb.manifest.json"
    doc = json.loads(file.read_text())
    if change is not None:
        change(doc)
    for entry in doc["files"]:
        path = directory / entry["path"]
        if path.is_file() and not path.is_symlink() and path.resolve().is_relative_to(directory.resolve()):
            data = path.read_bytes()
            entry.update(nbytes=len(data), hash=_digest(data))
    doc["manifest_sha256"] = self_hash(doc)
    file.write_text(json.dumps(doc))


def rewrite_pt_manifest(path: Path, change: Callable[[dict], Any]) -> None:
    payload = torch.load(path, weights_only=True)
    doc = json.loads(payload["enn_nb.manifest"])
    change(doc)
    doc["manifest_sha256"] = self_hash(doc)
    payload["enn_nb.manifest"] = json.dumps(doc)
    torch.save(payload, path)


def read_metadata_unsafely(directory: Path) -> Any:
    """The attacker's view: DCP's metadata unpickled with no restriction (their own file)."""
    return pickle.loads((directory / ".metadata").read_bytes())


# -- pickle gadgets ------------------------------------------------------------------------------------
def _str(text: str) -> bytes:
    raw = text.encode()
    return (b"\x8c" + bytes([len(raw)]) if len(raw) < 256 else b"X" + struct.pack("<I", len(raw))) + raw


def _dotted(module: str, name: str) -> bytes:
    return _str(module) + _str(name) + b"\x93"  # STACK_GLOBAL: protocol 4 resolves dotted names step by step


def _body(obj: Any) -> bytes:
    """``obj`` pickled with protocol 3 (no frames), without PROTO and STOP, to splice into a stream."""
    return pickle.dumps(obj, protocol=3)[2:-1]


def _code_args(marker: Path) -> tuple:
    code = compile(f"open({str(marker)!r}, 'w').write('pwned')", "<gadget>", "exec")
    return (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_nlocals, code.co_stacksize,
            code.co_flags, code.co_code, code.co_consts, code.co_names, code.co_varnames, code.co_filename,
            code.co_name, code.co_qualname, code.co_firstlineno, code.co_linetable, code.co_exceptiontable,
            code.co_freevars, code.co_cellvars)


def function_gadget(marker: Path, module: str, function: str, tail: bytes = b"") -> bytes:
    """``FunctionType(CodeType(...), {})()`` reached through ``module.function.__class__`` (the reported bypass)."""
    return (b"\x80\x04" + _dotted(module, f"{function}.__class__") + _dotted(module, f"{function}.__code__.__class__")
            + _body(_code_args(marker)) + b"R" + b"}" + b"\x86" + b"R" + b")" + b"R" + (b"0" + tail if tail else b"")
            + b".")


def system_gadget(marker: Path, module: str = "os", name: str = "system", opcode: str = "stack") -> bytes:
    cmd = _body(f"touch {marker}")
    if opcode == "global":  # protocol 0/1 GLOBAL opcode
        return b"c" + module.encode() + b"\n" + name.encode() + b"\n(" + cmd + b"tR."
    if opcode == "inst":
        return b"(" + cmd + b"i" + module.encode() + b"\n" + name.encode() + b"\n."
    return b"\x80\x04" + _dotted(module, name) + cmd + b"\x85R."


def class_poison_gadget(tail: bytes) -> bytes:
    """A BUILD on an allow-listed class object: sets a class attribute, then returns genuine metadata."""
    meta = "torch.distributed.checkpoint.metadata"
    state = b"N}" + _str("version") + _str("poisoned") + b"s\x86"
    return b"\x80\x04" + _dotted(meta, "Metadata") + state + b"b0" + tail + b"."


def evil_torch_pickle(marker: Path) -> bytes:
    """What ``torch.load(weights_only=False)`` executes: a bare pickle calling ``os.system``."""
    return system_gadget(marker)


# -- base checkpoints ----------------------------------------------------------------------------------
class Base:
    """The genuine checkpoints every family starts from, saved once per work directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.model, self.opt = victim()
        self.pt = root / "base" / "m.pt"
        self.st = root / "base" / "m.safetensors"
        self.dcp = root / "base" / "m_dcp"
        self.upstream_dcp = root / "base" / "m_upstream_dcp"
        if not self.pt.exists():
            for path in (self.pt, self.st, self.dcp):
                enn_nb.save(self.model, path, optimizer=self.opt)
            _save_upstream_dcp(self.model, self.upstream_dcp)
        self.counter = 0

    def fresh(self, kind: str) -> Path:
        """A private copy of the base checkpoint of ``kind`` (pt, safetensors, dcp, upstream_dcp)."""
        self.counter += 1
        where = self.root / f"case{self.counter:05d}"
        where.mkdir(parents=True, exist_ok=True)
        if kind == "pt":
            return Path(shutil.copy(self.pt, where / "m.pt"))
        if kind == "safetensors":
            return Path(shutil.copy(self.st, where / "m.safetensors"))
        target = where / "m_dcp"
        shutil.copytree(self.upstream_dcp if kind == "upstream_dcp" else self.dcp, target)
        return target

    def marker(self) -> Path:
        self.counter += 1
        return self.root / f"pwned{self.counter:05d}"

    def outside_victim(self) -> Path:
        """A user file outside every checkpoint directory (must never change)."""
        self.counter += 1
        path = self.root / f"victim{self.counter:05d}.txt"
        path.write_text("precious user data\n")
        return path

    def loads_right(self, loaded: Any) -> bool:
        return same_weights(loaded.model, self.model)


def _save_upstream_dcp(model: nn.Module, path: Path) -> None:
    """A DCP directory as ENN-PyTorch writes one: ``{"model": state_dict}`` through torch's own writer, ``meta.json``."""
    import torch.distributed.checkpoint as dcp

    dcp.save({"model": model.state_dict()}, storage_writer=dcp.FileSystemWriter(path, thread_count=2), no_dist=True)
    (path / "meta.json").write_text(json.dumps({"in_dim": 4, "config": {"d_model": 4},
                                                "extra": {"builder": VICTIM_BUILDER}}))


def _load(path: Path, **kwargs: Any) -> Callable[[], Any]:
    return lambda: enn_nb.load(path, **kwargs)


# -- families ---------------------------------------------------------------------------------------------
_FUNCTION_ROUTES = [
    ("torch.distributed.checkpoint.filesystem", "FileSystemReader.read_metadata"),
    ("torch.distributed.checkpoint.metadata", "Metadata.__init__"),
    ("torch.distributed.checkpoint.metadata", "TensorProperties.__setstate__"),
    ("torch.distributed.checkpoint.filesystem", "FileSystemReader.__init__"),
    ("torch.distributed.checkpoint.default_planner", "DefaultLoadPlanner.set_up_planner"),
    ("torch.serialization", "_get_layout"),
    ("torch.distributed.checkpoint.metadata", "StorageMeta.__init__"),
]
_DIRECT_GLOBALS = [("os", "system"), ("posix", "system"), ("subprocess", "getoutput"), ("builtins", "exec"),
                   ("torch.distributed.checkpoint.filesystem", "os.system"), ("torch", "load")]


def unpickler_gadgets(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    genuine = _body(read_metadata_unsafely(base.dcp))
    for layout in ("dcp", "upstream_dcp"):
        for module, function in _FUNCTION_ROUTES:
            for stealth in (False, True):
                marker = base.marker()
                path = base.fresh(layout)
                (path / ".metadata").write_bytes(function_gadget(marker, module, function, genuine if stealth else b""))
                if layout == "dcp":
                    reseal_dcp(path)
                for verb, action in (("load", _load(path)), ("inspect", lambda p=path: enn_nb.inspect(p))):
                    yield Case("unpickler_gadgets", f"{layout}/{function}/{'stealth' if stealth else 'plain'}/{verb}",
                               action, marker)
        for (module, name), opcode in [(g, "stack") for g in _DIRECT_GLOBALS] + [(("os", "system"), "global"),
                                                                                  (("os", "system"), "inst")]:
            marker = base.marker()
            path = base.fresh(layout)
            (path / ".metadata").write_bytes(system_gadget(marker, module, name, opcode))
            if layout == "dcp":
                reseal_dcp(path)
            yield Case("unpickler_gadgets", f"{layout}/{module}.{name}/{opcode}", _load(path), marker)
        marker = base.marker()
        path = base.fresh(layout)
        (path / ".metadata").write_bytes(class_poison_gadget(genuine))
        if layout == "dcp":
            reseal_dcp(path)
        yield Case("unpickler_gadgets", f"{layout}/class-attribute-poisoning", _load(path), marker)
        # the CLI and convert reach the same reader
        marker = base.marker()
        path = base.fresh(layout)
        (path / ".metadata").write_bytes(function_gadget(marker, *_FUNCTION_ROUTES[0], genuine))
        if layout == "dcp":
            reseal_dcp(path)
        yield Case("unpickler_gadgets", f"{layout}/cli-inspect", lambda p=path: cli(["inspect", str(p)]), marker)
        out = path.parent / "converted.pt"
        yield Case("unpickler_gadgets", f"{layout}/convert", lambda p=path, o=out: enn_nb.convert(p, o), marker)


def bytes_entries(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

    md = read_metadata_unsafely(base.dcp)
    fqns = [f for f in md.state_dict_metadata if f.startswith("optimizer.")][:2] + ["model.fc.weight"]
    for layout in ("dcp", "upstream_dcp"):
        for fqn in fqns:
            marker = base.marker()
            path = base.fresh(layout)
            meta = read_metadata_unsafely(path)
            meta.state_dict_metadata[fqn] = BytesStorageMetadata()
            meta.storage_data = {k: v for k, v in meta.storage_data.items() if k.fqn != fqn}
            evil = evil_torch_pickle(marker)
            (path / "__9_9.distcp").write_bytes(evil)
            meta.storage_data[MetadataIndex(fqn)] = _StorageInfo("__9_9.distcp", 0, len(evil))
            (path / ".metadata").write_bytes(pickle.dumps(meta))
            if layout == "dcp":
                reseal_dcp(path, lambda doc: doc["files"].append({"path": "__9_9.distcp", "nbytes": 0, "hash": "blake3:" + "0" * 64}))
            yield Case("bytes_entries", f"{layout}/{fqn}/load", _load(path), marker)
            # upstream directories carry no manifest: the bytes entry is simply not a tensor, never read
            skipped = (lambda m, f=fqn: all(t.name not in f for t in m.tensors)) if layout == "upstream_dcp" else None
            yield Case("bytes_entries", f"{layout}/{fqn}/convert",
                       lambda p=path: enn_nb.convert(p, p.parent / "out.safetensors"), marker, check=skipped)
    # an unrequested bytes entry is harmless: the load must succeed, untouched by it
    marker = base.marker()
    path = base.fresh("dcp")
    meta = read_metadata_unsafely(path)
    meta.state_dict_metadata["extra.evil"] = BytesStorageMetadata()
    evil = evil_torch_pickle(marker)
    (path / "__9_9.distcp").write_bytes(evil)
    meta.storage_data[MetadataIndex("extra.evil")] = _StorageInfo("__9_9.distcp", 0, len(evil))
    (path / ".metadata").write_bytes(pickle.dumps(meta))
    reseal_dcp(path, lambda doc: doc["files"].append({"path": "__9_9.distcp", "nbytes": 0, "hash": "blake3:" + "0" * 64}))
    yield Case("bytes_entries", "dcp/unrequested-bytes-entry", _load(path), marker, check=base.loads_right)


def path_escapes(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    for target in ("../{v}", "{abs}", "../../{v}", "./../{v}", "sub/../../{v}"):
        victim_file = base.outside_victim()
        path = base.fresh("dcp")
        name = target.format(v=victim_file.name, abs=str(victim_file))
        reseal_dcp(path, lambda doc, name=name: doc["files"].append({"path": name, "nbytes": 19, "hash": "blake3:" + "0" * 64}))
        yield Case("path_escapes", f"manifest-files/{target}", _load(path), base.marker(),
                   victims={victim_file: snapshot(victim_file)})
    for layout in ("dcp", "upstream_dcp"):
        for rel in ("../outside.distcp", "/tmp/outside.distcp", "..", "", "sub/x.distcp"):
            path = base.fresh(layout)
            outside = path.parent / "outside.distcp"
            shutil.copy(path / "__0_0.distcp", outside)
            meta = read_metadata_unsafely(path)
            meta.storage_data = {k: _StorageInfo(rel, v.offset, v.length) if v.relative_path == "__0_0.distcp" else v
                                 for k, v in meta.storage_data.items()}
            (path / ".metadata").write_bytes(pickle.dumps(meta))
            if layout == "dcp":
                reseal_dcp(path)
            yield Case("path_escapes", f"{layout}/storage-path/{rel or 'empty'}", _load(path), base.marker(),
                       victims={outside: snapshot(outside)})
    for stem in ("../evil", "/abs", ".hidden", "a/b", "x\x00y"):
        out = base.root / "export-out"
        yield Case("path_escapes", f"export-stem/{stem!r}",
                   lambda s=stem, o=out: enn_nb.export(nn.Linear(2, 2), "pt2", out_dir=o, stem=s,
                                                        example_inputs=torch.randn(2, 2), isolate=False),
                   base.marker())


def special_files(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    def fifo(path: Path) -> Path:
        if path.exists() or path.is_symlink():
            path.unlink() if not path.is_dir() else shutil.rmtree(path)
        os.mkfifo(path)
        return path

    where = base.root / f"special{base.marker().name}"
    where.mkdir()
    for name in ("m.pt", "m.safetensors", "m"):
        p = fifo(where / name)
        yield Case("special_files", f"fifo-as-checkpoint/{name}", _load(p), base.marker(), timeout=20,
                   victims={p: snapshot(p)})
    yield Case("special_files", "dev-zero-as-checkpoint", lambda: enn_nb.inspect("/dev/zero"), base.marker(), timeout=20)
    yield Case("special_files", "dev-zero-cli", lambda: cli(["inspect", "/dev/zero"]), base.marker(), timeout=20)
    for layout, name in (("dcp", "enn_nb.manifest.json"), ("dcp", ".metadata"), ("dcp", "__0_0.distcp"),
                         ("upstream_dcp", "meta.json"), ("upstream_dcp", ".metadata"), ("upstream_dcp", "__0_1.distcp")):
        path = base.fresh(layout)
        fifo(path / name)
        yield Case("special_files", f"{layout}/fifo-{name}", _load(path), base.marker(), timeout=20)
        path = base.fresh(layout)
        (path / name).unlink()
        (path / name).symlink_to("/dev/zero")
        yield Case("special_files", f"{layout}/dev-zero-{name}", _load(path), base.marker(), timeout=20)
    path = base.fresh("dcp")
    (path / "enn_nb.manifest.json").unlink()
    (path / "enn_nb.manifest.json").mkdir()
    yield Case("special_files", "dcp/manifest-is-a-directory", _load(path), base.marker())
    path = base.fresh("dcp")
    fifo(path / "extra.distcp")
    reseal_dcp(path, lambda doc: doc["files"].append({"path": "extra.distcp", "nbytes": 10, "hash": "blake3:" + "0" * 64}))
    yield Case("special_files", "dcp/listed-fifo", _load(path), base.marker(), timeout=20)
    plain = base.fresh("safetensors")
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.ones(4, 4)}, str(plain))
    fifo(plain.with_name(plain.name + ".json"))
    yield Case("special_files", "safetensors-sidecar-fifo", lambda p=plain: enn_nb.inspect(p), base.marker(), timeout=20)


def symlinks(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    for layout in ("dcp", "upstream_dcp"):
        for name in ("__0_0.distcp", ".metadata") + (("enn_nb.manifest.json",) if layout == "dcp" else ("meta.json",)):
            path = base.fresh(layout)
            outside = path.parent / f"outside-{name.strip('.')}"
            shutil.move(path / name, outside)
            (path / name).symlink_to(outside)
            yield Case("symlinks", f"{layout}/{name}-points-outside", _load(path), base.marker(),
                       victims={outside: snapshot(outside)})
    path = base.fresh("dcp")
    (path / "alias.distcp").symlink_to(path / "__0_0.distcp")  # inside: allowed, but unlisted files are not read
    yield Case("symlinks", "dcp/inside-symlink-unlisted", _load(path), base.marker(), check=base.loads_right)
    path = base.fresh("dcp")
    outside = path.parent / "escape"
    outside.mkdir()
    shutil.move(path / "__0_1.distcp", outside / "__0_1.distcp")
    os.symlink(outside, path / "sub")
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    meta = read_metadata_unsafely(path)
    meta.storage_data = {k: _StorageInfo("sub/__0_1.distcp", v.offset, v.length) if v.relative_path == "__0_1.distcp"
                         else v for k, v in meta.storage_data.items()}
    (path / ".metadata").write_bytes(pickle.dumps(meta))
    reseal_dcp(path)
    yield Case("symlinks", "dcp/directory-symlink-outside", _load(path), base.marker())


def _yaml_bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def bombs(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    from enn_nb.surfaces.notebook import _magic_logic as logic
    from enn_nb.surfaces.reports.catalog import parse_assignment

    bomb = _yaml_bomb()
    flat = bomb.replace("\n", ", ").rstrip(", ")
    yield Case("bombs", "yaml-alias/meta", lambda: logic.parse_meta([f"x={{{flat}}}"]), base.marker(), timeout=30)
    yield Case("bombs", "yaml-alias/report-param", lambda: parse_assignment(f"x={{{flat}}}"), base.marker(), timeout=30)
    yield Case("bombs", "yaml-alias/export-body", lambda: logic.parse_export_body(bomb), base.marker(), timeout=30)
    yield Case("bombs", "yaml-deep/export-body", lambda: logic.parse_export_body("a: " + "[" * 5000 + "]" * 5000),
               base.marker(), timeout=30)
    yield Case("bombs", "yaml-huge/meta", lambda: logic.parse_meta(["x=" + "a" * (4 << 20)]), base.marker())
    yield Case("bombs", "example-inputs-2e9", lambda: logic.example_inputs([3, 2_000_000_000], {}), base.marker())
    # a deeply nested manifest, resealed
    path = base.fresh("dcp")
    reseal_dcp(path, lambda doc: doc["metadata"].update(deep=json.loads("[" * 900 + "]" * 900)))
    yield Case("bombs", "manifest-deep-json", _load(path), base.marker())
    path = base.fresh("dcp")
    raw = (path / "enn_nb.manifest.json").read_text()
    (path / "enn_nb.manifest.json").write_text("[" * 200000 + "]" * 200000 if raw else raw)
    yield Case("bombs", "manifest-recursion", _load(path), base.marker())
    path = base.fresh("dcp")
    with open(path / "enn_nb.manifest.json", "r+b") as fh:
        fh.truncate(200 * 1024 * 1024)  # sparse: 200 MB declared, nothing on disk
    yield Case("bombs", "manifest-200MB", lambda p=path: enn_nb.inspect(p), base.marker(), timeout=30)
    # a .pt whose data.pkl is deflated: tiny on disk, gigabytes once inflated
    path = base.fresh("pt")
    bomb_pkl = b"\x80\x02]q\x00(" + b"K\x01" * (64 << 20) + b"e."
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("m/data.pkl", bomb_pkl)
        zf.writestr("m/version", "3\n")
    yield Case("bombs", "pt-deflated-data-pkl", lambda p=path: enn_nb.inspect(p), base.marker(), timeout=60)
    # a forged config that would allocate ~12.9 GB if the model were built before any check
    for kind in ("pt", "dcp"):
        path = base.fresh(kind)

        def forge(doc: dict) -> None:
            doc["spec"]["config"] = {"d_model": 32768}
        if kind == "pt":
            rewrite_pt_manifest(path, forge)
        else:
            reseal_dcp(path, forge)
        yield Case("bombs", f"{kind}/forged-config-d_model", _load(path), base.marker(), timeout=60)
    # DCP metadata + manifest declaring a huge tensor over tiny shards
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

    path = base.fresh("dcp")
    meta = read_metadata_unsafely(path)
    entry = meta.state_dict_metadata["model.fc.weight"]
    entry.size = torch.Size([1 << 17, 1 << 15])
    entry.chunks = [ChunkStorageMetadata(torch.Size([0, 0]), torch.Size([1 << 17, 1 << 15]))]
    (path / ".metadata").write_bytes(pickle.dumps(meta))

    def huge(doc: dict) -> None:
        for t in doc["tensors"]:
            if t["name"] == "fc.weight":
                t.update(shape=[1 << 17, 1 << 15], nbytes=4 << 32)
    reseal_dcp(path, huge)
    yield Case("bombs", "dcp/huge-declared-tensor-convert", lambda p=path: enn_nb.convert(p, p.parent / "o.pt"),
               base.marker(), timeout=60)
    path = base.fresh("safetensors")
    data = bytearray(path.read_bytes())
    data[:8] = struct.pack("<Q", 99 * 1024 * 1024)
    path.write_bytes(bytes(data))
    yield Case("bombs", "safetensors-header-length", _load(path), base.marker())


def _truncated(base: Base, kind: str, rng: random.Random) -> Iterator[tuple[str, Path]]:
    path = base.fresh(kind)
    if kind == "dcp":
        file = rng.choice(sorted(p for p in path.iterdir()))
    else:
        file = path
    size = file.stat().st_size
    cut = rng.randrange(0, max(1, size))
    with open(file, "r+b") as fh:
        fh.truncate(cut)
    yield f"{kind}/{file.name}@{cut}", path


def truncation(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    for i in range(n):
        kind = ("pt", "safetensors", "dcp")[i % 3]
        for name, path in _truncated(base, kind, rng):
            yield Case("truncation", name, _load(path), base.marker(), check=base.loads_right)


def byte_flips(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    for i in range(n):
        kind = ("pt", "safetensors", "dcp")[i % 3]
        path = base.fresh(kind)
        file = rng.choice(sorted(path.iterdir())) if kind == "dcp" else path
        data = bytearray(file.read_bytes())
        spots = [rng.randrange(len(data)) for _ in range(rng.randint(1, 4))]
        for spot in spots:
            data[spot] ^= 1 << rng.randrange(8)
        file.write_bytes(bytes(data))
        yield Case("byte_flips", f"{kind}/{file.name}@{spots}", _load(path), base.marker(), check=base.loads_right)


_HEADER_MUTATIONS: list[tuple[str, Callable[[dict, str, random.Random], None]]] = [
    ("shape-null", lambda h, k, r: h[k].update(shape=None)),
    ("shape-string", lambda h, k, r: h[k].update(shape="4,4")),
    ("shape-negative", lambda h, k, r: h[k].update(shape=[-1, 4])),
    ("shape-huge", lambda h, k, r: h[k].update(shape=[1 << 40, 1 << 40])),
    ("dtype-unknown", lambda h, k, r: h[k].update(dtype="F128")),
    ("dtype-other-width", lambda h, k, r: h[k].update(dtype="F16")),
    ("offsets-reversed", lambda h, k, r: h[k].update(data_offsets=h[k]["data_offsets"][::-1])),
    ("offsets-float", lambda h, k, r: h[k].update(data_offsets=[0.5, 64.5])),
    ("offsets-outside", lambda h, k, r: h[k].update(data_offsets=[0, 1 << 40])),
    ("entry-list", lambda h, k, r: h.__setitem__(k, [1, 2])),
    ("entry-null", lambda h, k, r: h.__setitem__(k, None)),
    ("metadata-list", lambda h, k, r: h.__setitem__("__metadata__", ["x"])),
    ("metadata-nested", lambda h, k, r: h["__metadata__"].update(x={"y": 1})),
    ("manifest-not-json", lambda h, k, r: h["__metadata__"].update({"enn_nb.manifest": "{not json"})),
    ("manifest-number", lambda h, k, r: h["__metadata__"].update({"enn_nb.manifest": 12})),
    ("drop-entry", lambda h, k, r: h.pop(k)),
    ("extra-entry", lambda h, k, r: h.__setitem__("ghost", dict(h[k]))),
]


def header_fuzz(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    for i in range(max(n, len(_HEADER_MUTATIONS))):
        name, mutate = _HEADER_MUTATIONS[i % len(_HEADER_MUTATIONS)]
        path = base.fresh("safetensors")
        data = path.read_bytes()
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + length])
        key = rng.choice(sorted(k for k in header if k != "__metadata__"))
        mutate(header, key, rng)
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:])
        yield Case("header_fuzz", f"{name}/{key}", _load(path), base.marker(), check=base.loads_right)


def overwrite_targets(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    model, opt = base.model, base.opt
    where = base.root / f"overwrite{base.marker().name}"
    where.mkdir()
    # a file where a DCP directory would go
    lin = where / "lin"
    lin.write_text("my notes\n")
    yield Case("overwrite_targets", "save-dcp-over-file", lambda: enn_nb.save(model, lin), base.marker(),
               victims={lin: snapshot(lin)})
    yield Case("overwrite_targets", "convert-onto-file", lambda: cli(["convert", str(base.pt), str(lin)]), base.marker(),
               victims={lin: snapshot(lin)})
    fifo = where / "null"
    os.mkfifo(fifo)
    yield Case("overwrite_targets", "convert-onto-fifo", lambda: cli(["convert", str(base.pt), str(fifo)]), base.marker(),
               victims={fifo: snapshot(fifo)}, timeout=20)
    fifo_pt = where / "f.pt"
    os.mkfifo(fifo_pt)
    yield Case("overwrite_targets", "save-pt-onto-fifo", lambda: enn_nb.save(model, fifo_pt), base.marker(),
               victims={fifo_pt: snapshot(fifo_pt)}, timeout=20)
    project = where / "project"
    project.mkdir()
    (project / "thesis.tex").write_text("\\chapter{one}\n")
    for fmt in ("dcp", "pt", "safetensors"):
        yield Case("overwrite_targets", f"save-{fmt}-over-user-dir",
                   lambda f=fmt: enn_nb.save(model, project, format=f), base.marker(),
                   victims={project: snapshot(project)})
    out = where / "out"
    (out / "model.pt2").mkdir(parents=True)
    (out / "model.pt2" / "thesis.tex").write_text("do not delete\n")
    yield Case("overwrite_targets", "export-over-user-dir",
               lambda: enn_nb.export(nn.Linear(2, 2), "pt2", out_dir=out, example_inputs=torch.randn(2, 2),
                                     isolate=False, cache=False),
               base.marker(), victims={out / "model.pt2": snapshot(out / "model.pt2")}, timeout=120)
    out2 = where / "out2"
    out2.mkdir()
    os.mkfifo(out2 / "model.pt2")
    yield Case("overwrite_targets", "export-onto-fifo",
               lambda: enn_nb.export(nn.Linear(2, 2), "pt2", out_dir=out2, example_inputs=torch.randn(2, 2),
                                     isolate=False, cache=False),
               base.marker(), victims={out2 / "model.pt2": snapshot(out2 / "model.pt2")}, timeout=120)
    # a symlink is replaced as a link: its target stays
    target = base.outside_victim()
    link = where / "link.pt"
    link.symlink_to(target)
    yield Case("overwrite_targets", "save-through-symlink", lambda: enn_nb.save(model, link), base.marker(),
               victims={target: snapshot(target)}, check=lambda m: link.is_file() and not link.is_symlink())
    # metadata that would exceed the limits: refused before the old checkpoint is replaced
    for kind in ("pt", "safetensors"):
        old = base.fresh(kind)
        yield Case("overwrite_targets", f"{kind}-oversized-metadata",
                   lambda p=old: enn_nb.save(model, p, metadata={"blob": ["x" * (1 << 20)] * 101}), base.marker(),
                   victims={old: snapshot(old)}, timeout=120)
    # disk full (the file size limit of the child process: EFBIG, the same short write as ENOSPC)
    for kind in ("pt", "safetensors", "dcp"):
        old = base.fresh(kind)
        yield Case("overwrite_targets", f"{kind}-file-size-limit", lambda p=old: _save_with_fsize_limit(model, p),
                   base.marker(), victims={old: snapshot(old)}, timeout=60)


def _save_with_fsize_limit(model: Any, path: Path) -> Any:
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a short write then fails with EFBIG instead of killing us
    big = {"w": torch.zeros(1 << 20), **model.state_dict()}
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    try:
        return enn_nb.save(big, path, spec=enn_nb.ModelSpec())
    finally:
        leftovers = [p for p in path.parent.iterdir() if ".enn-tmp-" in p.name]
        if leftovers:
            raise AssertionError(f"temporary files left behind: {leftovers}")


#: The Victim's elements that reach its output, by tensor (flat indices): output column ``o`` is scaled by
#: ``scale[o] == o``, so nothing in column 0 changes what the model returns.
_REACHING = {"fc.weight": [o * 4 + i for o in (1, 2, 3) for i in range(4)], "fc.bias": [1, 2, 3], "scale": [1, 2, 3]}


def _negate(path: Path, tensor: str, flat: list[int]) -> None:
    """Flip the sign bit of elements ``flat`` of the Victim's ``tensor`` inside an exported .pt2 or .onnx."""

    def flip(raw: bytes, itemsize: int) -> bytes:
        out = bytearray(raw)
        for index in flat:  # little-endian floats: the sign bit is the top bit of an element's last byte
            out[index * itemsize + itemsize - 1] ^= 0x80
        return bytes(out)

    if path.suffix == ".onnx":
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(path), load_external_data=False)
        for init in model.graph.initializer:  # the exporter may rename `scale` (a folded cast): find it by value
            values = numpy_helper.to_array(init)
            if init.name == tensor or (tensor == "scale" and values.tolist() == [0.0, 1.0, 2.0, 3.0]):
                break
        else:
            raise AssertionError(f"{path.name} holds no initializer for `{tensor}`")
        data = path.read_bytes()
        assert data.count(init.raw_data) == 1, f"`{tensor}`'s bytes are not unique in {path.name}"
        path.write_bytes(data.replace(init.raw_data, flip(init.raw_data, values.itemsize)))
        return
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    cfg_name = next(k for k in members if k.endswith("/model_weights_config.json"))
    meta = json.loads(members[cfg_name])["config"][tensor]
    member = cfg_name.rsplit("/", 1)[0] + "/" + meta["path_name"]
    numel = math.prod(int(d["as_int"]) for d in meta["tensor_meta"]["sizes"])
    members[member] = flip(members[member], len(members[member]) // numel)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def artifacts(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    """Exported artifacts and their sidecars: pickles inside .pt2, AOTI without trust, escaping paths, build-trt."""
    from enn_nb.engine import sidecar as sc

    src = base.root / "exported"
    if not (src / "model.pt2").exists():
        enn_nb.export(Victim(), ["pt2", "onnx", "tensorrt"], out_dir=src, example_inputs=torch.randn(2, 4),
                      isolate=False, cache=False)

    def fresh() -> Path:
        base.counter += 1
        out = base.root / f"art{base.counter:05d}"
        shutil.copytree(src, out)
        return out

    reseal = _codepaths.reseal  # the same resealing as the issue-21 families (imported at the end of this module)

    def rewrite_zip(path: Path, edit: Callable[[dict[str, bytes]], None]) -> None:
        with zipfile.ZipFile(path) as zf:
            members = {i.filename: zf.read(i) for i in zf.infolist()}
        edit(members)
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)

    def pickled_weight(marker: Path) -> Callable[[dict[str, bytes]], None]:
        def edit(m: dict[str, bytes]) -> None:
            cfg_name = next(k for k in m if k.endswith("_weights_config.json"))
            cfg = json.loads(m[cfg_name])
            first = next(iter(cfg["config"]))
            cfg["config"][first]["use_pickle"] = True
            m[cfg_name] = json.dumps(cfg).encode()
            m[cfg_name.rsplit("/", 1)[0] + "/" + cfg["config"][first]["path_name"]] = evil_torch_pickle(marker)
        return edit

    def added(member: str, marker: Path) -> Callable[[dict[str, bytes]], None]:
        def edit(m: dict[str, bytes]) -> None:
            root = next(iter(m)).split("/", 1)[0]
            m[f"{root}/{member}"] = evil_torch_pickle(marker)
        return edit

    def sample_inputs(marker: Path) -> Callable[[dict[str, bytes]], None]:
        def edit(m: dict[str, bytes]) -> None:
            key = next(k for k in m if "/data/sample_inputs/" in k)
            m[key] = evil_torch_pickle(marker)
        return edit

    variants = [("use_pickle-weight", pickled_weight), ("legacy-weights-pt", lambda mk: added("data/weights/model.pt", mk)),
                ("custom-obj", lambda mk: added("data/constants/custom_obj_0", mk)),
                ("opaque-obj", lambda mk: added("data/constants/opaque_obj_0", mk)),
                ("sample-inputs", sample_inputs)]
    for name, make in variants:
        for sealed in (True, False):
            marker = base.marker()
            out = fresh()
            rewrite_zip(out / "model.pt2", make(marker))
            if sealed:
                reseal(out, "model.pt2")
            yield Case("artifacts", f"pt2/{name}/{'resealed' if sealed else 'hash-mismatch'}/verify",
                       lambda o=out: enn_nb.verify(o / "model.pt2"), marker,
                       check=None if sealed else (lambda r: r.status == "failed" and bool(r.problems)))
            yield Case("artifacts", f"pt2/{name}/{'resealed' if sealed else 'hash-mismatch'}/cli",
                       lambda o=out: cli(["verify", str(o / "model.pt2")]), marker)
    # altered weights, resealed: the hashes agree, so the parity check is what must catch it. Each flip
    # negates an element that reaches the output (its sign bit), so the one right outcome is `failed`.
    for name in ("model.pt2", "model.onnx"):
        for i in range(max(2, n // 3)):
            out = fresh()
            tensor = rng.choice(sorted(_REACHING))
            flips = rng.sample(_REACHING[tensor], rng.randint(1, len(_REACHING[tensor])))
            _negate(out / name, tensor, flips)
            reseal(out, name)
            yield Case("artifacts", f"{name}/negated-{tensor}-resealed-{i}", lambda o=out, a=name: enn_nb.verify(o / a),
                       base.marker(), check=lambda r: r.status == "failed")
    # damaged artifacts, resealed: the runtime's own error (a file cut in half) becomes one enn_nb error
    for name in ("model.pt2", "model.onnx"):
        out = fresh()
        data = (out / name).read_bytes()
        (out / name).write_bytes(data[: len(data) // 2])
        reseal(out, name)
        yield Case("artifacts", f"{name}/truncated-resealed", lambda o=out, a=name: enn_nb.verify(o / a), base.marker())
    # an AOTI package (native code) needs explicit trust: forged from the .pt2 so nothing native exists here
    out = fresh()
    disguise_as_aoti(out)
    yield Case("artifacts", "aoti/verify-without-trust", lambda o=out: enn_nb.verify(o / "model.aoti.pt2"), base.marker())
    yield Case("artifacts", "aoti/cli-without-trust", lambda o=out: cli(["verify", str(o / "model.aoti.pt2")]),
               base.marker())
    # sidecar paths escaping the folder
    for rel in ("../outside.bin", "/etc/hostname", "sub/../../outside.bin"):
        victim_file = base.outside_victim()
        out = fresh()
        reseal(out, "model.pt2", lambda d, r=rel: d["files"].append({"path": r, "sha256": "0" * 64, "size": 1,
                                                                        "role": "extra"}))
        yield Case("artifacts", f"sidecar-files/{rel}", lambda o=out: enn_nb.verify(o / "model.pt2"), base.marker(),
                   victims={victim_file: snapshot(victim_file)})
        out = fresh()
        reseal(out, "model.pt2", lambda d, r=rel: d["parity"]["vectors"].update(file=r))
        yield Case("artifacts", f"vectors-file/{rel}", lambda o=out: enn_nb.verify(o / "model.pt2"), base.marker())
    # build-trt from a forged sidecar: no shell text from the sidecar, no output outside its folder
    for field, value in (("artifact", "../evil.engine"), ("artifact", "x; touch PWNED"),
                         ("profile", {"x; rm -rf ~": {"min": [1], "opt": [1], "max": [1]}}),
                         ("profile", {"features": {"min": ["1; touch PWNED"], "opt": [1], "max": [1]}}),
                         ("onnx", "../../outside.onnx"), ("build", {"trtexec": "touch PWNED && trtexec"})):
        out = fresh()
        side = out / f"model.engine{sc.SIDECAR_SUFFIX}"
        data = json.loads(side.read_text())
        if field in ("profile", "build"):
            data["details"][field] = value
        elif field == "onnx":
            data["details"]["onnx"]["file"] = value
        else:
            data[field] = value
        side.write_text(json.dumps(data))
        yield Case("artifacts", f"build-trt/{field}={str(value)[:30]}", lambda s=side: _build_trt_output(s),
                   base.marker(), check=lambda text: "PWNED" not in text and "rm -rf" not in text and ".." not in text)


def disguise_as_aoti(out: Path) -> Path:
    """``out/model.aoti.pt2``: a copy of the exported ``model.pt2`` with a sidecar saying it is an AOTI package."""
    from enn_nb.engine import sidecar as sc

    shutil.copy(out / "model.pt2", out / "model.aoti.pt2")
    side = json.loads((out / f"model.pt2{sc.SIDECAR_SUFFIX}").read_text())
    side.update(backend="aoti", artifact="model.aoti.pt2")
    for entry in side["files"]:
        if entry["path"] == "model.pt2":
            entry["path"] = "model.aoti.pt2"
    (out / f"model.aoti.pt2{sc.SIDECAR_SUFFIX}").write_text(json.dumps(side))
    return out / "model.aoti.pt2"


def _build_trt_output(side: Path) -> str:
    """What ``enn-nb build-trt`` prints (it cannot build here: the command it suggests is the attack surface)."""
    import contextlib

    from enn_nb.surfaces.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["build-trt", str(side)])
    text = err.getvalue()
    if "Traceback" in text or "unexpected" in text:
        from .runner import RawCliError

        raise RawCliError(text[:300])
    if code == 1 and len(text.strip().splitlines()) == 1:
        from .runner import Refused

        raise Refused(text.strip())
    return text


def magics(base: Base, rng: random.Random, n: int) -> Iterator[Case]:
    def shell() -> Any:
        from IPython.core.interactiveshell import InteractiveShell

        ip = InteractiveShell.instance()
        ip.run_line_magic("load_ext", "enn_nb")
        ip.user_ns["x"] = Victim()
        return ip

    pt = base.pt
    for name in ("__builtins__", "get_ipython", "print", "In", "_", "__name__"):
        yield Case("magics", f"enn_load--into-{name}", lambda n=name: shell().run_line_magic("enn_load", f"{pt} --into {n}"),
                   base.marker())
    yield Case("magics", "enn_export--as-get_ipython",
               lambda: shell().run_cell_magic("enn_export", f"{pt} --out {base.root / 'mx'} --as get_ipython",
                                              "backends: [pt2]"), base.marker())
    yield Case("magics", "enn_export-yaml-bomb",
               lambda: shell().run_cell_magic("enn_export", f"{pt} --out {base.root / 'mx'}", _yaml_bomb()), base.marker())
    yield Case("magics", "enn_save-meta-bomb",
               lambda: shell().run_line_magic("enn_save", f"x {base.root / 'mx.pt'} --meta 'a=[&a [1,2], *a]'"),
               base.marker())
    gadget_dir = base.fresh("upstream_dcp")
    marker = base.marker()
    (gadget_dir / ".metadata").write_bytes(function_gadget(marker, *_FUNCTION_ROUTES[0]))
    yield Case("magics", "enn_load-gadget", lambda: shell().run_line_magic("enn_load", f"{gadget_dir} --into m"), marker)


GENERATORS = {name: globals()[name] for name in FAMILIES}

# issue 21, items 1-7 (code that ran without trust, report outputs, the export cache): tests/security/codepaths.py
from . import codepaths as _codepaths  # noqa: E402 - it builds on the helpers above

FAMILIES += tuple(_codepaths.GENERATORS)
GENERATORS.update(_codepaths.GENERATORS)


def generate(family: str, workdir: Path, seed: int, n: int) -> list[Case]:
    rng = random.Random(f"{family}-{seed}")
    base = Base(workdir)
    return list(GENERATORS[family](base, rng, n))


# issue 21, items 8-14: in their own module, registered here like the others
from . import families_state  # noqa: E402 - it imports Base and the gadget helpers from this module

FAMILIES = FAMILIES + families_state.FAMILIES
GENERATORS.update(families_state.GENERATORS)
