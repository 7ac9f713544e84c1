"""The attack suite: every family of hostile input, with a fixed seed, each case in a forked child.

Each case must end as a clean enn_nb error (one line, no traceback) or a correct result, with no
marker file created and every victim file byte-identical. ``benchmarks/attack_campaign.py`` runs
the same generators at a larger scale and prints the table.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import enn_nb
from enn_nb.errors import CheckpointWriteError

from tests.security.families import FAMILIES, Base, evil_torch_pickle, function_gadget, generate, reseal_dcp, victim
from tests.security.runner import Case, run_case

SEED = 1234
FUZZ_CASES = 9  # per fuzzing family here; the campaign runs many more


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # forked children must not inherit busy OpenMP pools
    yield tmp_path_factory.mktemp("attacks")
    torch.set_num_threads(threads)  # the rest of the session runs as before


@pytest.mark.parametrize("family", FAMILIES)
def test_family_runs_no_code_and_loses_no_data(family: str, workdir: Path) -> None:
    cases = generate(family, workdir / family, SEED, FUZZ_CASES)
    assert cases, f"the `{family}` generator produced nothing"
    bad = []
    for case in cases:
        outcome, detail = run_case(case)
        if outcome not in ("clean", "correct"):
            bad.append(f"{case!r}: {outcome}: {detail}")
    assert not bad, "\n".join(bad)


# -- the attacks are live: without enn_nb's guards they do run code -------------------------------------
def test_the_dcp_gadget_runs_code_through_an_unrestricted_unpickler(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    pickle.loads(function_gadget(marker, "torch.distributed.checkpoint.filesystem", "FileSystemReader.read_metadata"))
    assert marker.read_text() == "pwned"


def test_the_dcp_gadget_runs_code_through_torchs_own_reader(tmp_path: Path) -> None:
    """The same directory that enn_nb refuses executes the payload in ``torch.distributed.checkpoint.load``."""
    base = Base(tmp_path / "w")
    path = base.fresh("upstream_dcp")
    marker = base.marker()
    genuine = pickle.dumps(pickle.loads((base.dcp / ".metadata").read_bytes()), protocol=3)[2:-1]
    (path / ".metadata").write_bytes(function_gadget(marker, "torch.distributed.checkpoint.metadata", "Metadata.__init__",
                                                     genuine))

    def torch_reads_it() -> None:
        import torch.distributed.checkpoint as dcp

        state = {"model": {k: torch.empty_like(v) for k, v in base.model.state_dict().items()}}
        dcp.load(state, storage_reader=dcp.FileSystemReader(path), no_dist=True)

    assert run_case(Case("live", "torch-reader", torch_reads_it, marker))[0] == "code"
    assert run_case(Case("live", "enn_nb", lambda: enn_nb.load(path), base.marker()))[0] == "clean"


def test_a_bytes_entry_payload_runs_code_under_weights_only_false(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(RuntimeError, match="magic number"):  # the payload runs while torch reads the header
        torch.load(io.BytesIO(evil_torch_pickle(marker)), weights_only=False)
    assert marker.exists()


def test_a_stealth_gadget_would_otherwise_load_as_verified(tmp_path: Path) -> None:
    """The stealth variant returns genuine metadata: enn_nb refuses it although every hash matches."""
    base = Base(tmp_path / "w")
    path = base.fresh("dcp")
    genuine = pickle.dumps(pickle.loads((base.dcp / ".metadata").read_bytes()), protocol=3)[2:-1]
    marker = base.marker()
    (path / ".metadata").write_bytes(function_gadget(marker, "torch.distributed.checkpoint.filesystem",
                                                     "FileSystemReader.read_metadata", genuine))
    reseal_dcp(path)
    outcome, detail = run_case(Case("live", "stealth", lambda: enn_nb.load(path), marker))
    assert outcome == "clean" and "FileSystemReader.read_metadata.__class__" in detail and not marker.exists()


# -- disk full, for real ------------------------------------------------------------------------------------
def _small_tmpfs(where: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True)
    return done.returncode == 0


@pytest.mark.parametrize("name", ["m.pt", "m.safetensors", "m_dcp"])
def test_disk_full_raises_keeps_the_old_checkpoint_and_no_temp(tmp_path: Path, name: str) -> None:
    """On a 2 MiB tmpfs (as root) or, where mounting is not allowed, under RLIMIT_FSIZE (see families.py)."""
    disk = tmp_path / "disk"
    if not _small_tmpfs(disk):
        case = next(c for c in generate("overwrite_targets", tmp_path / "w", SEED, 1)
                    if c.name == f"{ {'m.pt': 'pt', 'm.safetensors': 'safetensors', 'm_dcp': 'dcp'}[name]}-file-size-limit")
        assert run_case(case)[0] == "clean"
        return
    try:
        model, opt = victim()
        path = disk / name
        enn_nb.save(model, path)
        before = {p.name: p.read_bytes() for p in ([path] if path.is_file() else path.iterdir())}
        with pytest.raises(CheckpointWriteError, match="No space left on device") as info:
            enn_nb.save({"big": torch.zeros(1 << 20), **model.state_dict()}, path, spec=enn_nb.ModelSpec())
        assert isinstance(info.value, OSError) and info.value.errno == 28
        after = {p.name: p.read_bytes() for p in ([path] if path.is_file() else path.iterdir())}
        assert after == before
        assert sorted(p.name for p in disk.iterdir()) == [name]  # no temporary file or directory left
        assert enn_nb.load(path).verified
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# -- housekeeping ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["m.pt", "m_dcp"])
def test_stale_temporaries_of_killed_saves_are_swept_by_the_next_save(tmp_path: Path, name: str) -> None:
    model, _ = victim()
    path = tmp_path / name
    enn_nb.save(model, path)
    dead = _dead_pid()
    stale_file = tmp_path / f".{name}.enn-tmp-{dead}xdeadbeef0000"
    stale_dir = tmp_path / f".{name}.enn-tmp-old-{dead}xdeadbeef0001"
    live = tmp_path / f".{name}.enn-tmp-{os.getppid()}xfeedfeed0000"  # a running writer's: kept
    other = tmp_path / f".other.pt.enn-tmp-{dead}xdeadbeef0002"  # another checkpoint's: kept
    stale_file.write_bytes(b"x" * 1000)
    stale_dir.mkdir()
    (stale_dir / "shard").write_bytes(b"y")
    live.write_bytes(b"z")
    other.write_bytes(b"w")
    past = time.time() - 5
    for p in (stale_file, stale_dir, live, other):
        os.utime(p, (past, past))
    enn_nb.save(model, path)
    assert not stale_file.exists() and not stale_dir.exists()
    assert live.exists() and other.exists()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
