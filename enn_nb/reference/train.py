"""train_reference and build_reference: a trained, calibrated reference model in a few seconds."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from enn_nb.errors import SpecError

from .config import ModelConfig
from .data import make_dataset
from .model import ReferenceModel

if TYPE_CHECKING:
    from enn_nb.model.spec import ModelSpec


@contextlib.contextmanager
def _deterministic_cpu(seed: int) -> Iterator[None]:
    """Seed a forked RNG and use one thread; the caller's RNG state and thread count come back after.

    One thread because float reductions may split differently with another thread count, which
    would break bit-identical weights across machines with a different number of cores.
    """
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def train_reference(
    seed: int = 0,
    *,
    steps: int = 300,
    batch_size: int = 128,
    lr: float = 3e-3,
    n_sensors: int = 8,
    n_steps: int = 24 * 7 * 3,
    **config_overrides: Any,
) -> ReferenceModel:
    """Train a reference model on the synthetic dataset, then fit its Scaler and calibration.

    The same ``seed`` gives a bit-identical ``state_dict``. Training runs the ``"sdpa"`` attention
    (FlexAttention has no backward on CPU) and no ``torch.compile``; the returned model has the
    configured attention, ``compile_blocks`` and calibration, and is in eval mode.
    ``model.training_history`` holds the held-out loss before and after training.

    Args:
        seed: seeds the data, the initialisation, dropout and the batch order.
        steps, batch_size, lr: Adam optimisation settings.
        n_sensors, n_steps: size of the synthetic dataset.
        **config_overrides: fields of :class:`ModelConfig` (e.g. ``depth=1``, ``attention="math"``).

    Raises:
        SpecError: an override names no ModelConfig field or has a bad value.
    """
    config = ModelConfig.from_dict(config_overrides)
    started = time.perf_counter()
    with _deterministic_cpu(seed), torch.enable_grad():  # also when called under no_grad
        model = ReferenceModel(config)
        features, labels = make_dataset(
            seed,
            n_sensors=n_sensors,
            n_steps=n_steps,
            lookback=config.lookback,
            channels=config.channels,
            horizon=config.horizon,
            categorical_cardinalities=config.categorical_cardinalities,
        )
        gen = torch.Generator().manual_seed(int(seed) + 1)
        order = torch.randperm(features.shape[0], generator=gen)
        n_train = int(0.8 * features.shape[0])
        train_idx, held_idx = order[:n_train], order[n_train:]
        x_train, y_train = features[train_idx], labels[train_idx]
        x_held, y_held = features[held_idx], labels[held_idx]
        n_cont = config.lookback * config.channels
        model.scaler.fit_stats(x_train[:, :n_cont], y_train[..., 0])

        model.set_attention("sdpa" if config.attention == "flex" else config.attention)
        model.compile_blocks = False
        initial = _held_out_loss(model, x_held, y_held)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        model.train()
        for _ in range(steps):
            batch = torch.randint(0, n_train, (batch_size,), generator=gen)
            _, loss = model(x_train[batch], y_train[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        final = _held_out_loss(model, x_held, y_held)

        model.eval()
        with torch.no_grad():
            load_norm, _ = model._heads(x_held)
            model.scaler.fit_calibration(model.scaler.denormalize(load_norm), y_held[..., 0])
        model.set_attention(config.attention)
        model.compile_blocks = config.compile_blocks
    model.eval()
    model.training_history = {
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "initial_loss": initial,
        "final_loss": final,
        "n_train": n_train,
        "n_held_out": int(held_idx.numel()),
        "seconds": time.perf_counter() - started,
    }
    return model


@torch.no_grad()
def _held_out_loss(model: ReferenceModel, x: torch.Tensor, y: torch.Tensor) -> float:
    was_training = model.training
    model.eval()
    _, loss = model(x, y)
    model.train(was_training)
    return float(loss)


def build_reference(spec: ModelSpec) -> ReferenceModel:
    """The ``"enn_nb.reference"`` builder: an untrained ReferenceModel with the spec's config.

    Raises:
        SpecError: the spec has no config, or its ``in_dim``/``out_shape`` disagree with the config.
    """
    if spec.config is None:
        raise SpecError(
            "`ModelSpec.config` is None; the `enn_nb.reference` builder needs the ModelConfig dict "
            "(`ModelSpec.from_model(model)` records it)."
        )
    config = ModelConfig.from_dict(spec.config)
    if spec.in_dim is not None and spec.in_dim != config.in_dim:
        raise SpecError(
            f"`ModelSpec.in_dim` is {spec.in_dim} but its config gives in_dim={config.in_dim} "
            "(lookback * channels + number of categorical columns); the spec is inconsistent."
        )
    if spec.out_shape is not None and tuple(spec.out_shape) != config.out_shape:
        raise SpecError(
            f"`ModelSpec.out_shape` is {tuple(spec.out_shape)} but its config gives "
            f"out_shape={config.out_shape} (horizon, 2); the spec is inconsistent."
        )
    model = ReferenceModel(config)
    model.eval()
    return model
