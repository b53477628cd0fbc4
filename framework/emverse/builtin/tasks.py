"""The generic tasks the core offers: ``simulate``, ``infer``, ``refine``."""

from __future__ import annotations

import torch
from torch import nn

from emverse.figures import observations_figure, posterior_figure
from emverse.interfaces import Task
from emverse.run import RunResult


def _metrics_of(ctx, prediction, truth) -> dict[str, float]:
    out = {}
    for i, (spec, metric) in enumerate(zip(ctx.recipe.components.get("metrics", []),
                                           ctx.build("metrics"), strict=True)):
        prefix = spec.type
        for key, value in metric(prediction, truth).items():
            out[f"{prefix}.{key}"] = float(value)
        fig = metric.figure(prediction, truth)
        if fig is not None:
            ctx.save_figure(f"metric{i}-{prefix}", fig)
    return out


class SimulateTask(Task):
    def __init__(self, n: int = 4):
        self.n = n

    def run(self, ctx):
        model = ctx.build("forward_model")
        x = model.example_input(self.n, generator=ctx.generator("truth"), dtype=ctx.dtype).to(ctx.device)
        y = model.simulate(x, generator=ctx.generator("noise", device=ctx.device))
        ctx.save_checkpoint("simulated", {"x": x, "y": y})
        ctx.save_figure("observations", observations_figure(y))
        return RunResult({"n": self.n, "y_mean": float(y.mean()), "y_std": float(y.std())})


class InferTask(Task):
    """Posterior samples for ``n_observations`` simulated observations.

    Truths are drawn from the forward model's ``example_input`` (its parameter
    space) with the recipe seed. Three ways to the posterior, chosen from the
    recipe: a prior with an exact posterior (``exact_posterior``) and no
    sampler; a conditional prior with a sampler (condition = observation);
    or a prior + sampler + guidance, where the guidance is bound to the forward
    model and each observation at call time.
    """

    def __init__(self, n_observations: int = 4, n_samples: int = 200):
        self.n_observations, self.n_samples = n_observations, n_samples

    def run(self, ctx):
        model = ctx.build("forward_model")
        prior = ctx.build("prior")
        sampler = ctx.build("sampler") if ctx.has("sampler") else None
        guidance = ctx.build("guidance") if ctx.has("guidance") else None
        truth = model.example_input(self.n_observations, generator=ctx.generator("truth"),
                                    dtype=ctx.dtype).to(ctx.device)
        y = model.simulate(truth, generator=ctx.generator("noise", device=ctx.device))
        gen = ctx.generator("posterior", device=ctx.device)
        if sampler is None and hasattr(prior, "exact_posterior"):
            draws = torch.stack([prior.exact_posterior(model, y[i]).sample((self.n_samples,))
                                 for i in range(len(y))])
        elif guidance is not None:
            draws = torch.stack([
                prior.sample(self.n_samples, sampler=sampler, generator=gen,
                             guidance=guidance.bind(model, y[i:i + 1].expand(self.n_samples, *y.shape[1:])))
                for i in ctx.progress(range(len(y)), desc="observations")
            ])
        else:
            draws = prior.sample(self.n_samples, condition=y, sampler=sampler, generator=gen)
        ctx.save_checkpoint("posterior", {"samples": draws, "truth": truth, "observation": y})
        names = model.parameter_space.names if model.parameter_space is not None else ()
        ctx.save_figure("posterior", posterior_figure(draws, truth, names))
        metrics = _metrics_of(ctx, draws, truth)
        metrics["posterior_mean_rmse"] = float((draws.mean(dim=1) - truth).pow(2).mean().sqrt())
        return RunResult(metrics)


class _ParameterFit(nn.Module):
    def __init__(self, model, start):
        super().__init__()
        self.model = model
        self.x = nn.Parameter(start.clone())

    def forward(self):
        return self.model(self.x)

    def loss(self, prediction, observation):
        return self.model.loss(prediction, observation)


class RefineTask(Task):
    """Fit a parameter vector to one simulated observation from a perturbed start."""

    def __init__(self, start_offset: float = 0.3):
        self.start_offset = start_offset

    def run(self, ctx):
        model = ctx.build("forward_model")
        refiner = ctx.build("refiner")
        truth = model.example_input(1, generator=ctx.generator("truth"), dtype=ctx.dtype).to(ctx.device)
        y = model.simulate(truth, generator=ctx.generator("noise", device=ctx.device))
        space = model.parameter_space
        noise = torch.randn(truth.shape, generator=ctx.generator("start"), dtype=truth.dtype).to(ctx.device)
        if space is not None:
            start = space.denormalise(space.normalise(truth) + self.start_offset * noise)
        else:
            start = truth + self.start_offset * noise
        for p in model.parameters():
            p.requires_grad_(False)
        fit = _ParameterFit(model, start)
        result = refiner.refine(fit, y, generator=ctx.generator("refiner"))
        from emverse.figures import new_figure

        fig, axes = new_figure(1, 1, size=4)
        axes[0, 0].semilogy(result.history["loss"])
        axes[0, 0].set_xlabel("iteration")
        axes[0, 0].set_ylabel("loss")
        ctx.save_figure("loss", fig)
        ctx.add_table("refined parameters", ["parameter", "truth", "start", "refined"],
                      [[names, float(t), float(s), float(r)] for names, t, s, r in zip(
                          space.names if space else [f"x{i}" for i in range(truth.shape[-1])],
                          truth[0], start[0], fit.x.detach()[0], strict=True)])
        metrics = _metrics_of(ctx, fit.x.detach(), truth)
        metrics["final_loss"] = result.final_loss
        metrics["start_rmse"] = float((start - truth).pow(2).mean().sqrt())
        metrics["refined_rmse"] = float((fit.x.detach() - truth).pow(2).mean().sqrt())
        return RunResult(metrics)
