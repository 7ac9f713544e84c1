"""Issue 21, items 8-14, checked in this process: a refused DCP metadata file leaves the process's global state
byte-identical (the attack families run every case in a forked child, where a change would go unseen)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

import enn_nb
from enn_nb.errors import UnsafeCheckpointError

from tests.security.families import Base, _body, read_metadata_unsafely, reseal_dcp
from tests.security.families_state import STATE_GADGETS, global_state
from tests.security.runner import Case, run_case


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    return Base(tmp_path_factory.mktemp("state"))


@pytest.mark.parametrize("layout", ["dcp", "upstream_dcp"])
@pytest.mark.parametrize("gadget", sorted(STATE_GADGETS))
def test_a_refused_metadata_file_changes_no_global_state(base: Base, gadget: str, layout: str) -> None:
    path = base.fresh(layout)
    tail = _body(read_metadata_unsafely(base.dcp if layout == "dcp" else base.upstream_dcp))
    (path / ".metadata").write_bytes(STATE_GADGETS[gadget](tail))  # the stealth variant: genuine metadata after
    if layout == "dcp":
        reseal_dcp(path)
    before = global_state()
    for call in (enn_nb.inspect, enn_nb.load):
        with pytest.raises(UnsafeCheckpointError, match="shared by the whole process|shared by the process"):
            call(path)
        assert global_state() == before  # byte for byte
    assert enn_nb.load(base.fresh("dcp")).verified  # a genuine DCP still loads


@pytest.mark.parametrize("gadget", ["PosixPath.exists=set", "layout-cache"])
def test_the_state_gadgets_are_live_under_a_plain_unpickler(base: Base, gadget: str) -> None:
    """In a forked child: ``pickle.loads`` of the same bytes does change what every later load sees."""
    data = STATE_GADGETS[gadget](_body(read_metadata_unsafely(base.dcp)))

    def poisoned() -> bool:
        before = global_state()
        pickle.loads(data)
        return global_state() != before

    assert run_case(Case("live", gadget, poisoned, base.marker(), check=bool))[0] == "correct"


def test_an_enn_nb_dcp_without_its_manifest_ignores_a_parent_meta_json(base: Base, tmp_path: Path) -> None:
    import shutil

    path = tmp_path / "a" / "b" / "m_dcp"
    shutil.copytree(base.dcp, path)
    (path / "enn_nb.manifest.json").unlink()
    (tmp_path / "a" / "meta.json").write_text("{}")  # two folders up
    with pytest.raises(enn_nb.errors.IncompleteCheckpointError, match="written by enn_nb"):
        enn_nb.load(path)
