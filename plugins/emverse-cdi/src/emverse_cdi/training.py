"""Training of the CDI prior and the regression baseline on the core training loop.

Recipes train with the core ``train`` task, ``[dataset] type = "cdi.patterns"`` (a
``simulate`` task store) and ``[objective] type = "cdi.augmented"``; ``cdi.pipeline`` calls
:func:`train_model` with the same objective. Each model supplies ``training_loss(images, z, generator, repeats)`` (the CDI
prior: ε-MSE at a random diffusion step; the regression: MSE on the normalised
parameters) and both see the same augmentation (appendix B.1); everything else —
data order, AdamW (zero weight decay by default, appendix B.2/B.4), optional
cosine decay of the learning rate over all steps, the EMA of the CDI prior's
weights (decay warmed up as (1 + k)/(10 + k)), checkpoints and exact resume —
is :func:`emverse.training.fit`. The CDI prior ends with its EMA weights loaded,
the regression with its trained weights.
"""

from __future__ import annotations

import time
from pathlib import Path

import attrs
import numpy as np
import torch
from emverse.errors import EmverseError
from emverse.interfaces import Configurable, Objective
from emverse.training import TrainConfig, epoch_means, fit

from .dataset import PatternDataset
from .parameter_table import check_same_space


@attrs.define
class TrainingHistory:
    epoch_loss: list[float] = attrs.field(factory=list)
    seconds: float = 0.0
    steps: int = 0


class _Patterns:
    """The loop's view of a pattern set: (raw patterns, physical parameters) by index."""

    def __init__(self, dataset: PatternDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def get(self, indices: np.ndarray):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.dataset.patterns_at(idx), self.dataset.parameters[idx]


class Patterns(Configurable):
    """``cdi.patterns``: the (pattern, parameters) pairs of a ``cdi.dataset`` Zarr store
    (``path``; the first ``max_items``, 0 = all) as training data."""

    def __init__(self, path: str, max_items: int = 0):
        self.path, self.max_items = path, int(max_items)

    @classmethod
    def from_params(cls, params, ctx=None):
        return cls(str(ctx.resolve_path(params.path)) if ctx is not None else params.path, params.max_items)

    def splits(self, generator=None, dtype=torch.float32):
        return _Patterns(PatternDataset(self.path, max_items=self.max_items or None)), None

    def draw(self, n: int, generator=None, dtype=torch.float32):
        """The store's first ``n`` pairs as held-out observations (the core ``infer`` task with a
        ``[dataset]``): truths (n, P) in the forward model's units and patterns (n, H, W). A test
        store is held out by being simulated apart (its own seed); its order is fixed, so no
        draw is random and ``generator`` is not used."""
        # read only the first n (a test store may hold far more than the observations asked for)
        dataset = PatternDataset(self.path, max_items=min(n, self.max_items) if self.max_items else n)
        if n > len(dataset):
            raise EmverseError(f"options.n_observations = {n}, but dataset {self.path!r} holds {len(dataset)} "
                               "patterns (max_items counts); lower n_observations or simulate more")
        return dataset.parameters[:n].to(torch.float64), dataset.patterns_at(torch.arange(n)).to(dtype)


class AugmentedObjective(Objective):
    """``cdi.augmented``: the model's own loss on augmented patterns (appendix B.1).

    Rotation by U(±``rotation_degrees``), centre crop, random resized crop with area
    fraction U(``resized_crop_scale``); ``noise_draws`` diffusion (step, noise) pairs per
    pattern (the pattern is encoded once). The CDI prior's loss is the ε-MSE, the
    regression's the MSE on the normalised parameters; the CDI prior keeps the EMA of its
    weights, the regression its trained weights. Augmentation and noise come from the
    batch's generator.
    """

    def __init__(self, rotation_degrees: float = 2.0, resized_crop_scale=(0.9, 1.0), noise_draws: int = 1):
        self.rotation_degrees = float(rotation_degrees)
        self.resized_crop_scale = tuple(resized_crop_scale)
        self.noise_draws = int(noise_draws)
        self.model = None

    def bind(self, prior, data) -> None:
        if not hasattr(prior, "training_loss"):
            raise EmverseError(f"[objective] cdi.augmented trains cdi.transformer or cdi.regression, not "
                               f"{type(prior).__name__}; change [prior] type")
        dataset = data.dataset
        check_same_space(prior.parameter_space, dataset.space, f"dataset {str(dataset.path)!r}")
        prior.intensity_scale.fill_(dataset.mean_intensity())
        prior.pattern_shape = tuple(dataset.pattern_shape)
        self.model = prior
        self.uses_ema = hasattr(prior, "ema_decay")

    def loss(self, network, batch):
        model = self.model
        images = model.prepare_train(batch.x.cpu(), batch.generator, self.rotation_degrees,
                                     self.resized_crop_scale)
        z = model.parameter_space.normalise(batch.condition.double()).float().to(images.device)
        return model.training_loss(images, z, batch.generator, self.noise_draws)


def train_model(
    model,
    dataset: PatternDataset,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    steps_per_epoch: int | None = None,
    weight_decay: float = 0.0,
    cosine_schedule: bool = False,
    rotation_degrees: float = 0.0,
    resized_crop_scale: tuple[float, float] = (1.0, 1.0),
    noise_draws: int = 1,
    out_dir: str | Path | None = None,
    name: str = "model",
    checkpoint_every: int = 0,
    recipe: dict | None = None,
    stop_after: int | None = None,
    progress=False,
    log=None,
    on_interrupt=None,
) -> TrainingHistory:
    """Fit ``model`` (a :class:`~emverse_cdi.prior.CdiTransformerPrior` or
    :class:`~emverse_cdi.prior.RegressionPrior`) on ``dataset`` in place.

    ``epochs`` × ``steps_per_epoch`` (default: patterns // batch) optimiser steps;
    with ``out_dir`` the state is checkpointed to ``<name>-resume.safetensors``
    and an interrupted call continues from it.
    """
    n = len(dataset)
    batch_size = min(batch_size, n)
    steps_per_epoch = steps_per_epoch or max(1, n // batch_size)
    objective = AugmentedObjective(rotation_degrees, resized_crop_scale, noise_draws)
    data = _Patterns(dataset)
    objective.bind(model, data)
    config = TrainConfig(
        steps=epochs * steps_per_epoch, batch_size=batch_size, learning_rate=learning_rate,
        weight_decay=weight_decay, lr_decay="cosine" if cosine_schedule else "none",
        ema_decay=float(model.ema_decay) if objective.uses_ema else 0.0, ema_warmup=objective.uses_ema,
        grad_clip=None, amp=False, checkpoint_every=checkpoint_every,
        log_every=max(1, epochs * steps_per_epoch // 10), seed=seed,
    )
    started = time.perf_counter()
    result = fit(
        model.network, objective, data, config, out_dir=out_dir, name=name, recipe=recipe,
        stop_after=stop_after, progress=progress, log=log, on_interrupt=on_interrupt,
    )
    if objective.uses_ema and not result.interrupted:
        model.network.load_state_dict(result.ema)
    model.eval()
    return TrainingHistory(epoch_means(result.history["loss"], steps_per_epoch),
                           time.perf_counter() - started, result.step)

