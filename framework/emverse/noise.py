"""Noise models: how a detector turns an expected signal into counts.

Each model samples a noisy observation from the noiseless prediction with an
explicit ``torch.Generator`` and gives the log-likelihood used by refiners and
guidance. Both work batch-first: ``log_likelihood`` sums over every axis but
the first and returns shape (batch,).
"""

from __future__ import annotations

import math

import torch


class NoiseModel:
    def sample(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def log_likelihood(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class NoNoise(NoiseModel):
    """Deterministic observation; the likelihood is a unit Gaussian misfit."""

    def sample(self, y, generator=None):
        return y

    def log_likelihood(self, y_pred, y):
        return -0.5 * sum_but_batch((y_pred - y) ** 2)


class GaussianNoise(NoiseModel):
    """Additive white Gaussian noise with standard deviation ``sigma`` (observation units)."""

    def __init__(self, sigma: float):
        if not sigma > 0:
            raise ValueError(f"Gaussian noise sigma must be > 0, got {sigma!r}")
        self.sigma = float(sigma)

    def sample(self, y, generator=None):
        noise = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
        return y + self.sigma * noise

    def log_likelihood(self, y_pred, y):
        n = y[0].numel()
        misfit = sum_but_batch((y_pred - y) ** 2) / (2 * self.sigma**2)
        return -misfit - n * math.log(self.sigma * math.sqrt(2 * math.pi))


class PoissonNoise(NoiseModel):
    """Counting noise: the prediction is a probability per pixel that ``dose`` electrons hit.

    ``dose`` is the expected number of electrons per observation (for a
    probe: e⁻/Å² times the area it illuminates). ``sample`` returns counts
    divided by ``dose`` so observations stay in the units of the prediction.
    """

    def __init__(self, dose: float):
        if not dose > 0:
            raise ValueError(f"Poisson dose must be > 0 electrons, got {dose!r}")
        self.dose = float(dose)

    def sample(self, y, generator=None):
        rate = (y.clamp_min(0) * self.dose).detach()
        return torch.poisson(rate, generator=generator) / self.dose

    def log_likelihood(self, y_pred, y):
        rate = y_pred.clamp_min(1e-12) * self.dose
        counts = y * self.dose
        return sum_but_batch(counts * torch.log(rate) - rate - torch.lgamma(counts + 1))


def sum_but_batch(t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over every axis but the first (shape (batch,)); where ``mask`` is False the
    element does not count. A 0-d tensor is one batch element."""
    if mask is not None:
        t = torch.where(mask, t, torch.zeros_like(t))
    if t.dim() == 0:
        return t.reshape(1)
    return t.reshape(t.shape[0], -1).sum(dim=1)
