"""``mep.train``: fit the ``mep.unet3d`` prior to rescaled phase volumes.

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

import copy
import math

import torch
from emverse.errors import EmverseError
from emverse.interfaces import OptionsTask
from emverse_diffusion.objectives import AdaptiveLogSNRSampler, LossWeighting

from emverse_mep.dataset import load_volumes


def v_loss_terms(prior, x0: torch.Tensor, logsnr: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared v error, shape (batch,)."""
    alpha = torch.sigmoid(logsnr).sqrt().view(-1, 1, 1, 1)
    sigma = torch.sigmoid(-logsnr).sqrt().view(-1, 1, 1, 1)
    x_t = alpha * x0 + sigma * noise
    v = alpha * noise - sigma * x0
    v_hat = prior.predict_v(x_t, logsnr)
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


class TrainTask(OptionsTask):
    def run(self, ctx):
        from emverse.run import RunResult

        opts = ctx.options
        prior = ctx.build("prior")
        volumes, attrs = load_volumes(ctx.resolve_path(opts.data))
        if tuple(volumes.shape[1:]) != tuple(prior.event_shape):
            raise EmverseError(
                f"training volumes have shape {tuple(volumes.shape[1:])} but [prior] event_shape is "
                f"{tuple(prior.event_shape)}; make them equal (dataset train_shape or prior event_shape)"
            )
        prior.phase_scale = float(attrs.get("phase_scale", 1.0))
        result = train_prior(prior, torch.as_tensor(volumes), opts, ctx)
        path = ctx.save_checkpoint("prior", result["state"], metadata=prior.checkpoint_metadata())
        ctx.log.info("prior checkpoint %s", path)
        history = result["history"]
        _loss_figure(ctx, history)
        return RunResult(metrics={k: v for k, v in result.items() if isinstance(v, float)})


def train_prior(prior, volumes: torch.Tensor, opts, ctx) -> dict:
    """Train ``prior.network`` in place; returns EMA weights, history and metrics."""
    device, dtype = ctx.device, ctx.dtype
    gen = ctx.generator("mep.train")
    network = prior.network.to(device=device, dtype=dtype)
    ema = copy.deepcopy(network).requires_grad_(False)
    optimiser = torch.optim.AdamW(network.parameters(), lr=opts.learning_rate, weight_decay=opts.weight_decay)
    lmin, lmax = prior.schedule.logsnr_min, prior.schedule.logsnr_max
    weighting = LossWeighting("gaussian", center=opts.weight_mean, width=opts.weight_std)
    sampler = AdaptiveLogSNRSampler(opts.adaptive_bins, lmin, lmax) if opts.adaptive_bins else None
    n = volumes.shape[0]
    history = {"step": [], "loss": []}
    running = None
    for step in ctx.progress(range(opts.steps), desc="train", total=opts.steps):
        idx = torch.randint(n, (opts.batch_size,), generator=gen)
        x0 = volumes[idx]
        if opts.flip_augment:
            x0 = _augment(x0, gen)
        x0 = x0.to(device=device, dtype=dtype)
        if sampler is not None:
            t64, importance = sampler.sample(opts.batch_size, prior.schedule, gen, dtype=torch.float64)
            lam64 = prior.schedule.logsnr(t64)
        else:
            lam64 = lmin + (lmax - lmin) * torch.rand(opts.batch_size, generator=gen, dtype=torch.float64)
            importance = torch.ones_like(lam64)
        logsnr = lam64.to(device=device, dtype=dtype)
        noise = torch.randn(x0.shape, generator=gen, dtype=dtype).to(device)
        mse = v_loss_terms(prior, x0, logsnr, noise)
        weight = weighting(logsnr)
        loss = (weight * importance.to(device=device, dtype=dtype) * mse).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), opts.grad_clip)
        optimiser.step()
        with torch.no_grad():
            decay = min(opts.ema_decay, (1 + step) / (10 + step))
            for p_ema, p in zip(ema.parameters(), network.parameters(), strict=True):
                p_ema.lerp_(p, 1 - decay)
        if sampler is not None:
            sampler.update(lam64, weight * mse)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise EmverseError(f"training loss became {value} at step {step}; lower learning_rate")
        running = value if running is None else 0.98 * running + 0.02 * value
        if step % opts.log_every == 0 or step == opts.steps - 1:
            history["step"].append(step)
            history["loss"].append(running)
            ctx.log.info("step %d loss %.4f", step, running)
    network.load_state_dict(ema.state_dict())
    val = denoising_errors(prior, volumes[: min(n, 32)].to(device=device, dtype=dtype), ctx.generator("mep.val"))
    out = {
        "state": {k: v.detach().cpu().float() for k, v in network.state_dict().items()},
        "history": history,
        "final_loss": float(history["loss"][-1]),
    }
    out.update(val)
    return out


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


def _loss_figure(ctx, history):
    from emverse import figures as agg  # explicit Agg canvas, no backend switch

    fig, ax = agg.subplots(figsize=(4, 3))
    ax.plot(history["step"], history["loss"])
    ax.set_xlabel("step")
    ax.set_ylabel("weighted v-loss (EMA)")
    ax.set_yscale("log")
    fig.tight_layout()
    ctx.save_figure("training_loss", fig)
    agg.close(fig)


__all__ = ["TrainTask", "train_prior"]
