"""The generic tasks the core offers: ``simulate``, ``infer``, ``refine``."""

from __future__ import annotations

import torch

from emverse.builtin.parametrizations import ParameterVector
from emverse.errors import EmverseError
from emverse.figures import observations_figure, posterior_figure
from emverse.interfaces import Task
from emverse.likelihoods import ModelLikelihood
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
        likelihood = ctx.build("likelihood") if ctx.has("likelihood") else None
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
                             guidance=guidance.bind(model, y[i:i + 1].expand(self.n_samples, *y.shape[1:]),
                                                      likelihood))
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


class RefineTask(Task):
    """Fit a parametrization to one simulated observation from a perturbed start.

    Built from the recipe's joints: ``[forward_model]``, ``[refiner]``, and optionally
    ``[likelihood]`` (default: the forward model's own noise model) and
    ``[parametrization]`` (default: ``core.parameter_vector``, all parameters free).
    The truth is drawn from the forward model's parameter space; the observation is the
    likelihood's draw around the prediction where the likelihood is generative, else the
    forward model's ``simulate``.
    """

    def __init__(self, start_offset: float = 0.3):
        self.start_offset = start_offset

    def run(self, ctx):
        model = ctx.build("forward_model")
        refiner = ctx.build("refiner")
        likelihood = ctx.build("likelihood") if ctx.has("likelihood") else ModelLikelihood(model)
        parametrization = ctx.build("parametrization") if ctx.has("parametrization") else ParameterVector()
        for p in model.parameters():
            p.requires_grad_(False)
        truth = model.example_input(1, generator=ctx.generator("truth"), dtype=ctx.dtype).to(ctx.device)
        y = _observe(model, likelihood, truth, ctx.generator("noise", device=ctx.device))
        space = model.parameter_space
        noise = torch.randn(truth.shape, generator=ctx.generator("start"), dtype=truth.dtype).to(ctx.device)
        if space is not None:
            start = space.denormalise((space.normalise(truth) + self.start_offset * noise).clamp(-1, 1))
        else:
            start = truth + self.start_offset * noise
        if isinstance(parametrization, ParameterVector):
            parametrization.start_at(model, start)
        parametrization.to(device=ctx.device)
        result = refiner.run(parametrization, model, likelihood, y, generator=ctx.generator("refiner"))
        refined = parametrization().detach()
        from emverse.figures import new_figure

        fig, axes = new_figure(1, 1, size=4)
        axes[0, 0].semilogy(result.history["loss"])
        axes[0, 0].set_xlabel("iteration")
        axes[0, 0].set_ylabel("negative log-likelihood")
        ctx.save_figure("loss", fig)
        names = space.names if space else [f"x{i}" for i in range(truth.shape[-1])]
        units = space.units if space else [""] * truth.shape[-1]
        ctx.add_table("refined parameters", ["parameter", "unit", "truth", "start", "refined"],
                      [[name, unit, float(t), float(s), float(r)] for name, unit, t, s, r in zip(
                          names, units, truth[0], start[0], refined[0], strict=True)])
        metrics = _metrics_of(ctx, refined, truth)
        metrics["final_loss"] = result.final_loss
        metrics["iterations"] = float(result.iterations)
        metrics["start_rmse"] = float((start - truth).pow(2).mean().sqrt())
        metrics["refined_rmse"] = float((refined - truth).pow(2).mean().sqrt())
        return RunResult(metrics)


def _observe(model, likelihood, truth, generator):
    """A noisy observation of ``truth``: the likelihood's draw where it can make one."""
    if isinstance(likelihood, ModelLikelihood):
        return model.simulate(truth, generator=generator)
    with torch.no_grad():
        try:
            return likelihood.sample(model(truth), generator)
        except NotImplementedError:
            return model.simulate(truth, generator=generator)


class EvaluateTask(Task):
    """Every ``[[compare]]`` method on the same simulated test set, scored once, here.

    Truths are drawn from the forward model's parameter space; each observation is
    simulated once (``[likelihood]``'s draw, else the model's noise) and every method
    sees the same observation and, for refiners, the same start. Scores per observation:
    the squared error of the estimate in normalised units (mean over parameters) and the
    ``[[metrics]]``; the first method is compared with each other one by a paired
    bootstrap of the per-observation scores (:func:`emverse.statistics.paired_bootstrap`).
    """

    def __init__(self, n_observations: int = 10, start_offset: float = 0.3, n_boot: int = 2000,
                 confidence: float = 0.95):
        self.n_observations, self.start_offset = n_observations, start_offset
        self.n_boot, self.confidence = n_boot, confidence

    def run(self, ctx):
        import numpy as np

        from emverse.statistics import paired_bootstrap

        model = ctx.build("forward_model")
        for p in model.parameters():
            p.requires_grad_(False)
        likelihood = ctx.build("likelihood") if ctx.has("likelihood") else None
        methods = ctx.build("compare")
        space = model.parameter_space
        if space is None:
            raise EmverseError("task 'evaluate' needs a [forward_model] with a parameter_space")
        truth = model.example_input(self.n_observations, generator=ctx.generator("truth"),
                                    dtype=ctx.dtype).to(ctx.device)
        noise_gen = ctx.generator("noise", device=ctx.device)
        observations = torch.cat([
            _observe(model, likelihood or ModelLikelihood(model), truth[i:i + 1], noise_gen)
            for i in range(len(truth))])
        offsets = torch.randn(truth.shape, generator=ctx.generator("start"), dtype=truth.dtype).to(ctx.device)
        starts = space.denormalise((space.normalise(truth) + self.start_offset * offsets).clamp(-1, 1))
        scores: dict[str, torch.Tensor] = {}
        metrics: dict[str, float] = {}
        for m_index, method in enumerate(methods):
            gen = ctx.generator(f"method{m_index}", device=ctx.device)
            estimates = []
            for i in ctx.progress(range(len(truth)), desc=method.label):
                estimates.append(method.estimate(ctx, model, likelihood, observations[i:i + 1],
                                                 starts[i:i + 1], gen).point)
            estimate = torch.cat(estimates)
            error = (space.normalise(estimate) - space.normalise(truth)).pow(2).mean(dim=1)
            scores[method.label] = error
            metrics[f"{method.label}.normalised_mse"] = float(error.mean())
            metrics[f"{method.label}.normalised_rmse"] = float(error.mean().sqrt())
            for key, value in _metrics_of(ctx, estimate, truth).items():
                metrics[f"{method.label}.{key}"] = value
        labels = list(scores)
        rows = []
        for other in labels[1:]:
            result = paired_bootstrap(scores[labels[0]], scores[other], n_boot=self.n_boot,
                                      confidence=self.confidence,
                                      rng=np.random.default_rng(int(ctx.seed)))
            key = f"paired.{labels[0]}_minus_{other}"
            metrics[key] = result.difference
            metrics[key + "_low"] = result.ci_low
            metrics[key + "_high"] = result.ci_high
            metrics[key + "_p"] = result.p_value
            rows.append([labels[0], other, result.difference, result.ci_low, result.ci_high, result.p_value])
        ctx.add_table("methods (normalised MSE per observation, mean)", ["method", "normalised MSE"],
                      [[label, float(scores[label].mean())] for label in labels])
        if rows:
            ctx.add_table(f"paired bootstrap ({self.confidence:.0%} interval of the mean difference)",
                          ["A", "B", "mean(A - B)", "low", "high", "p"], rows)
        return RunResult(metrics)
