"""Diffusion posterior sampling (Chung et al. 2023) as a correction of the clean estimate.

Bound to a forward model A and an observation y, at each sampler step:

    x̂₀' = x̂₀ − w(t) · c(t) · ∇_{x_t} ℓ(y, A(x̂₀(x_t)))

with ℓ the negative log-likelihood per sample:

* ``likelihood="gaussian"``: ℓ = ‖y − A x̂₀‖² / (2 σ_y²)  (σ_y: ``noise_sigma``, else the
  model's ``GaussianNoise``, else 1);
* ``likelihood="poisson"``:  ℓ = Σ (dose·A x̂₀ − dose·y · log(dose·A x̂₀))  (``dose``: electrons
  per observation, else the model's ``PoissonNoise``);
* ``likelihood="amplitude"``: ℓ = ‖√(A x̂₀) − √y‖² / (2 σ_a²), the Gaussian likelihood of
  amplitudes used in ptychography (σ_a: ``noise_sigma``, in √observation units; else, for
  Poisson counts at ``dose`` (or the model's ``PoissonNoise``), the variance-stabilised
  σ_a = 1/(2√dose), since Var √N ≈ 1/4 for counts N; else 1);
* ``likelihood="model"``:    ℓ = −``forward_model.log_likelihood(A x̂₀, y)``.

These are the core's likelihood components (:mod:`emverse.likelihoods`); a recipe's
``[likelihood]`` table, bound with ``guidance.bind(model, y, likelihood)``, replaces
the choice made here.

``c(t) = σ_t²/α_t`` when ``tweedie`` is set: this is the exact factor that turns a
likelihood score into a change of the posterior mean (E[x₀|x_t] = (x_t + σ_t² ∇log p_t)/α_t),
so w = 1 is "DPS with the Tweedie scale". ``normalize`` rescales the gradient per
sample: ``"residual"`` divides it by √(2ℓ) (‖y − A x̂₀‖/σ_y for the Gaussian), i.e. the
gradient of the *unsquared* norm as in the original DPS code; ``"rms"`` divides it by
its root-mean-square over the sample's elements, so that w(t)·c(t) is the RMS size of
the correction in the prior's units whatever the physics' scale (MEP-Diffusion's
ptychography guidance, where the raw gradient is orders of magnitude off); ``"none"``
leaves it as it is. ``w(t)`` is a weight-schedule component
(:mod:`.weights`). The corrected estimate is what the sampler then uses, so DPS
works with every sampler (DDPM, DDIM, DPM-Solver++, Euler).

Observation shapes: ``y`` may be one observation (shape of one A(x)), one per
draw (batch, ...), or one per condition when the prior drew ``n`` samples per
observation (B, ...) with batch = B·n (repeated in that order).
"""

from __future__ import annotations

import torch
from emverse.errors import EmverseError
from emverse.interfaces import Guidance, Likelihood
from emverse.likelihoods import (
    AmplitudeLikelihood,
    GaussianLikelihood,
    ModelLikelihood,
    PoissonLikelihood,
)
from emverse.noise import GaussianNoise, PoissonNoise

from .weights import ConstantWeight, GuidanceWeight

LIKELIHOODS = ("gaussian", "poisson", "amplitude", "model")
NORMALIZATIONS = ("none", "residual", "rms")


