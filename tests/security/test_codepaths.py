"""Issue 21, items 1-7: the attacks are live without enn_nb's guards, and the guards' own promises.

The families themselves (``pt2_members``, ``report_params``, ``git_config``, ``adapter_imports``,
``report_outputs``, ``cache_links``, ``cache_collisions``) run in ``test_attacks.py`` with the others.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import enn_nb
from enn_nb.errors import ReportError, UnsafeArtifactError

from tests.security.codepaths import (Variant, add_members, aoti_members, constructor_library, hostile_repository,
                                      payload)
from tests.security.runner import Case, run_case


# -- 1: the planted AOTI library runs in torch.export.load; enn_nb never opens the archive ------------------------
@pytest.mark.slow  # torch's AOTI loader imports inductor (~15 s)
def test_a_plain_pt2_with_an_aoti_library_runs_it_in_torch_and_is_refused_by_enn_nb(tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),)), str(path))
    marker = tmp_path / "pwned"
    add_members(path, aoti_members(constructor_library(marker, tmp_path)))

    def torch_loads_it() -> None:
        torch.export.load(str(path))

    assert run_case(Case("live", "torch.export.load", torch_loads_it, marker))[0] == "code"
    marker.unlink()
    from enn_nb.engine.trust import check_pt2_archive

    with pytest.raises(UnsafeArtifactError, match=r"data/aotinductor/x/x\.wrapper\.so.*native code runs"):
        check_pt2_archive(path)
    assert not marker.exists()


# -- 2: papermill writes a non-str value raw into the cell; enn_nb's values are plain ---------------------------
def test_papermill_runs_a_binary_value_and_enn_nb_types_it_as_text(tmp_path: Path) -> None:
    from papermill.translators import translate_parameters

    marker = tmp_path / "pwned"
    cell = translate_parameters("python3", "python", {"title": payload(marker).encode()}, comment="Parameters")
    exec(compile(cell, "<injected>", "exec"), {})  # what the kernel runs
    assert marker.exists()
    marker.unlink()

    from enn_nb.surfaces.reports.catalog import check_parameters, declared_parameters, parse_assignment, resolve_template

    path = resolve_template("checkpoint_report")
    declared = declared_parameters(path)
    text = "!!binary " + base64.b64encode(payload(marker).encode()).decode()
    key, value = parse_assignment(f"title={text}", declared)
    assert (key, value) == ("title", text)  # a text parameter: the characters as typed
    check_parameters(path, {key: value}, declared=declared)
    exec(compile(translate_parameters("python3", "python", {key: value}, comment="Parameters"), "<injected>", "exec"), {})
    assert not marker.exists()
    export = resolve_template("export_report")
    with pytest.raises(ReportError, match=r"`batch_sizes`.*type set"):
        check_parameters(export, dict([parse_assignment("batch_sizes=!!set {1: null}", declared_parameters(export))]))
    with pytest.raises(ReportError, match=r"`backends` .* list or str"):
        check_parameters(export, {"backends": 3})
    assert parse_assignment("title=2024", declared) == ("title", "2024")


# -- 3: git status runs the repository's configured programs; the report reads files --------------------------------
def test_git_status_runs_fsmonitor_and_the_environment_section_does_not(tmp_path: Path) -> None:
    from enn_nb.surfaces.reports.environment import environment, git_commit

    folder, marker = tmp_path / "download", tmp_path / "pwned"
    hostile_repository(folder, marker, "fsmonitor")
    subprocess.run(["git", "-C", str(folder), "status", "--porcelain"], capture_output=True)
    assert marker.exists()
    marker.unlink()
    sha = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_commit([folder]).startswith(f"{sha} on ")
    os.chdir(folder)
    try:
        assert any(row[0] == "git" and row[1].startswith(sha) for row in environment().rows)
    finally:
        os.chdir(tmp_path)
    assert not marker.exists()


def test_git_commit_reads_a_worktree_and_packed_refs(tmp_path: Path) -> None:
    from enn_nb.surfaces.reports.environment import git_commit

    repo = tmp_path / "repo"
    git = ["git", "-C", str(repo), "-c", "user.name=x", "-c", "user.email=x@example.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "trunk", str(repo)], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "one"], check=True)
    subprocess.run([*git, "pack-refs", "--all"], check=True)
    subprocess.run([*git, "worktree", "add", "-q", "-b", "side", str(tmp_path / "wt")], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert not (repo / ".git" / "refs" / "heads" / "trunk").exists()  # only in packed-refs
    assert git_commit([repo]) == f"{sha} on trunk ({repo}; uncommitted changes not checked)"
    assert git_commit([tmp_path / "wt"]).startswith(f"{sha} on side (")
    assert git_commit([tmp_path]).startswith("none:")


# -- 4: a plain import resolves the working folder first; the adapter imports the distribution ---------------------
def test_import_resolves_a_planted_module_and_the_adapter_does_not(tmp_path: Path) -> None:
    pytest.importorskip("enn_torch")
    marker = tmp_path / "pwned"
    (tmp_path / "enn_torch.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    subprocess.run([sys.executable, "-c", "import enn_torch"], cwd=tmp_path, check=True)
    assert marker.exists()
    # enn_nb's load of an upstream checkpoint in such a folder: the family `adapter_imports` (test_attacks.py)


def test_an_adapter_already_imported_from_elsewhere_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("enn_torch")
    import types

    from enn_nb.adapters.installed import import_installed
    from enn_nb.errors import BrokenDependencyError

    fake = types.ModuleType("enn_torch")
    fake.__spec__ = types.SimpleNamespace(origin=str(tmp_path / "enn_torch.py"))  # type: ignore[assignment]
    monkeypatch.setitem(sys.modules, "enn_torch", fake)
    with pytest.raises(BrokenDependencyError, match=r"already imported from .*enn_torch\.py"):
        import_installed("enn_torch", "enn-torch")


# -- 6: hits are clones or read-only links (a real hit: the family `cache_links`) -----------------------------------
def test_clone_file_makes_an_independent_copy_or_says_it_cannot(tmp_path: Path) -> None:
    from enn_nb.engine.cache import clone_file

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"artifact")
    if clone_file(src, dst):
        assert dst.read_bytes() == b"artifact" and dst.stat().st_ino != src.stat().st_ino
    else:
        assert not dst.exists()


# -- 7: the key is the program; a hit is re-run -------------------------------------------------------------
def test_a_refused_hit_is_converted_anew_and_says_so(tmp_path: Path, isolated_export_cache: Path) -> None:
    """Another model's artifact under this model's key (planted, or a collision): re-run, refused, replaced."""
    import json
    import shutil

    from enn_nb.engine import cache
    from enn_nb.engine import sidecar as sc

    kwargs = {"example_inputs": torch.randn(2, 4), "isolate": False}
    genuine = enn_nb.export(Variant(), "pt2", out_dir=tmp_path / "a", **kwargs)["pt2"]
    key = sc.read(genuine.sidecar)["cache_key"]
    evil = enn_nb.export(Variant(act=torch.relu), "pt2", out_dir=tmp_path / "evil", cache=False, **kwargs)["pt2"]
    store = cache.store_dir(key)
    shutil.rmtree(store)
    shutil.copytree(tmp_path / "evil", store)
    data = json.loads((store / "model.pt2.enn.json").read_text())
    data["cache_key"] = key
    (store / "model.pt2.enn.json").write_text(json.dumps(data))
    again = enn_nb.export(Variant(), "pt2", out_dir=tmp_path / "b", **kwargs)["pt2"]
    assert again.status == "ok" and not again.cached
    assert any("cached artifact under this export's key was refused" in note and "does not reproduce" in note
               for note in again.notes)
    program = torch.export.load(str(again.artifact)).module()
    x = torch.randn(3, 4)
    assert torch.allclose(program(x), Variant()(x), atol=1e-6) and evil.status == "ok"


def test_verify_names_another_models_program_under_a_resealed_sidecar(tmp_path: Path) -> None:
    import json
    import shutil

    from enn_nb.engine import sidecar as sc

    kwargs = {"example_inputs": torch.randn(2, 4), "isolate": False, "cache": False}
    enn_nb.export(Variant(), "pt2", out_dir=tmp_path / "a", **kwargs)
    enn_nb.export(Variant(act=torch.relu), "pt2", out_dir=tmp_path / "b", **kwargs)
    for name in ("model.pt2", "model.vectors.safetensors"):
        shutil.copy(tmp_path / "b" / name, tmp_path / "a" / name)
    side = tmp_path / "a" / "model.pt2.enn.json"
    data = json.loads(side.read_text())
    for entry in data["files"]:
        path = tmp_path / "a" / entry["path"]
        entry.update(sha256=sc.sha256_file(path), size=path.stat().st_size)
    data["parity"]["vectors"]["sha256"] = sc.sha256_file(tmp_path / "a" / "model.vectors.safetensors")
    side.write_text(json.dumps(data))
    result = enn_nb.verify(tmp_path / "a" / "model.pt2")
    assert result.parity["status"] == "passed"  # the outputs match their (swapped) vectors...
    assert result.status == "failed" and not result.ok  # (never "passed" beside a problem)
    assert any("program_sha256" in problem for problem in result.problems)  # ...the program is not the recorded one
