"""The reference ENN-style model: config, model, synthetic data, training and its registered builder."""

from __future__ import annotations

from .config import ModelConfig
from .data import make_dataset, sample_features
from .model import ReferenceModel
from .train import build_reference, train_reference

__all__ = ["ModelConfig", "ReferenceModel", "build_reference", "make_dataset", "sample_features", "train_reference"]
