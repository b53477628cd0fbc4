"""Tasks: ``diffusion.train`` (train, then optionally check posteriors) and ``diffusion.posterior``."""

from __future__ import annotations

import shutil

import torch
from emverse.errors import EmverseError
from emverse.interfaces import OptionsTask, Task
from emverse.run import RunResult, stable_seed

from .training import DiffusionTraining, TrainConfig, train


def _metrics_of(ctx, draws, truth) -> dict[str, float]:
    out: dict[str, float] = {}
    specs = ctx.recipe.components.get("metrics", [])
    for i, (spec, metric) in enumerate(zip(specs, ctx.build("metrics"), strict=True)):
        for key, value in metric(draws, truth).items():
            out[f"{spec.type}.{key}"] = float(value)
        fig = metric.figure(draws, truth)
        if fig is not None:
            ctx.save_figure(f"metric{i}-{spec.type}", fig)
    return out


def posterior_check(ctx, prior, sampler, dataset, n_observations: int, n_samples: int,
                    guidance=None, forward_model=None) -> dict[str, float]:
    """Posterior draws for held-out observations; metrics, and exact-posterior errors when known.

    Truths come from the dataset's data prior, so calibration is measured where it is defined.
    """
    x_true, y = dataset.draw(n_observations, ctx.generator("truth"), dtype=ctx.dtype)
    x_true, y = x_true.to(ctx.device), y.to(ctx.device) if y is not None else None
    gen = ctx.generator("posterior", device=ctx.device)
    prior.eval()
    if guidance is not None:
        if forward_model is None:
            raise EmverseError("guided posterior sampling needs a [forward_model] table")
        draws = torch.stack([
            prior.sample(n_samples, sampler=sampler, generator=gen,
                         guidance=guidance.bind(forward_model, y[i].to(next(forward_model.buffers()).dtype)))
            for i in ctx.progress(range(n_observations), desc="observations")
        ])
    else:
        if y is None:
            raise EmverseError("the dataset gives no observations; set conditional = true")
        draws = prior.sample(n_samples, condition=y, sampler=sampler, generator=gen)
    draws = draws.detach()
    ctx.save_checkpoint("posterior", {"samples": draws, "truth": x_true, "observation": y})
    metrics = _metrics_of(ctx, draws, x_true)
    data_prior = getattr(dataset, "data_prior", None)
    model = forward_model if forward_model is not None else getattr(dataset, "forward_model", None)
    if data_prior is not None and hasattr(data_prior, "exact_posterior") and model is not None:
        mean_err, std_err = [], []
        for i in range(n_observations):
            exact = data_prior.exact_posterior(model, y[i])
            std = exact.covariance_matrix.diagonal().sqrt()
            mean_err.append(((draws[i].double().mean(0).cpu() - exact.mean) / std).abs().max())
            std_err.append((draws[i].double().std(0).cpu() / std - 1).abs().max())
        metrics["exact.mean_error_in_std"] = float(torch.stack(mean_err).mean())
        metrics["exact.std_relative_error"] = float(torch.stack(std_err).mean())
        ctx.add_table("posterior vs exact", ["quantity", "value"],
                      [["mean error / exact std (mean over observations, max over dims)",
                        metrics["exact.mean_error_in_std"]],
                       ["|std / exact std − 1| (mean over observations, max over dims)",
                        metrics["exact.std_relative_error"]]])
    metrics["posterior_mean_rmse"] = float((draws.mean(1) - x_true).pow(2).mean().sqrt())
    return metrics


class TrainTask(OptionsTask):
    """Train the recipe's [prior] on its [dataset], then check posteriors (a known-answer task).

    The training is the core ``train`` task's (the one loop, :mod:`emverse_diffusion.training`,
    with the ``diffusion.denoising`` objective); it stays a plugin task for what follows:
    posterior draws for held-out observations scored against the data prior's exact posterior
    (``n_observations``), which is how a diffusion prior is checked before it is trusted.
    """

    def run(self, ctx):
        p = self.options
        prior = ctx.build("prior")
        dataset = ctx.build("dataset")
        train_data, val_data = dataset.splits(ctx.generator("data"), dtype=ctx.dtype)
        objective = ctx.build("objective") if ctx.has("objective") else DiffusionTraining()
        objective.bind(prior, train_data)
        config = TrainConfig(
            steps=p.steps, batch_size=p.batch_size, learning_rate=p.learning_rate,
            weight_decay=p.weight_decay, warmup_steps=p.warmup_steps, lr_decay=p.lr_decay,
            ema_decay=p.ema_decay, ema_start=p.ema_start, grad_clip=p.grad_clip, amp=p.amp,
            validate_every=p.validate_every, checkpoint_every=p.checkpoint_every,
            seed=stable_seed(ctx.seed, "train") % (2**62),
        )
        if p.resume_from:
            source = ctx.resolve_path(p.resume_from)
            if not source.exists():
                raise EmverseError(f"options.resume_from {str(source)!r} does not exist; give a "
                                   "model-resume.safetensors written by an earlier diffusion.train run")
            shutil.copyfile(source, ctx.out_dir / "model-resume.safetensors")
        result = train(prior, train_data, config, out_dir=ctx.out_dir, name="model",
                       recipe=ctx.recipe.to_dict(), validation=val_data, progress=ctx.progress,
                       log=ctx.log.info, on_interrupt=ctx.on_interrupt)
        ctx.save_figure("loss", _loss_figure(result.history))
        tail = result.history["loss"][-50:]
        metrics = {"train_loss": sum(tail) / len(tail), "steps": result.step}
        if result.history["val_loss"]:
            metrics["validation_loss"] = result.history["val_loss"][-1]
        if p.n_observations:
            if not ctx.has("sampler"):
                raise EmverseError("options.n_observations > 0 needs a [sampler] table to draw posteriors")
            prior.network.load_state_dict(result.ema)
            guidance = ctx.build("guidance") if ctx.has("guidance") else None
            model = getattr(dataset, "forward_model", None)
            if guidance is not None and model is None:
                model = ctx.build("forward_model")
            metrics.update(posterior_check(ctx, prior, ctx.build("sampler"), dataset,
                                           p.n_observations, p.n_samples, guidance=guidance,
                                           forward_model=model if guidance is not None else None))
        return RunResult(metrics)


class PosteriorTask(Task):
    """Posterior draws from a trained [prior]: conditional, or guided by [guidance] through [forward_model]."""

    def __init__(self, n_observations: int = 32, n_samples: int = 200):
        self.n_observations, self.n_samples = n_observations, n_samples

    def run(self, ctx):
        prior = ctx.build("prior")
        sampler = ctx.build("sampler")
        dataset = ctx.build("dataset")
        guidance = ctx.build("guidance") if ctx.has("guidance") else None
        model = ctx.build("forward_model") if ctx.has("forward_model") else None
        return RunResult(posterior_check(ctx, prior, sampler, dataset, self.n_observations,
                                         self.n_samples, guidance=guidance, forward_model=model))


def _loss_figure(history):
    from emverse import figures as agg  # explicit Agg canvas, no backend switch

    fig, ax = agg.subplots(figsize=(5, 3.5))
    ax.semilogy(history["step"], history["loss"], lw=0.8, label="train (batch)")
    if history["val_loss"]:
        ax.semilogy(history["val_step"], history["val_loss"], "o-", label="validation (EMA)")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    return fig
