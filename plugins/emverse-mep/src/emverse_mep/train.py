"""Training the ``mep.unet3d`` prior on rescaled phase volumes (the core ``train`` task with
``[objective] type = "mep.v_prediction"`` and ``[dataset] type = "mep.volumes"``).

Objective (Kingma & Gao 2023, VDM++; MEP-Diffusion §3): v-prediction in
continuous logSNR λ with a Gaussian weighting w(λ) = exp(−(λ−μ)²/(2s²))
centred at high noise (μ < 0), estimated with emverse-diffusion's *adaptive* λ sampler:
λ is drawn from a piecewise-uniform density over ``adaptive_bins`` bins of
[λ_min, λ_max] whose bin masses follow an EMA of the weighted loss in each
bin, and each sample's loss is importance-weighted by w(λ)/q(λ) (q = the
density relative to uniform), so the expectation is the same as uniform λ
sampling but its variance is lower.
"""

from __future__ import annotations

import math

import attrs
import torch
from emverse.errors import EmverseError
from emverse.interfaces import Configurable, Objective
from emverse.training import TensorData, TrainConfig, fit
from emverse_diffusion.objectives import AdaptiveLogSNRSampler, LossWeighting

from emverse_mep.dataset import load_volumes


def v_loss_terms(predict_v, x0: torch.Tensor, logsnr: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared v error, shape (batch,); ``predict_v(x_t, logsnr)`` is the network."""
    alpha = torch.sigmoid(logsnr).sqrt().view(-1, 1, 1, 1)
    sigma = torch.sigmoid(-logsnr).sqrt().view(-1, 1, 1, 1)
    x_t = alpha * x0 + sigma * noise
    v = alpha * noise - sigma * x0
    v_hat = predict_v(x_t, logsnr)
    return ((v_hat - v) ** 2).flatten(1).mean(1)


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random in-plane flips and 90° rotations (symmetries of the data)."""
    out = []
    for vol in batch:
        k = int(torch.randint(4, (1,), generator=generator))
        vol = torch.rot90(vol, k, dims=(1, 2))
        if bool(torch.randint(2, (1,), generator=generator)):
            vol = torch.flip(vol, dims=(2,))
        out.append(vol)
    return torch.stack(out)


@attrs.define
class _VLoss:
    loss: torch.Tensor
    logsnr: torch.Tensor  # float64, this process's samples
    weighted: torch.Tensor  # w(λ)·mse, detached


class VObjective(Objective):
    """``mep.v_prediction``: weighted v-prediction MSE in logSNR, λ from the adaptive sampler (or uniform).

    Gaussian weighting w(λ) centred at ``weight_mean`` with width ``weight_std``;
    ``adaptive_bins`` bins of the adaptive λ sampler (0: uniform λ); ``flip_augment``
    random in-plane flips and 90° rotations. Binds to a ``mep.unet3d`` prior and
    ``mep.volumes`` data (whose ``phase_scale`` the prior keeps).
    """

    def __init__(self, weight_mean: float = -2.0, weight_std: float = 3.0, adaptive_bins: int = 100,
                 flip_augment: bool = True):
        self.flip_augment = bool(flip_augment)
        self.weighting = LossWeighting("gaussian", center=weight_mean, width=weight_std)
        self.adaptive_bins = int(adaptive_bins)
        self.prior = self.sampler = None
        self.dtype = torch.float32

    def bind(self, prior, data) -> None:
        if not hasattr(prior, "predict_v"):
            raise EmverseError(f"[objective] mep.v_prediction trains a mep.unet3d prior, not a "
                               f"{type(prior).__name__}; change [prior] type")
        shape = tuple(data.x0.shape[1:])
        if shape != tuple(prior.event_shape):
            raise EmverseError(
                f"training volumes have shape {shape} but [prior] event_shape is {tuple(prior.event_shape)}; "
                "make them equal (dataset train_shape or prior event_shape)")
        if hasattr(data, "attrs"):  # a mep.dataset store: its rescaling travels with the prior
            prior.phase_scale = float(data.attrs.get("phase_scale", 1.0))
        self.prior = prior
        self.dtype = next(prior.network.parameters()).dtype
        self.range = (prior.schedule.logsnr_min, prior.schedule.logsnr_max)
        self.sampler = AdaptiveLogSNRSampler(self.adaptive_bins, *self.range) if self.adaptive_bins else None

    def report(self, prior, data, generator) -> dict[str, float]:
        x0 = data.x0[: min(len(data), 32)].to(device=next(prior.network.parameters()).device, dtype=self.dtype)
        return denoising_errors(prior, x0, generator)

    def loss(self, network, batch):
        x0 = batch.x
        if self.flip_augment:
            x0 = _augment(x0, batch.generator)
        x0 = x0.to(device=batch.device, dtype=self.dtype)
        if self.sampler is not None:
            t64, importance = self.sampler.sample(batch.size, self.prior.schedule, batch.generator,
                                                  dtype=torch.float64)
            lam64 = self.prior.schedule.logsnr(t64)[batch.part]
            importance = importance[batch.part]
        else:
            lmin, lmax = self.range
            lam64 = lmin + (lmax - lmin) * batch.rand(dtype=torch.float64).cpu()
            importance = torch.ones_like(lam64)
        logsnr = lam64.to(device=batch.device, dtype=self.dtype)
        noise = batch.randn(*x0.shape[1:], dtype=self.dtype)
        mse = v_loss_terms(network, x0, logsnr, noise)
        weighted = self.weighting(logsnr) * mse
        loss = (weighted * importance.to(device=batch.device, dtype=self.dtype)).mean()
        return _VLoss(loss, lam64, weighted.detach())

    def after_step(self, result, reduce) -> None:
        if self.sampler is not None:
            sums, counts = self.sampler.bin_statistics(result.logsnr, result.weighted)
            self.sampler.apply(reduce(sums), reduce(counts))

    def state_dict(self):
        return self.sampler.state_dict() if self.sampler is not None else {}

    def load_state_dict(self, state):
        if self.sampler is not None:
            self.sampler.load_state_dict(state)
        else:
            super().load_state_dict(state)


class Volumes(Configurable):
    """``mep.volumes``: the phase volumes of a ``mep.rendered`` store (``path``; the first ``count``,
    0 = all) as training data; the store's ``phase_scale`` travels with them."""

    def __init__(self, path: str, count: int = 0):
        self.path, self.count = path, int(count)

    @classmethod
    def from_params(cls, params, ctx=None):
        return cls(str(ctx.resolve_path(params.path)) if ctx is not None else params.path, params.count)

    def splits(self, generator=None, dtype=torch.float32):
        volumes, stored = load_volumes(self.path, count=self.count or None)
        data = TensorData(torch.as_tensor(volumes, dtype=dtype))
        data.attrs = stored
        return data, None


def train_prior(prior, volumes: torch.Tensor, opts, ctx, *, stop_after: int | None = None) -> dict:
    """Train ``prior.network`` on the core loop with :class:`VObjective` (for scripts and tests; recipes
    use the core ``train`` task); returns the EMA weights, the loss history (EMA-smoothed at every
    ``log_every`` steps) and metrics."""
    device, dtype = ctx.device, ctx.dtype
    network = prior.network.to(device=device, dtype=dtype)
    n = volumes.shape[0]
    config = TrainConfig(
        steps=opts.steps, batch_size=min(opts.batch_size, n), learning_rate=opts.learning_rate,
        weight_decay=opts.weight_decay, ema_decay=opts.ema_decay, ema_warmup=True, grad_clip=opts.grad_clip,
        amp=False, checkpoint_every=getattr(opts, "checkpoint_every", 0), log_every=opts.log_every,
        seed=int(ctx.generator("mep.train").initial_seed()),
    )
    out_dir = getattr(ctx, "out_dir", None)
    objective = VObjective(opts.weight_mean, opts.weight_std, opts.adaptive_bins, opts.flip_augment)
    data = TensorData(volumes)
    objective.bind(prior, data)
    result = fit(
        network, objective, data, config, out_dir=out_dir, name="prior",
        recipe=ctx.recipe.to_dict() if hasattr(ctx, "recipe") else None, stop_after=stop_after,
        progress=ctx.progress, log=ctx.log.info, on_interrupt=getattr(ctx, "on_interrupt", None),
    )
    history = _smoothed(result.history["loss"], opts.log_every)
    if result.interrupted:
        return {"history": history, "interrupted": True}
    network.load_state_dict(result.ema)
    val = denoising_errors(prior, volumes[: min(n, 32)].to(device=device, dtype=dtype), ctx.generator("mep.val"))
    out = {
        "state": {k: v.detach().cpu().float() for k, v in network.state_dict().items()},
        "history": history,
        "final_loss": float(history["loss"][-1]),
    }
    out.update(val)
    return out


def _smoothed(losses: list[float], every: int) -> dict[str, list]:
    """The loss's running average (weight 0.02 per step) at step 0, every ``every`` steps and the last."""
    history = {"step": [], "loss": []}
    running = None
    for step, value in enumerate(losses):
        running = value if running is None else 0.98 * running + 0.02 * value
        if step % every == 0 or step == len(losses) - 1:
            history["step"].append(step)
            history["loss"].append(running)
    return history


@torch.no_grad()
def denoising_errors(prior, x0: torch.Tensor, generator, logsnrs=(-6.0, -2.0, 2.0)) -> dict:
    """Mean squared x̂₀ error at fixed λ, and the same for the trivial
    estimate x̂₀ = 0 (a trained prior must beat it)."""
    out = {}
    for lam in logsnrs:
        logsnr = torch.full((x0.shape[0],), lam, dtype=x0.dtype, device=x0.device)
        alpha, sigma = math.sqrt(1 / (1 + math.exp(-lam))), math.sqrt(1 / (1 + math.exp(lam)))
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        x_t = alpha * x0 + sigma * noise
        x_hat = alpha * x_t - sigma * prior.predict_v(x_t, logsnr)
        out[f"x0_mse_logsnr{lam:+.0f}"] = float(((x_hat - x0) ** 2).mean())
        out[f"zero_mse_logsnr{lam:+.0f}"] = float((x0**2).mean())
    return out


__all__ = ["VObjective", "Volumes", "train_prior"]
