"""Diffusion priors with an exact denoiser: Gaussian data (for testing samplers and guidance).

For x₀ ~ N(μ, C) and x_t = α x₀ + σ ε the posterior mean is exact:

    E[x₀ | x_t] = μ + α C (α² C + σ² I)⁻¹ (x_t − α μ)

so any sampler run on this prior must return draws from N(μ, C) up to its
discretisation error. ``mean`` may depend on a condition through
``mean_map(condition) -> (batch, d)`` (a conditional Gaussian such as the exact
posterior of a linear-Gaussian inverse problem).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from emverse.interfaces import DiffusionPrior

from .schedules import NoiseSchedule


class GaussianDiffusionPrior(DiffusionPrior):
    """Exact-denoiser prior for Gaussian data N(``mean``, ``covariance``) in d dimensions."""

    def __init__(
        self,
        mean: torch.Tensor,
        covariance: torch.Tensor,
        schedule: NoiseSchedule,
        mean_map: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean))
        self.register_buffer("covariance", torch.as_tensor(covariance, dtype=self.mean.dtype))
        self.schedule = schedule
        self.mean_map = mean_map
        self.event_shape = (self.mean.shape[-1],)

    def denoise(self, x_t, t, condition=None):
        t = torch.as_tensor(t, dtype=torch.float64, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        mu = self.mean.to(x_t.dtype).expand(x_t.shape[0], -1)
        if self.mean_map is not None and condition is not None:
            mu = self.mean_map(condition).to(x_t.dtype)
        cov = self.covariance.to(x_t.dtype)
        eye = torch.eye(cov.shape[0], dtype=x_t.dtype, device=x_t.device)
        # samplers call with one time for the whole batch: one d×d solve then
        times = t.unique() if t.numel() > 1 else t.reshape(1)
        if times.numel() == 1:
            alpha, sigma = (v.to(x_t.dtype) for v in self.schedule.alpha_sigma(times[0].double()))
            # gain = α C (α² C + σ² I)⁻¹ (C symmetric): solve on the transposed system
            gain = alpha * torch.linalg.solve(alpha**2 * cov + sigma**2 * eye, cov).T
            return mu + (x_t - alpha * mu) @ gain.T
        alpha, sigma = self.schedule.alpha_sigma(t.double())
        alpha, sigma = alpha.to(x_t.dtype)[:, None, None], sigma.to(x_t.dtype)[:, None, None]
        system = alpha**2 * cov + sigma**2 * eye  # (batch, d, d)
        residual = (x_t - alpha[:, :, 0] * mu)[..., None]
        gain = alpha * (cov @ torch.linalg.solve(system, residual))
        return mu + gain[..., 0]
