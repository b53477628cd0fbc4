"""CbLDM's accelerated latent sampler (a :class:`Sampler`; holds no weights).

DDIM steps (η = ``eta``) on a uniform grid of ``steps`` intervals over t ∈ [0, 1]:

    x_s = α_s x̂_0 + √(σ_s² − c²) ε̂ + c ξ,   c = η σ_s/σ_t √(1 − α_t² σ_s² / (α_s² σ_t²))

Acceleration (CbLDM Eq. 1–2 in continuous time): denoise from t = 1 to t₁, draw
z_c ~ p(z | PDF) from the prior's conditional prior, then re-noise it to t₂ ≤ t₁
with the noise implied by x_{t₁}:

    x_{t₂} = α_{t₂} z_c + (σ_{t₂}/σ_{t₁}) (x_{t₁} − α_{t₁} z_c),

and denoise from t₂ to 0. With t₁ = t₂ = 1 the jump is the identity and this is
plain DDIM latent diffusion. The prior must provide ``denoise`` and
``conditional_prior_sample(condition, generator)``; ``predict_noise`` with a cached
``embedding`` is used when present.
"""

from __future__ import annotations

import torch
from emverse.errors import EmverseError
from emverse.interfaces import Sampler


class AcceleratedSampler(Sampler):
    def __init__(self, steps: int = 50, t1: float = 1.0, t2: float = 1.0, eta: float = 0.0):
        if t2 > t1:
            raise EmverseError(
                f"t2 = {t2} must be ≤ t1 = {t1}; re-noising goes back to an earlier time"
            )
        self.steps, self.t1, self.t2, self.eta = int(steps), float(t1), float(t2), float(eta)
        self.n_before = int(round((1.0 - self.t1) * self.steps))
        self.n_after = int(round(self.t2 * self.steps))
        if self.n_after < 1:
            raise EmverseError(
                f"t2 = {t2} with steps = {steps} leaves no step after the jump; raise t2"
            )

    @property
    def nfe(self) -> int:
        """Network evaluations per draw."""
        return self.n_before + self.n_after

    def _step(self, prior, x, t, s, condition, embedding, generator):
        n = x.shape[0]
        tt = torch.full((n,), t, dtype=x.dtype, device=x.device)
        if hasattr(prior, "predict_noise") and embedding is not None:
            eps = prior.predict_noise(x, tt, None, embedding=embedding)
            a_t, s_t = prior.schedule.alpha_sigma(tt)
            x0 = ((x - s_t.view(-1, 1, 1, 1) * eps) / a_t.view(-1, 1, 1, 1)).clamp(-8.0, 8.0)
        else:
            x0 = prior.denoise(x, tt, condition)
        a_t, s_t = (v.view(-1, 1, 1, 1) for v in prior.schedule.alpha_sigma(tt))
        # recompute ε from the (clipped) x̂_0 so the step is consistent
        eps = (x - a_t * x0) / s_t
        if s <= 0.0:
            return x0
        ss = torch.full((n,), s, dtype=x.dtype, device=x.device)
        a_s, s_s = (v.view(-1, 1, 1, 1) for v in prior.schedule.alpha_sigma(ss))
        c = self.eta * (s_s / s_t) * (1 - (a_t * s_s) ** 2 / (a_s * s_t) ** 2).clamp_min(0).sqrt()
        x = a_s * x0 + (s_s**2 - c**2).clamp_min(0).sqrt() * eps
        if self.eta > 0:
            x = x + c * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return x

    @torch.no_grad()
    def sample(self, prior, shape, condition=None, guidance=None, generator=None):
        if guidance is not None:
            raise EmverseError(
                "cbldm.accelerated does not take guidance; remove the [guidance] table"
            )
        if condition is None:
            raise EmverseError(
                "cbldm.accelerated needs the PDF condition (normalised G(r), shape (B, 3000))"
            )
        device = condition.device
        dtype = condition.dtype
        x = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        embedding = prior.embed(condition) if hasattr(prior, "embed") else None
        dt = 1.0 / self.steps
        t = 1.0
        for k in range(self.n_before):
            s = 1.0 - (k + 1) * dt
            x = self._step(prior, x, t, s, condition, embedding, generator)
            t = s
        if self.t2 < 1.0 or self.t1 < 1.0:
            t1 = 1.0 - self.n_before * dt
            t2 = self.n_after * dt
            z_c = prior.conditional_prior_sample(condition, generator=generator)
            a1, s1 = prior.schedule.alpha_sigma(torch.tensor(t1, dtype=torch.float64))
            a2, s2 = prior.schedule.alpha_sigma(torch.tensor(t2, dtype=torch.float64))
            x = float(a2) * z_c + float(s2 / s1) * (x - float(a1) * z_c)
            t = t2
        for _ in range(self.n_after):
            s = t - dt
            x = self._step(prior, x, t, max(s, 0.0), condition, embedding, generator)
            t = s
        return x
