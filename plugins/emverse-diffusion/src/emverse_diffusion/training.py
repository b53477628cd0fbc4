"""Training a network diffusion prior: the diffusion objective on the core training loop.

:func:`train` is :func:`emverse.training.fit` (the one loop every emverse network
trains with: data order, AdamW, EMA, clipping, checkpoints, exact resume,
DDP) with :class:`DiffusionTraining` as the objective: for each step the
diffusion times and importance weights are drawn for the whole global batch
from the prior's time sampler (adaptive samplers learn from every step and are
checkpointed with it), then the noise, then the prior's ``loss_terms``. The
final weights (and EMA) go to ``<name>.safetensors``; the resume state to
``<name>-resume.safetensors``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from emverse.checkpoint import load_checkpoint, save_checkpoint
from emverse.errors import EmverseError
from emverse.interfaces import Objective
from emverse.training import Batch, TensorData, TrainConfig, TrainResult, ZarrData, fit

from .objectives import AdaptiveLogSNRSampler, DiffusionObjective, LossWeighting, UniformTimeSampler
from .prior import NetworkDiffusionPrior, load_weights

__all__ = [
    "DiffusionTraining",
    "TrainConfig",
    "TensorData",
    "ZarrData",
    "TrainResult",
    "train",
    "load_trained_weights",
]


class DiffusionTraining(Objective):
    """``diffusion.denoising``: the prior's diffusion loss, with times, importance weights and
    noise drawn for the global batch (parameters: :class:`~emverse_diffusion.params.DenoisingParams`).

    Built from a recipe it sets the prior's objective when bound; :meth:`for_prior` trains with
    the objective the prior already has.
    """

    def __init__(self, weighting: str = "uniform", weighting_bias: float = 0.0, weighting_center: float = 0.0,
                 weighting_width: float = 2.4, time_sampler: str = "uniform", adaptive_bins: int = 100,
                 norm: str = "l2"):
        self.settings = dict(weighting=weighting, weighting_bias=weighting_bias, weighting_center=weighting_center,
                             weighting_width=weighting_width, time_sampler=time_sampler,
                             adaptive_bins=adaptive_bins, norm=norm)
        self.prior = self.sampler = None

    @classmethod
    def for_prior(cls, prior: NetworkDiffusionPrior) -> DiffusionTraining:
        objective = cls()
        objective.prior, objective.sampler = prior, prior.objective.time_sampler
        return objective

    def bind(self, prior, data) -> None:
        if not isinstance(prior, NetworkDiffusionPrior):
            raise EmverseError(f"[objective] diffusion.denoising trains a network diffusion prior, not a "
                               f"{type(prior).__name__}; use e.g. [prior] type = \"diffusion.mlp\"")
        o = self.settings
        sampler = (AdaptiveLogSNRSampler(bins=o["adaptive_bins"]) if o["time_sampler"] == "adaptive"
                   else UniformTimeSampler())
        prior.objective = DiffusionObjective(
            prior.prediction,
            LossWeighting(o["weighting"], o["weighting_bias"], o["weighting_center"], o["weighting_width"]),
            sampler, o["norm"],
        )
        self.prior, self.sampler = prior, sampler

    def validation_loss(self, prior, data, weights, seed) -> float:
        return validation_loss(prior, data, weights, seed=seed)

    def loss(self, network, batch: Batch):
        t, importance = self.sampler.sample(
            batch.size, self.prior.schedule, generator=batch.generator, device="cpu", dtype=torch.float64
        )
        event = tuple(self.prior.event_shape) if self.prior.event_shape else tuple(batch.x.shape[1:])
        noise = batch.randn(*event)
        return self.prior.loss_terms(
            batch.x,
            batch.condition,
            t=t[batch.part].to(batch.device),
            noise=noise.to(dtype=batch.x.dtype),
            importance=importance[batch.part].to(batch.device),
            network=network,
        )

    def after_step(self, result, reduce) -> None:
        if self.sampler.adaptive:
            sums, counts = self.sampler.bin_statistics(result.logsnr, result.weighted)
            self.sampler.apply(reduce(sums), reduce(counts))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.sampler.state_dict()

    def load_state_dict(self, state) -> None:
        self.sampler.load_state_dict(state)


def train(
    prior: NetworkDiffusionPrior,
    data: TensorData | ZarrData,
    config: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    name: str = "model",
    recipe: dict | None = None,
    validation: TensorData | ZarrData | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    progress: bool | Callable = True,
    log: Callable[[str], Any] | None = None,
    on_interrupt: Callable | None = None,
) -> TrainResult:
    """Train ``prior``'s network in place (module docstring); returns history and EMA weights."""
    validate = None
    if validation is not None:
        def validate(weights):
            return validation_loss(prior, validation, weights, seed=config.seed)

    result = fit(
        prior.network, DiffusionTraining.for_prior(prior), data, config, out_dir=out_dir, name=name, recipe=recipe,
        resume=resume, validate=validate, stop_after=stop_after, progress=progress, log=log,
        on_interrupt=on_interrupt,
    )
    if result.interrupted or out_dir is None:
        result.checkpoint = None
        return result
    final_path = Path(out_dir) / f"{name}.safetensors"
    tensors = {f"model.{k}": v for k, v in prior.network.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in result.ema.items()})
    if int(os.environ.get("RANK", "0")) == 0:  # one writer under torchrun
        save_checkpoint(final_path, tensors, recipe=recipe,
                        metadata={"step": result.step, "train_config": config.as_dict(),
                                  "world_size": result.world_size})
    result.checkpoint = final_path
    return result


@torch.no_grad()
def validation_loss(
    prior: NetworkDiffusionPrior,
    data: TensorData | ZarrData,
    weights: dict[str, torch.Tensor] | None = None,
    *,
    seed: int = 0,
    batch_size: int = 1024,
) -> float:
    """Mean loss on ``data`` with uniform time sampling and fixed noise (seeded), using ``weights``."""
    device = next(prior.network.parameters()).device
    saved = None
    if weights is not None:
        saved = {k: v.clone() for k, v in prior.network.state_dict().items()}
        prior.network.load_state_dict(weights)
    was_training = prior.network.training
    prior.network.eval()
    generator = torch.Generator().manual_seed(int(seed) + 7919)
    total, count = 0.0, 0
    try:
        for begin in range(0, len(data), batch_size):
            idx = np.arange(begin, min(begin + batch_size, len(data)))
            x0, condition = data.get(idx)
            t = prior.schedule.sample_training_times(len(idx), generator=generator, dtype=torch.float64)
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
            terms = prior.loss_terms(
                x0.to(device),
                condition.to(device) if condition is not None else None,
                t=t.to(device),
                noise=noise.to(device),
            )
            total += float(terms.weighted.sum())
            count += len(idx)
    finally:
        if saved is not None:
            prior.network.load_state_dict(saved)
        prior.network.train(was_training)
    return total / max(count, 1)


def load_trained_weights(
    prior: NetworkDiffusionPrior, path: str | Path, *, use_ema: bool = True
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`train` into ``prior``; returns its recipe (or ``{}``)."""
    ckpt = load_checkpoint(path)
    load_weights(prior.network, ckpt.tensors, "ema." if use_ema else "model.", str(path))
    return ckpt.recipe or {}

