"""Loading goes through the model's own load_state_dict in every format: load hooks, extra state, the restore check."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import enn_nb
from enn_nb.errors import RestoreCheckError, StateDictMismatchError

FORMATS = {"pt": "m.pt", "safetensors": "m.safetensors", "dcp": "m_dcp"}


class Calibrated(nn.Module):
    """A buffer a load hook resizes, and a non-tensor mode only `set_extra_state` restores."""

    in_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.register_buffer("table", torch.zeros(1, dtype=torch.float64))
        self.mode = "none"
        self.register_load_state_dict_pre_hook(self._resize_table)

    def _resize_table(self, module, state_dict, prefix, *args) -> None:
        incoming = state_dict.get(prefix + "table")
        if incoming is not None and incoming.shape != self.table.shape:
            self.table = torch.zeros_like(incoming)

    def fit(self, values: torch.Tensor) -> None:
        self.table = values.to(torch.float64)
        self.mode = "shift"

    def get_extra_state(self) -> dict:
        return {"mode": self.mode}

    def set_extra_state(self, state: dict) -> None:
        self.mode = state["mode"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        if self.mode == "shift":
            y = y + self.table.sum().to(y.dtype)
        return y


def _fitted() -> Calibrated:
    torch.manual_seed(0)
    model = Calibrated()
    model.fit(torch.arange(5.0) / 3)
    return model


@pytest.fixture
def calibrated_builder():
    enn_nb.register_builder("tests.calibrated", replace=True)(lambda spec: Calibrated())
    yield "tests.calibrated"
    from enn_nb.model.spec import _builders

    _builders.unregister("tests.calibrated")


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_hooks_and_extra_state_run_in_every_format(fmt, tmp_path, calibrated_builder):
    model = _fitted()
    x = torch.randn(3, 4)
    expected = model(x)
    path = tmp_path / FORMATS[fmt]
    manifest = enn_nb.save(model, path, spec=enn_nb.ModelSpec(builder=calibrated_builder, in_dim=4))
    assert manifest.extra_state == {"_extra_state": {"mode": "shift"}}
    assert manifest.self_check["call"] == "forward" and manifest.self_check["inputs"][0]["shape"] == [2, 4]

    for loaded in (enn_nb.load(path, model=Calibrated()), enn_nb.load(path)):
        restored = loaded.model
        assert restored.mode == "shift"  # set_extra_state ran (DCP included)
        assert restored.table.shape == (5,) and torch.equal(restored.table, model.table)  # the hook resized it
        assert torch.equal(restored(x), expected)
        assert loaded.restore_check == "passed" and loaded.restore.max_abs_err == 0.0
        assert loaded.shape_mismatches == {} and loaded.missing_keys == []


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_wrong_restore_is_caught_by_the_recorded_vectors(fmt, tmp_path):
    class Forgetful(Calibrated):
        def get_extra_state(self):  # keeps nothing: `mode` cannot come back
            return {}

        def set_extra_state(self, state):
            pass

    model = Forgetful()
    model.fit(torch.arange(5.0))
    path = tmp_path / FORMATS[fmt]
    enn_nb.save(model, path, spec=enn_nb.ModelSpec(in_dim=4))
    with pytest.raises(RestoreCheckError, match="does not compute what the saved one did") as info:
        enn_nb.load(path, model=Forgetful())
    assert info.value.max_abs_err == pytest.approx(10.0, abs=1e-5)  # the table's sum is missing
    loaded = enn_nb.load(path, model=Forgetful(), strict=False)
    assert loaded.restore_check == "failed" and loaded.model.mode == "none"


def test_shapes_are_checked_after_the_hooks(tmp_path):
    class NoHook(nn.Module):
        in_dim = 4

        def __init__(self, width: int = 2) -> None:
            super().__init__()
            self.fc = nn.Linear(4, width)

        def forward(self, x):
            return self.fc(x)

    path = tmp_path / "m.safetensors"
    enn_nb.save(NoHook(3), path)
    fresh = NoHook(2)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(StateDictMismatchError, match="Nothing was loaded") as info:
        enn_nb.load(path, model=fresh)
    assert set(info.value.shape_mismatches) == {"fc.weight", "fc.bias"}
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())  # checked before loading


def test_checkpoints_without_recorded_vectors_report_not_run(tmp_path):
    path = tmp_path / "m.pt"
    enn_nb.save(nn.Linear(4, 2).state_dict(), path)  # a bare state dict: no model ran at save time
    loaded = enn_nb.load(path, model=nn.Linear(4, 2))
    assert loaded.restore_check == "not_run" and "no recorded vectors" in loaded.restore.reason
    assert "self_check" not in json.loads(enn_nb.inspect(path).to_json())


def test_self_check_survives_conversion(tmp_path, calibrated_builder):
    src = tmp_path / "m.pt"
    enn_nb.save(_fitted(), src, spec=enn_nb.ModelSpec(builder=calibrated_builder, in_dim=4))
    for fmt, name in FORMATS.items():
        dst = tmp_path / f"c_{name}"
        manifest = enn_nb.convert(src, dst)
        assert manifest.self_check == enn_nb.inspect(src).self_check
        assert manifest.extra_state == {"_extra_state": {"mode": "shift"}}
        assert enn_nb.load(dst).restore_check == "passed", fmt


class Noisy(Calibrated):
    """Warns on every call, as eager FlexAttention does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import warnings

        warnings.warn("noisy forward", UserWarning, stacklevel=1)
        return super().forward(x)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_large_models_self_check_runs_beside_the_writer_quietly(fmt, tmp_path, monkeypatch):
    import warnings

    from enn_nb.checkpoint import selfcheck

    monkeypatch.setattr(selfcheck, "BACKGROUND_MIN_BYTES", 0)  # every save takes the background path
    started, original = [], selfcheck.Recording.__init__
    monkeypatch.setattr(selfcheck.Recording, "__init__", lambda self, job: (started.append(job), original(self, job))[1])
    model = Noisy()
    model.fit(torch.arange(5.0) / 3)
    path = tmp_path / FORMATS[fmt]
    filters_before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = enn_nb.save(model, path, spec=enn_nb.ModelSpec(in_dim=4))
    assert started and not [w for w in caught if "noisy forward" in str(w.message)]
    assert warnings.filters == filters_before  # the hook is gone, no filter was left behind
    assert manifest.self_check["inputs"][0]["shape"] == [2, 4]
    with warnings.catch_warnings(record=True) as caught:  # the user's own calls still warn
        warnings.simplefilter("always")
        model(torch.zeros(1, 4))
    assert [w for w in caught if "noisy forward" in str(w.message)]
    loaded = enn_nb.load(path, model=Noisy())
    assert loaded.restore_check == "passed" and loaded.model.mode == "shift"


def test_safetensors_saves_without_vectors_longer_than_the_reserved_header(tmp_path, monkeypatch):
    from enn_nb.checkpoint import selfcheck

    monkeypatch.setattr(selfcheck, "BACKGROUND_MIN_BYTES", 0)
    monkeypatch.setattr(selfcheck, "MAX_CHARS_PER_VALUE", 0)  # the reservation then cannot hold the outputs
    monkeypatch.setattr(selfcheck.Recording, "max_json_chars", lambda self: 0)
    path = tmp_path / "m.safetensors"
    manifest = enn_nb.save(_fitted(), path, spec=enn_nb.ModelSpec(in_dim=4))
    assert manifest.self_check is None
    from safetensors.torch import load_file

    tensors = {k for k, v in _fitted().state_dict().items() if isinstance(v, torch.Tensor)}
    assert set(load_file(path)) == tensors  # a well-formed file all the same
    loaded = enn_nb.load(path, model=Calibrated())
    assert loaded.restore_check == "not_run" and loaded.model.mode == "shift"
