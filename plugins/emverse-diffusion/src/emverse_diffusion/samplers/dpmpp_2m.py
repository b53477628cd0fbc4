"""DPM-Solver++(2M) (Lu et al. 2022) and its SDE variant, in the VP form.

With h = (λ_t − λ_s)/2 (λ = logSNR, so λ/2 = log(α/σ)), x̂₀ᵢ = D(x_s, s) and
the previous step's x̂₀ᵢ₋₁ and h_prev:

ODE (``DPMSolverPP2MSampler``)::

    r  = h_prev / h
    D  = (1 + 1/(2r)) x̂₀ᵢ − 1/(2r) x̂₀ᵢ₋₁        (first step: D = x̂₀ᵢ)
    x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D

SDE (``DPMSolverPP2MSDESampler``, stochasticity η, midpoint form)::

    x_t = (σ_t/σ_s) e^{−ηh} x_s + α_t (1 − e^{−(1+η)h}) x̂₀ᵢ
          + ½ α_t (1 − e^{−(1+η)h}) (x̂₀ᵢ − x̂₀ᵢ₋₁)/r               (not on the first step)
          + σ_t sqrt(1 − e^{−2ηh}) z

The last step (t = 0) returns x̂₀. A log-SNR or Karras spacing suits these
solvers best; 10–25 steps are typical.
"""

from __future__ import annotations

import math

from emverse.errors import EmverseError

from .base import (
    DiffusionSampler,
    alpha_sigma_logsnr,
    clean_estimate,
    device_dtype,
    fresh_noise,
    start_noise,
)


class DPMSolverPP2MSampler(DiffusionSampler):
    def __init__(self, steps: int = 20, spacing: str = "logsnr", **ladder):
        super().__init__(steps, spacing=spacing, **ladder)

    def sample(self, prior, shape, condition=None, guidance=None, generator=None):
        device, dtype = device_dtype(prior, condition)
        x = start_noise(shape, generator, device, dtype)
        grid = self.times(prior).tolist()
        x0_prev, h_prev = None, None
        for s, t in self.intervals(grid):
            x0 = clean_estimate(prior, x, s, condition, guidance)
            if t == 0.0:
                return x0
            a_s, s_s, lam_s = alpha_sigma_logsnr(prior.schedule, s)
            a_t, s_t, lam_t = alpha_sigma_logsnr(prior.schedule, t)
            h = 0.5 * (lam_t - lam_s)
            if x0_prev is None:
                d = x0
            else:
                r = h_prev / h
                d = (1.0 + 1.0 / (2.0 * r)) * x0 - (1.0 / (2.0 * r)) * x0_prev
            x = (s_t / s_s) * x - a_t * math.expm1(-h) * d
            x0_prev, h_prev = x0, h
        return x


class DPMSolverPP2MSDESampler(DiffusionSampler):
    def __init__(self, steps: int = 20, eta: float = 1.0, spacing: str = "logsnr", **ladder):
        super().__init__(steps, spacing=spacing, **ladder)
        if not eta >= 0:
            raise EmverseError(f"DPM-Solver++ SDE eta = {eta!r} must be >= 0 (1 is the usual SDE)")
        self.eta = float(eta)

    def sample(self, prior, shape, condition=None, guidance=None, generator=None):
        device, dtype = device_dtype(prior, condition)
        x = start_noise(shape, generator, device, dtype)
        grid = self.times(prior).tolist()
        x0_prev, h_prev = None, None
        for s, t in self.intervals(grid):
            x0 = clean_estimate(prior, x, s, condition, guidance)
            if t == 0.0:
                return x0
            a_s, s_s, lam_s = alpha_sigma_logsnr(prior.schedule, s)
            a_t, s_t, lam_t = alpha_sigma_logsnr(prior.schedule, t)
            h = 0.5 * (lam_t - lam_s)
            eta_h = self.eta * h
            gain = -math.expm1(-h - eta_h)  # 1 − e^{−(1+η)h}
            x = (s_t / s_s) * math.exp(-eta_h) * x + a_t * gain * x0
            if x0_prev is not None:
                r = h_prev / h
                x = x + 0.5 * a_t * gain * (x0 - x0_prev) / r
            if self.eta > 0:
                x = x + s_t * math.sqrt(-math.expm1(-2.0 * eta_h)) * fresh_noise(x, generator)
            x0_prev, h_prev = x0, h
        return x
