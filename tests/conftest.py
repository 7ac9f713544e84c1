"""Shared fixtures: one trained reference model per test session, project-local compile caches, an empty
export cache for every test."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Compile caches stay inside the project's ignored .cache folder, also when pytest runs outside make.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "inductor"))
os.environ.setdefault("MPLCONFIGDIR", str(ROOT / ".cache" / "matplotlib"))
# torch writes precompiled C++ headers under the system temp folder whatever the cache dir says.
os.environ.setdefault("TORCHINDUCTOR_CPP_CACHE_PRECOMPILE_HEADERS", "0")
# The export cache is never the shared one (`make` points ENN_NB_CACHE_DIR at .cache/enn_nb): an empty
# store for the session, replaced per test by `isolated_export_cache`. It is an environment variable,
# so isolated export workers, report kernels and CLI subprocesses started by a test use it too.
_SESSION_CACHE = Path(tempfile.mkdtemp(prefix="enn-nb-test-cache-"))
os.environ["ENN_NB_CACHE_DIR"] = str(_SESSION_CACHE)


@pytest.fixture(autouse=True)
def isolated_export_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test starts with an empty export cache: a test that claims a conversion really converts."""
    path = tmp_path_factory.mktemp("enn-cache")
    monkeypatch.setenv("ENN_NB_CACHE_DIR", str(path))
    return path


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def trained_model():
    """The reference model trained with seed 0 (Scaler and calibration fitted). Do not mutate it."""
    from enn_nb.reference import train_reference

    return train_reference(seed=0)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """A folder kept after the run for things worth looking at (screenshots, reports)."""
    path = ROOT / "out" / "test-artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def ip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The shell with ``%load_ext enn_nb`` done, cwd in ``tmp_path``; unloaded and its new names removed after.

    The export cache is empty for each test (``isolated_export_cache``), so every export converts.
    """
    from tests.fixtures.magics import get_shell

    shell = get_shell()
    monkeypatch.chdir(tmp_path)
    before = set(shell.user_ns)
    shell.run_line_magic("load_ext", "enn_nb")
    try:
        yield shell
    finally:
        shell.run_line_magic("unload_ext", "enn_nb")
        for name in set(shell.user_ns) - before:
            del shell.user_ns[name]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API server (``python -m moto.server``) on a free 127.0.0.1 port, for the session."""
    from tests.fixtures.s3 import moto_server

    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    """A new empty bucket on the session's S3 server: ``.url(key)``, ``.options`` (s3fs storage options)."""
    from types import SimpleNamespace

    from tests.fixtures.s3 import new_bucket, options

    bucket = new_bucket(s3_endpoint)
    return SimpleNamespace(bucket=bucket, endpoint=s3_endpoint, options=options(s3_endpoint),
                           url=lambda key="": f"s3://{bucket}/{key}".rstrip("/"))
