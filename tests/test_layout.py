"""The package layout: old module paths still work, no import circles, no upward imports, a light ``import enn_nb``."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import enn_nb
from enn_nb import _moved


@pytest.mark.parametrize("old", sorted(_moved.MOVED))
def test_an_old_module_path_gives_the_same_module_as_the_new_one(old: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, old, raising=False)  # an earlier import under the old name would skip the warning
    with pytest.warns(DeprecationWarning, match="moved to"):
        via_old = importlib.import_module(old)
    new = importlib.import_module(_moved.MOVED[old])
    assert via_old is new
    assert new.__spec__.name == _moved.MOVED[old]  # the alias does not rename the real module


def test_a_module_inside_a_moved_package_follows_it() -> None:
    assert _moved.new_name("enn_nb.notebook.wizard_state") == "enn_nb.surfaces.notebook.wizard_state"
    assert _moved.new_name("enn_nb.reports.cli") == "enn_nb.surfaces.cli.report"  # the specific entry wins
    assert _moved.new_name("enn_nb.engine.pipeline") is None
    import enn_nb.notebook.wizard_state as old
    import enn_nb.surfaces.notebook.wizard_state as new

    assert old is new


def test_old_command_line_module_paths_still_run() -> None:
    for module in ("enn_nb.cli", "enn_nb.surfaces.cli"):
        done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("enn-nb ")


# -- the import graph ------------------------------------------------------------------------------------
PACKAGE = Path(enn_nb.__file__).parent

#: The floors, lowest first; a module may import its own floor and those below, never one above.
#: `enn_nb` itself is the public facade on top (it reaches the surfaces lazily).
FLOORS = {"model": 1, "checkpoint": 2, "engine": 3, "adapters": 4, "reference": 4, "surfaces": 5}


def _floor(module: str) -> int:
    if module == "enn_nb":
        return 6
    return FLOORS.get(module.split(".")[1], 0)  # 0: errors, _optional, _registry, _fs, table, ...


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _imports() -> dict[str, set[str]]:
    """module -> the enn_nb modules it imports anywhere: at the top, in functions, under TYPE_CHECKING."""
    modules = _modules()

    def known(name: str) -> str | None:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name if name in modules else None

    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(filter(None, (known(alias.name) for alias in node.names)))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                for alias in node.names:  # `from enn_nb.model import signature` imports a module
                    targets.update(filter(None, [known(f"{prefix}.{alias.name}") if f"{prefix}.{alias.name}" in modules
                                                 else known(prefix)]))
        targets.discard(name)
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles_among_enn_nb_modules() -> None:
    # Every import counts, also those inside functions and under TYPE_CHECKING: a circle there is still
    # two modules that each need the other.
    assert _cycles(_imports()) == []


def test_the_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_a_floor_above_its_own() -> None:
    upward = sorted(f"{m} -> {t}" for m, targets in _imports().items() for t in targets if _floor(t) > _floor(m))
    assert upward == []


def test_import_enn_nb_stays_light() -> None:
    code = "import sys; import enn_nb; print(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                timeout=120).stdout.split())
    ours = {m for m in loaded if m.split(".")[0] == "enn_nb"}
    assert ours == {"enn_nb", "enn_nb._moved", "enn_nb._registry", "enn_nb._version", "enn_nb.errors",
                    "enn_nb.model", "enn_nb.model.spec"}
    heavy = {"torch", "numpy", "safetensors", "jsonschema", "yaml", "IPython", "ipywidgets", "onnx", "tensorflow"}
    assert not heavy & {m.split(".")[0] for m in loaded}


def test_load_ext_stays_light() -> None:
    # `%load_ext enn_nb` imports the magics module: the engine's vocabulary, but no torch, no torch.export
    # machinery, no JSON-schema compiler and no package-metadata scan (importlib.metadata pulls email, zipfile...)
    code = "import sys; import enn_nb.surfaces.notebook.magics; print(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                timeout=120).stdout.split())
    assert not {"torch", "numpy", "importlib.metadata", "email", "enn_nb.engine.capture", "fastjsonschema", "jsonschema",
                "enn_nb.engine.isolate", "enn_nb.checkpoint.api"} & loaded
