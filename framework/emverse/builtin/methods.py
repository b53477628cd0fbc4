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
        n = self.n_samples
        if self.sampler is None and hasattr(self.prior, "exact_posterior"):
            draws = self.prior.exact_posterior(model, y[0]).sample((n,))
        elif self.guidance is not None:
            bound = self.guidance.bind(model, y.expand(n, *y.shape[1:]), likelihood)
            draws = self.prior.sample(n, sampler=self.sampler, guidance=bound, generator=generator)
        else:
            draws = self.prior.sample(n, condition=y, sampler=self.sampler, generator=generator)[0]
        draws = draws.reshape(n, -1).detach()
        return Estimate(draws.mean(dim=0, keepdim=True), draws)