class DPSGuidance(Guidance):
    def __init__(
        self,
        schedule: GuidanceWeight | None = None,
        likelihood: str = "gaussian",
        noise_sigma: float | None = None,
        dose: float | None = None,
        tweedie: bool = True,
        normalize: str = "none",
    ):
        if likelihood not in LIKELIHOODS:
            raise EmverseError(
                f"DPS likelihood = {likelihood!r} is unknown; use one of {', '.join(map(repr, LIKELIHOODS))}"
            )
        if noise_sigma is not None and not noise_sigma > 0:
            raise EmverseError(f"DPS noise_sigma = {noise_sigma!r} must be > 0 (observation units)")
        if dose is not None and not dose > 0:
            raise EmverseError(f"DPS dose = {dose!r} must be > 0 electrons")
        if normalize not in NORMALIZATIONS:
            raise EmverseError(
                f"DPS normalize = {normalize!r} is unknown; use one of {', '.join(map(repr, NORMALIZATIONS))}"
            )
        self.weight = schedule if schedule is not None else ConstantWeight(1.0)
        self.likelihood = likelihood
        self.noise_sigma, self.dose = noise_sigma, dose
        self.tweedie, self.normalize = bool(tweedie), normalize

    @classmethod
    def from_params(cls, params, ctx=None):
        weight = ctx.build_spec(params.schedule, "guidance_weight") if ctx is not None else None
        return cls(
            schedule=weight,
            likelihood=params.likelihood,
            noise_sigma=params.noise_sigma,
            dose=params.dose,
            tweedie=params.tweedie,
            normalize=params.normalize,
        )

    # ----------------------------------------------------------------------------
    def _observation_for(self, y_pred: torch.Tensor) -> torch.Tensor:
        y = torch.as_tensor(self.observation, device=y_pred.device, dtype=y_pred.dtype)
        event = tuple(y_pred.shape[1:])
        batch = y_pred.shape[0]
        if tuple(y.shape) == event:
            return y.expand(batch, *event)
        if tuple(y.shape[1:]) == event:
            if y.shape[0] == batch:
                return y
            if y.shape[0] and batch % y.shape[0] == 0:
                return y.repeat_interleave(batch // y.shape[0], dim=0)
        raise EmverseError(
            f"DPS: the forward model predicts observations of shape {event} (batch {batch}) but the "
            f"bound observation has shape {tuple(y.shape)}; bind an observation of shape {event} "
            f"(or ({batch}, {', '.join(map(str, event))})) matching this forward model"
        )

    def likelihood_for(self) -> Likelihood:
        """The data term: the bound ``[likelihood]`` component, else the one ``likelihood``
        names, its σ or dose taken from this guidance or the forward model's noise model."""
        if self.likelihood_term is not None:
            return self.likelihood_term
        noise = getattr(self.forward_model, "noise", None)
        if self.likelihood == "gaussian":
            sigma = self.noise_sigma or (noise.sigma if isinstance(noise, GaussianNoise) else 1.0)
            return GaussianLikelihood(sigma)
        if self.likelihood == "poisson":
            dose = self.dose or (noise.dose if isinstance(noise, PoissonNoise) else None)
            if dose is None:
                raise EmverseError(
                    "DPS poisson likelihood needs a dose: set guidance.dose or give the forward model "
                    "a PoissonNoise"
                )
            return PoissonLikelihood(dose)
        if self.likelihood == "amplitude":
            dose = self.dose or (noise.dose if isinstance(noise, PoissonNoise) else None)
            return AmplitudeLikelihood(sigma=self.noise_sigma, dose=dose)
        return ModelLikelihood(self.forward_model)

    def negative_log_likelihood(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """ℓ per sample, shape (batch,)."""
        return self.likelihood_for().negative_log_likelihood(y_pred, y)

    def correct(self, x_t, x0_hat, t, schedule):
        if self.forward_model is None or self.observation is None:
            raise EmverseError(
                "DPS guidance is not bound; call guidance.bind(forward_model, observation) before sampling"
            )
        y_pred = self.forward_model(x0_hat)
        y = self._observation_for(y_pred)
        nll = self.negative_log_likelihood(y_pred, y)
        (grad,) = torch.autograd.grad(nll.sum(), x_t)
        t = torch.as_tensor(t, dtype=torch.float64, device=x_t.device)
        scale = self.weight(t, schedule).to(x_t.device, torch.float64)
        if self.tweedie:
            alpha, sigma = schedule.alpha_sigma(t)
            scale = scale * sigma**2 / alpha
        if self.normalize == "residual":
            residual = (2.0 * nll.detach()).clamp_min(1e-12).sqrt().to(torch.float64)
            scale = scale / residual
        elif self.normalize == "rms":
            rms = grad.detach().reshape(grad.shape[0], -1).to(torch.float64).pow(2).mean(1).sqrt()
            scale = scale / rms.clamp_min(1e-30)
        shape = (x_t.shape[0],) + (1,) * (x_t.ndim - 1)
        return x0_hat.detach() - scale.to(x_t.dtype).reshape(shape) * grad
