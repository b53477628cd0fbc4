"""DDIM (Song, Meng & Ermon 2021) with stochasticity η.

From time s to an earlier time t, with x̂₀ = D(x_s, s), ε̂ = (x_s − α_s x̂₀)/σ_s
and r = exp(λ_s − λ_t):

    c²  = η² · σ_t² (1 − r)                  (η = 1: DDPM's posterior variance)
    x_t = α_t x̂₀ + sqrt(σ_t² − c²) · ε̂ + c · z

η = 0 is the deterministic DDIM (= Euler on the probability-flow ODE in the
variables x/α and σ/α); η = 1 equals DDPM ancestral sampling. The last step
returns x̂₀.
"""

from __future__ import annotations

import math

from emverse.errors import EmverseError

from .base import DiffusionSampler, fresh_noise


class DDIMSampler(DiffusionSampler):
    def __init__(self, steps: int = 50, eta: float = 0.0, **spacing):
        super().__init__(steps, **spacing)
        if not eta >= 0:
            raise EmverseError(f"DDIM eta = {eta!r} must be >= 0 (0: deterministic, 1: DDPM-like)")
        self.eta = float(eta)

    def step(self, x, x0, at_s, at_t, generator, state):
        (a_s, s_s, lam_s), (a_t, s_t, lam_t) = at_s, at_t
        eps = (x - a_s * x0) / s_s
        c2 = min(self.eta**2 * s_t**2 * (1.0 - math.exp(lam_s - lam_t)), s_t**2)
        x = a_t * x0 + math.sqrt(s_t**2 - c2) * eps
        if c2 > 0:
            x = x + math.sqrt(c2) * fresh_noise(x, generator)
        return x
