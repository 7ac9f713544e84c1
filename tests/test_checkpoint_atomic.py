"""Writes are atomic: a crash or an error mid-save leaves the old checkpoint; racing savers leave one."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import enn_nb
from enn_nb.checkpoint import dcp, pt, safetensors_format

from tests.fixtures.models import tiny


NAMES = ("m.pt", "m.safetensors", "m_dcp")

# A child process that saves a model whose value is `fill` everywhere. With `slow`, every tensor
# write is delayed so the parent can kill it in the middle of writing.
CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    import enn_nb
    from enn_nb.checkpoint import dcp, pt, safetensors_format

    paths, fill, slow, go = sys.argv[1].split(","), float(sys.argv[2]), sys.argv[3] == "slow", sys.argv[4]
    rounds = int(sys.argv[5])
    model = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(24)])
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(fill)
    if slow:
        view = safetensors_format.byte_view
        safetensors_format.byte_view = lambda t: (time.sleep(0.15), view(t))[1]
        opener = pt._open_writer
        class Slow:
            def __init__(self, inner): self.inner = inner
            def write_record(self, *a):
                time.sleep(0.15)
                return self.inner.write_record(*a)
            def __getattr__(self, name): return getattr(self.inner, name)
        def slow_open(p):
            w, h = opener(p)
            return Slow(w), h
        pt._open_writer = slow_open
        write = dcp.HashingStream.write
        def slow_write(self, data):
            time.sleep(0.02)
            return write(self, data)
        dcp.HashingStream.write = slow_write
    if go != "-":
        Path(go).with_name(f"ready-{sys.argv[2]}").touch()  # torch imported, model built: waiting on `go`
    while go != "-" and not Path(go).exists():
        time.sleep(0.005)
    for _ in range(rounds):
        for path in paths:
            enn_nb.save(model, path, spec=enn_nb.ModelSpec())
    print("saved", flush=True)
    """
)


def _model(fill: float) -> torch.nn.Module:
    model = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(24)])
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(fill)
    return model


def _fill_of(path: Path) -> float:
    loaded = enn_nb.load(path, model=_model(0.0))
    assert loaded.verified
    values = torch.cat([p.detach().flatten() for p in loaded.model.parameters()]).unique()
    assert values.numel() == 1, "a mix of two checkpoints"
    return float(values[0])


def _child(tmp_path: Path, paths: list[Path], fill: float, slow: bool, go: str = "-", rounds: int = 1) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return subprocess.Popen([sys.executable, str(script), ",".join(map(str, paths)), str(fill),
                             "slow" if slow else "fast", go, str(rounds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _temps(path: Path) -> list[Path]:
    return [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.enn-tmp-")]


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("name", NAMES)
def test_killed_mid_write_leaves_the_old_checkpoint(tmp_path, name):
    path = tmp_path / name
    enn_nb.save(_model(1.0), path, spec=enn_nb.ModelSpec())
    before = enn_nb.inspect(path).content_hash
    proc = _child(tmp_path, [path], 2.0, slow=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the new checkpoint is being written
        temps = _temps(path)
        if temps and (temps[0].is_dir() and any(temps[0].glob("*.distcp")) or temps[0].is_file()
                      and temps[0].stat().st_size > 100_000):
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    else:
        pytest.fail("the child never started writing")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _temps(path), "the partial write happened beside the checkpoint, not in it"
    assert enn_nb.inspect(path).content_hash == before
    assert _fill_of(path) == 1.0


@pytest.mark.parametrize("name", NAMES)
def test_error_mid_write_leaves_the_old_checkpoint_and_no_temp(tmp_path, name, monkeypatch):
    path = tmp_path / name
    old = tiny(seed=1)
    enn_nb.save(old, path)

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if name.endswith(".pt"):
        monkeypatch.setattr(pt, "_write_torch_records", boom)
    elif name.endswith(".safetensors"):
        calls = {"n": 0}
        view = safetensors_format.byte_view

        def failing_view(t):
            calls["n"] += 1
            if calls["n"] == 3:
                boom()
            return view(t)

        monkeypatch.setattr(safetensors_format, "byte_view", failing_view)
    else:
        monkeypatch.setattr(dcp, "_write_manifest", boom)
    with pytest.raises(OSError, match="No space left"):
        enn_nb.save(tiny(seed=2), path)
    assert _temps(path) == []
    loaded = enn_nb.load(path).model
    assert torch.equal(loaded.fc1.weight, old.fc1.weight)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_concurrent_savers_leave_one_complete_checkpoint(tmp_path):
    """Two processes save different models to the same three paths, round after round, at once."""
    paths = [tmp_path / name for name in NAMES]
    go = tmp_path / "go"
    procs = [_child(tmp_path, paths, fill, slow=False, go=str(go), rounds=6) for fill in (3.0, 4.0)]
    ready = [tmp_path / f"ready-{fill}" for fill in (3.0, 4.0)]
    deadline = time.monotonic() + 300  # both import torch, build their model, then wait on the go file
    while not all(r.exists() for r in ready):
        assert all(p.poll() is None for p in procs), [p.communicate()[1] for p in procs if p.poll() is not None]
        assert time.monotonic() < deadline, "the savers never got ready"
        time.sleep(0.05)
    go.touch()  # both start saving together
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    for path in paths:
        assert _fill_of(path) in (3.0, 4.0)
        assert _temps(path) == []
    names = {p.name for p in paths[2].iterdir()}
    shards = {n for n in names if re.fullmatch(r"__0_\d+\.distcp", n)}
    assert shards and names - shards == {".metadata", "enn_nb.manifest.json"}
    assert {f.path for f in enn_nb.inspect(paths[2]).files} == names - {"enn_nb.manifest.json"}
