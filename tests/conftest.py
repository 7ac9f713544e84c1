"""Shared fixtures: one trained reference model per test session, project-local caches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Compile caches stay inside the project's ignored .cache folder, also when pytest runs outside make.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "inductor"))
os.environ.setdefault("MPLCONFIGDIR", str(ROOT / ".cache" / "matplotlib"))
# torch writes precompiled C++ headers under the system temp folder whatever the cache dir says.
os.environ.setdefault("TORCHINDUCTOR_CPP_CACHE_PRECOMPILE_HEADERS", "0")


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
