"""DPM-Solver++(2M) (Lu et al. 2022) and its SDE variant, in the VP form.

With h = (λ_t − λ_s)/2 (λ = logSNR, so λ/2 = log(α/σ)), x̂₀ᵢ = D(x_s, s) and
the previous step's x̂₀ᵢ₋₁ and h_prev:

ODE (``DPMSolverPP2MSampler``: the SDE below at η = 0, the same update rearranged)::

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

from .base import DiffusionSampler, fresh_noise


class DPMSolverPP2MSDESampler(DiffusionSampler):
    def __init__(self, steps: int = 20, eta: float = 1.0, spacing: str = "logsnr", **ladder):
        super().__init__(steps, spacing=spacing, **ladder)
        if not eta >= 0:
            raise EmverseError(f"DPM-Solver++ SDE eta = {eta!r} must be >= 0 (1 is the usual SDE)")
        self.eta = float(eta)

    def step(self, x, x0, at_s, at_t, generator, state):
        (_, s_s, lam_s), (a_t, s_t, lam_t) = at_s, at_t
        h = 0.5 * (lam_t - lam_s)
        eta_h = self.eta * h
        gain = -math.expm1(-h - eta_h)  # 1 − e^{−(1+η)h}
        x = (s_t / s_s) * math.exp(-eta_h) * x + a_t * gain * x0
        if "x0" in state:
            r = state["h"] / h
            x = x + 0.5 * a_t * gain * (x0 - state["x0"]) / r
        if self.eta > 0:
            x = x + s_t * math.sqrt(-math.expm1(-2.0 * eta_h)) * fresh_noise(x, generator)
        state["x0"], state["h"] = x0, h
        return x


class DPMSolverPP2MSampler(DPMSolverPP2MSDESampler):
    """The ODE: the SDE update at η = 0, which is the 2M formula above rearranged
    (α_t (1 − e^{−h}) [x̂₀ᵢ + (x̂₀ᵢ − x̂₀ᵢ₋₁)/(2r)] = −α_t (e^{−h} − 1) D)."""

    def __init__(self, steps: int = 20, spacing: str = "logsnr", **ladder):
        super().__init__(steps, eta=0.0, spacing=spacing, **ladder)
