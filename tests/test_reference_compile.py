"""compile_blocks=True: torch.compile'd blocks give the same outputs and the same state_dict keys."""

from __future__ import annotations

import pytest
import torch

from enn_nb.model.fastpaths import declared_fast_paths
from enn_nb.reference import ModelConfig, ReferenceModel, make_dataset


@pytest.mark.slow
def test_compiled_blocks_match_plain_blocks_and_keep_keys():
    torch.manual_seed(0)
    config = ModelConfig(compile_blocks=True, attention="sdpa", depth=1)
    model = ReferenceModel(config).eval()
    plain_keys = list(ReferenceModel(config.replace(compile_blocks=False)).state_dict())
    x = make_dataset(0, n_sensors=1, n_steps=48)[0][:8]
    with torch.no_grad():
        compiled = model.forward_export(x)  # the fused custom op graph-breaks and runs eagerly
        assert model.__dict__["_compiled_blocks"] is not None
        switch = next(p for p in declared_fast_paths(model) if p.name == "compile_blocks")
        assert switch.is_fast and switch.kind == "compiled"
        setattr(switch.module, switch.attr, switch.safe_value)
        plain = model.forward_export(x)
    assert torch.allclose(compiled, plain, rtol=0, atol=1e-6)
    keys = list(model.state_dict())
    assert keys == plain_keys and not any("_orig_mod" in k for k in keys)
