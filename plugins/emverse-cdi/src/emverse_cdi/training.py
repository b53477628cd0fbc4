"""Training loop shared by the CDI prior and the regression baseline.

Each model supplies ``training_loss(images, z, generator)`` (the CDI prior:
ε-MSE at a random diffusion step; the regression: MSE on the normalised
parameters) and both see the same augmentation (appendix B.1). AdamW with
zero weight decay by default (appendix B.2/B.4); optional cosine annealing
of the learning rate over all steps. The CDI prior keeps an EMA of its
weights and ends with the EMA weights loaded.
"""

from __future__ import annotations

import math
import time

import attrs
import torch

from .dataset import PatternDataset


@attrs.define
class TrainingHistory:
    epoch_loss: list[float] = attrs.field(factory=list)
    seconds: float = 0.0
    steps: int = 0


def train_model(
    model,
    dataset: PatternDataset,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    generator: torch.Generator,
    steps_per_epoch: int | None = None,
    weight_decay: float = 0.0,
    cosine_schedule: bool = False,
    rotation_degrees: float = 0.0,
    resized_crop_scale: tuple[float, float] = (1.0, 1.0),
    noise_draws: int = 1,
    progress=None,
    log=None,
) -> TrainingHistory:
    """Fit ``model`` (a :class:`~emverse_cdi.prior.CdiTransformerPrior` or
    :class:`~emverse_cdi.prior.RegressionPrior`) on ``dataset`` in place."""
    device = model.intensity_scale.device
    model.intensity_scale.fill_(dataset.mean_intensity())
    model.pattern_shape = tuple(dataset.pattern_shape)
    z_all = model.parameter_space.normalise(dataset.parameters.double()).float()
    n = len(dataset)
    batch_size = min(batch_size, n)
    steps_per_epoch = steps_per_epoch or max(1, n // batch_size)
    total_steps = epochs * steps_per_epoch
    optimiser = torch.optim.AdamW(model.network.parameters(), lr=learning_rate,
                                  weight_decay=weight_decay)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, total_steps)
                 if cosine_schedule else None)
    ema = model.make_ema() if hasattr(model, "make_ema") else None
    history = TrainingHistory()
    started = time.perf_counter()
    model.train()
    epochs_iter = range(epochs) if progress is None else progress(range(epochs), desc="epochs")
    step = 0
    order = torch.randperm(n, generator=generator)
    cursor = 0
    for epoch in epochs_iter:
        total = 0.0
        for _ in range(steps_per_epoch):
            if cursor + batch_size > n:
                order = torch.randperm(n, generator=generator)
                cursor = 0
            idx = order[cursor:cursor + batch_size]
            cursor += batch_size
            images = model.prepare_train(dataset.patterns_at(idx), generator, rotation_degrees,
                                         resized_crop_scale)
            loss = model.training_loss(images, z_all[idx].to(device), generator, noise_draws)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"training loss became {loss_value} at step {step}; lower learning_rate"
                )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
            if ema is not None:
                model.update_ema(ema, step)
            total += loss_value
        history.epoch_loss.append(total / steps_per_epoch)
        if log is not None and (epoch % max(1, epochs // 10) == 0 or epoch == epochs - 1):
            log.info("epoch %d/%d loss %.5f", epoch + 1, epochs, history.epoch_loss[-1])
    if ema is not None:
        model.use_weights(ema)
    model.eval()
    history.seconds = time.perf_counter() - started
    history.steps = step
    return history
