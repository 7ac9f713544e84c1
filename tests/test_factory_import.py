"""``--model module:factory`` imports the user's module: its top-level saves and exports never run away.

The exact case of issue 22: the README's Tagger block saved as ``tagger.py`` (it saves and exports at
module level), then ``enn-nb export tagger.safetensors --model tagger:Tagger -b onnx,pt2 -o exports``.
Before, each export worker re-imported the module, re-ran its export and started more workers (98
processes, the checkpoint rewritten with fresh weights). Every CLI run here has a timeout, and processes
left in the test's folder are killed by id, so a regression fails instead of hanging.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_readme import readme_cells

ENN_NB = [sys.executable, "-m", "enn_nb.surfaces.cli"]


def _tagger_block() -> str:
    block = next(cell for cell in readme_cells() if "class Tagger" in cell)
    assert "import enn_nb" in block, "the README's Tagger block uses enn_nb without importing it"
    return block


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pids_in(folder: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if int(proc.name) != os.getpid() and Path(os.readlink(proc / "cwd")) == folder:
                pids.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return pids


def _kill_left_in(folder: Path, grace: float = 20.0) -> list[str]:
    """Kill every process but this one still working in ``folder`` after ``grace`` seconds: what a runaway left.

    The grace is for the CLI's forkserver, which exits on its own once the CLI has gone but, with torch
    preloaded, can take a few seconds to shut down; a runaway export keeps working far longer.
    """
    deadline = time.monotonic() + grace
    while _pids_in(folder) and time.monotonic() < deadline:
        time.sleep(0.2)
    killed = []
    for pid in _pids_in(folder):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue
        killed.append(f"{pid}: {cmdline.strip()[:200]}")
    return killed


def _cli(args: list[str], cwd: Path, timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), "."]), **env}
    try:
        return subprocess.run([*ENN_NB, *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        left = _kill_left_in(cwd, grace=0)
        pytest.fail(f"`enn-nb {' '.join(args)}` ran past {timeout:.0f} s; killed {len(left)} process(es) it left")


def _save_checkpoint(block: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tagger.safetensors`` as the block writes it (its export line left out: only the checkpoint is needed)."""
    monkeypatch.chdir(folder)
    exec(compile(block.replace("enn_nb.export(", "(lambda *a, **k: None)("), "tagger-setup", "exec"), {})
    return folder / "tagger.safetensors"


@pytest.mark.slow
def test_the_readme_tagger_module_with_top_level_save_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    block = _tagger_block()
    (tmp_path / "tagger.py").write_text(block + "\n", encoding="utf-8")
    ckpt = _save_checkpoint(block, tmp_path, monkeypatch)
    before = _sha(ckpt)

    done = _cli(["export", "tagger.safetensors", "--model", "tagger:Tagger", "-b", "onnx,pt2", "-o", "exports"],
                tmp_path, timeout=120)

    assert _sha(ckpt) == before, "importing the factory's module rewrote the checkpoint"
    assert not (tmp_path / "exports").exists()
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "`enn_nb.save` refused (from tagger.py:" in lines[0]
    assert 'if __name__ == "__main__":' in lines[0]
    assert _kill_left_in(tmp_path) == []


@pytest.mark.slow
def test_a_guarded_factory_module_exports_and_its_workers_never_import_it(tmp_path, monkeypatch):
    block = _tagger_block()
    head, _, script = block.partition("tagger = Tagger()")
    imports = tmp_path / "imports.txt"
    guarded = (head + "import os\n\nwith open(os.environ['TAGGER_IMPORTS'], 'a') as fh:\n    fh.write(f'{os.getpid()}\\n')\n\n"
               + 'if __name__ == "__main__":\n' + "".join(f"    {line}\n" for line in ("tagger = Tagger()" + script).splitlines()))
    (tmp_path / "tagger.py").write_text(guarded, encoding="utf-8")
    ckpt = _save_checkpoint(block, tmp_path, monkeypatch)
    before = _sha(ckpt)

    done = _cli(["export", "tagger.safetensors", "--model", "tagger:Tagger", "-b", "onnx,pt2", "-o", "exports"],
                tmp_path, timeout=240, TAGGER_IMPORTS=str(imports))

    assert done.returncode == 0, done.stderr
    assert "2 verified" in done.stderr
    assert _sha(ckpt) == before
    # only the CLI itself imported the module: each worker got the captured program, not the model
    assert len(imports.read_text().split()) == 1
    assert _kill_left_in(tmp_path) == []


def test_a_save_or_export_inside_an_export_worker_is_refused(tmp_path, monkeypatch):
    import torch

    import enn_nb
    from enn_nb._reentry import WORKER_ENV
    from enn_nb.engine.warm import child_environment
    from enn_nb.errors import SideEffectError

    assert child_environment()[WORKER_ENV] == "1"  # both worker kinds take this environment
    monkeypatch.setenv(WORKER_ENV, "1")
    model = torch.nn.Linear(3, 2)
    with pytest.raises(SideEffectError) as info:
        enn_nb.save(model, tmp_path / "m.safetensors")
    assert "inside an enn_nb export worker" in str(info.value) and '`if __name__ == "__main__":`' in str(info.value)
    assert info.value.origin.startswith("test_factory_import.py:")
    with pytest.raises(SideEffectError, match="`enn_nb.export` refused"):
        enn_nb.export(model, ["onnx"], out_dir=tmp_path / "exports", example_inputs=torch.randn(2, 3))
    assert list(tmp_path.iterdir()) == []


def test_importing_a_factory_refuses_writes_and_leaves_no_half_imported_module(tmp_path, monkeypatch):
    from enn_nb.errors import SideEffectError
    from enn_nb.surfaces.factory import import_factory

    (tmp_path / "writes_on_import.py").write_text(
        "import torch\nimport enn_nb\n\nclass Net(torch.nn.Linear):\n    def __init__(self):\n        super().__init__(3, 2)\n\n"
        "enn_nb.save(Net(), 'net.pt')\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SideEffectError, match=r"imported `writes_on_import` for `--model writes_on_import:Net`"):
        import_factory("writes_on_import:Net")
    assert "writes_on_import" not in sys.modules
    assert not (tmp_path / "net.pt").exists()
