"""Euler sampler in the variance-exploding picture, with optional "churn" (Karras et al. 2022, Alg. 2).

Work with y = x/α and σ̃ = σ/α = exp(−λ/2) (so y = x₀ + σ̃ ε). Per step from
σ̃ᵢ to σ̃ᵢ₊₁:

    γ   = min(churn/steps, √2 − 1) if churn_min ≤ σ̃ᵢ ≤ churn_max else 0
    σ̂   = σ̃ᵢ (1 + γ)   (capped at σ̃(t = 1)),  y ← y + sqrt(σ̂² − σ̃ᵢ²) · noise_scale · z
    d   = (y − D(y, σ̂)) / σ̂
    y   ← y + (σ̃ᵢ₊₁ − σ̂) d

With ``churn = 0`` this is the deterministic Euler step of the probability-flow
ODE, which coincides with DDIM (η = 0). The last step returns x̂₀.
"""

from __future__ import annotations

import math

import torch
from emverse.errors import EmverseError

from .base import DiffusionSampler, clean_estimate, device_dtype, fresh_noise, start_noise


class EulerSampler(DiffusionSampler):
    def __init__(
        self,
        steps: int = 50,
        churn: float = 0.0,
        churn_min: float = 0.0,
        churn_max: float = float("inf"),
        noise_scale: float = 1.0,
        spacing: str = "uniform",
        **ladder,
    ):
        super().__init__(steps, spacing=spacing, **ladder)
        if not churn >= 0:
            raise EmverseError(f"Euler churn = {churn!r} must be >= 0 (0: deterministic)")
        self.churn, self.churn_min, self.churn_max = float(churn), float(churn_min), float(churn_max)
        self.noise_scale = float(noise_scale)

    def sample(self, prior, shape, condition=None, guidance=None, generator=None):
        device, dtype = device_dtype(prior, condition)
        schedule = prior.schedule
        x = start_noise(shape, generator, device, dtype)
        grid = self.times(prior).tolist()
        sigma_top = float(schedule.sigma_ve(torch.tensor(1.0, dtype=torch.float64)))
        alpha_start = float(schedule.alpha(torch.tensor(grid[0], dtype=torch.float64)))
        y = x / alpha_start
        for s, t in self.intervals(grid):
            sig = float(schedule.sigma_ve(torch.tensor(s, dtype=torch.float64)))
            gamma = 0.0
            if self.churn > 0 and self.churn_min <= sig <= self.churn_max:
                gamma = min(self.churn / self.steps, math.sqrt(2.0) - 1.0)
            sig_hat = min(sig * (1.0 + gamma), sigma_top)
            if sig_hat > sig:
                y = y + math.sqrt(sig_hat**2 - sig**2) * self.noise_scale * fresh_noise(y, generator)
                s = float(schedule.t_from_logsnr(torch.tensor(-2.0 * math.log(sig_hat), dtype=torch.float64)))
            alpha_hat = float(schedule.alpha(torch.tensor(s, dtype=torch.float64)))
            x0 = clean_estimate(prior, alpha_hat * y, s, condition, guidance)
            if t == 0.0:
                return x0
            sig_next = float(schedule.sigma_ve(torch.tensor(t, dtype=torch.float64)))
            y = y + (sig_next - sig_hat) * (y - x0) / sig_hat
        return x0
