"""The module every backend sees: ``forward(*features)`` runs the model's ``forward_export`` (imports torch)."""

from __future__ import annotations

from typing import Any

import torch


class ForwardExport(torch.nn.Module):
    """``forward`` = the wrapped model's ``forward_export`` (the ENN export contract)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> Any:
        return self.model.forward_export(features)


def export_module(model: Any) -> Any:
    """``model`` itself, or a wrapper calling ``forward_export`` when the model has one."""
    if callable(getattr(model, "forward_export", None)):
        wrapper = ForwardExport(model)
        wrapper.training = False  # the model's own flags are the export-safe context's business
        return wrapper
    return model
