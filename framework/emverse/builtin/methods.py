"""Methods an ``evaluate`` run compares (``[[compare]]`` tables): each turns an observation
into an estimate of the unknown, built only from registered components.

* ``core.refine``: a refiner (+ optional parametrization and likelihood) from a start;
* ``core.infer``: a prior + sampler (+ optional guidance bound to the forward model and the
  likelihood); its estimate is the posterior mean, and its draws are kept for
  calibration metrics.
"""

from __future__ import annotations

import copy

import attrs
import torch

from emverse.builtin.parametrizations import ParameterVector
from emverse.likelihoods import ModelLikelihood
from emverse.parameter_space import check_same_space


@attrs.define
class Estimate:
    """What a method returns for one observation: a point estimate (1, n) and, for
    posterior methods, the draws (n_samples, n)."""

    point: torch.Tensor
    samples: torch.Tensor | None = None


class RefineMethod:
    def __init__(self, label: str, refiner, parametrization=None, likelihood=None):
        self.label, self.refiner = label, refiner
        self.parametrization, self.likelihood = parametrization, likelihood

    @classmethod
    def from_params(cls, params, ctx):
        return cls(
            params.label,
            ctx.build_spec(params.refiner, "refiner"),
            ctx.build_spec(params.parametrization, "parametrization") if params.parametrization else None,
            ctx.build_spec(params.likelihood, "likelihood") if params.likelihood else None,
        )

    def estimate(self, ctx, model, likelihood, y, start, generator) -> Estimate:
        if self.parametrization is None or isinstance(self.parametrization, ParameterVector):
            free = self.parametrization.free if self.parametrization is not None else ()
            parametrization = ParameterVector(free).start_at(model, start)
        else:  # a fresh copy per observation: no observation starts where the last one ended
            parametrization = copy.deepcopy(self.parametrization)
        data_term = self.likelihood or likelihood or ModelLikelihood(model)
        self.refiner.run(parametrization, model, data_term, y, generator=generator)
        return Estimate(parametrization().detach())


class InPriorUnits(torch.nn.Module):
    """The forward model seen from the prior's coordinates: x ↦ model(prior.physical(x))."""

    def __init__(self, model, prior):
        super().__init__()
        self.model, self.prior = model, prior
        self.noise = model.noise

    def forward(self, x):
        return self.model(self.prior.physical(x))


def prepare_prior(prior, model, source: str = "[prior]") -> None:
    """Ready a prior to draw posteriors through ``model``: inference mode (BatchNorm running
    statistics, no dropout), and the forward model's parameter space — a prior that takes the
    space is given it (``use_parameter_space``); one trained on its own space (e.g. a CDI
    checkpoint) must have the model's names and bounds, or its draws would be mapped to the
    wrong units."""
    if isinstance(prior, torch.nn.Module):
        prior.eval()
    space = model.parameter_space
    if hasattr(prior, "use_parameter_space"):
        prior.use_parameter_space(space)
    elif space is not None and getattr(prior, "parameter_space", None) is not None:
        check_same_space(space, prior.parameter_space, f"{source} {type(prior).__name__}")


def posterior_draws(prior, sampler, guidance, model, likelihood, y, n_samples: int, generator) -> torch.Tensor:
    """``n_samples`` draws (n_samples, P) of the posterior of one observation ``y`` (1, ...), in
    the forward model's units (``prior.physical``). Three ways, chosen by what is given: a
    prior with an exact posterior and no sampler; a prior + sampler + guidance bound to the
    forward model (seen from the prior's coordinates) and ``likelihood``; or a conditional
    prior + sampler (condition = the observation). The ``infer`` task and the ``core.infer``
    method both draw through here."""
    if sampler is None and hasattr(prior, "exact_posterior"):
        return prior.exact_posterior(model, y[0]).sample((n_samples,))
    if guidance is not None:
        bound = guidance.bind(InPriorUnits(model, prior), y.expand(n_samples, *y.shape[1:]), likelihood)
        draws = prior.sample(n_samples, condition=y if getattr(prior, "conditional", False) else None,
                             sampler=sampler, generator=generator, guidance=bound)
        return prior.physical(draws.reshape(n_samples, -1))
    return prior.physical(prior.sample(n_samples, condition=y, sampler=sampler, generator=generator))[0]


class InferMethod:
    def __init__(self, label: str, prior, sampler=None, guidance=None, n_samples: int = 100):
        self.label, self.prior, self.sampler, self.guidance = label, prior, sampler, guidance
        self.n_samples = n_samples

    @classmethod
    def from_params(cls, params, ctx):
        return cls(
            params.label,
            ctx.build_spec(params.prior, "prior"),
            ctx.build_spec(params.sampler, "sampler") if params.sampler else None,
            ctx.build_spec(params.guidance, "guidance") if params.guidance else None,
            params.n_samples,
        )

    def estimate(self, ctx, model, likelihood, y, start, generator) -> Estimate:
        prepare_prior(self.prior, model, f"[[compare]] {self.label!r} prior")
        draws = posterior_draws(self.prior, self.sampler, self.guidance, model, likelihood, y,
                                self.n_samples, generator).reshape(self.n_samples, -1).detach()
        return Estimate(draws.mean(dim=0, keepdim=True), draws)
