"""DDPM ancestral sampling (Ho et al. 2020) on any step grid.

From time s to an earlier time t (λ_t > λ_s), with x̂₀ = D(x_s, s) and
r = exp(λ_s − λ_t) = (α_s² σ_t²)/(σ_s² α_t²):

    mean = (α_t/α_s) · r · x_s + α_t · (1 − r) · x̂₀        (posterior q(x_t | x_s, x₀ = x̂₀))
    var  = σ_t² (1 − r)          variance="posterior" (β̃, the true posterior variance)
         = 1 − α_s²/α_t²         variance="beta": the forward variance σ²_{s|t}
                                 (β_t = 1 − ᾱ_t/ᾱ_{t−1} for one DDPM step)
    x_t  = mean + sqrt(var) · z

For a DDPM linear-β schedule with T steps and ``steps = T`` these are exactly
Ho et al.'s updates (β̃_t or β_t). The last step returns x̂₀.
"""

from __future__ import annotations

import math

from emverse.errors import EmverseError

from .base import DiffusionSampler, fresh_noise


class DDPMSampler(DiffusionSampler):
    def __init__(self, steps: int = 1000, variance: str = "posterior", **spacing):
        super().__init__(steps, **spacing)
        if variance not in ("posterior", "beta"):
            raise EmverseError(f"DDPM variance = {variance!r} is unknown; use 'posterior' or 'beta'")
        self.variance = variance

    def step(self, x, x0, at_s, at_t, generator, state):
        (a_s, _, lam_s), (a_t, s_t, lam_t) = at_s, at_t
        r = math.exp(lam_s - lam_t)
        mean = (a_t / a_s) * r * x + a_t * (1.0 - r) * x0
        if self.variance == "posterior":
            var = s_t**2 * (1.0 - r)
        else:
            var = max(1.0 - (a_s / a_t) ** 2, 0.0)
        return mean + math.sqrt(var) * fresh_noise(x, generator)
