"""An isotropic Gaussian prior and the exact posterior it gives with a linear-Gaussian model."""

from __future__ import annotations

import torch
from emverse.interfaces import Prior
from torch.distributions import MultivariateNormal


class GaussianPrior(Prior):
    """x ~ N(mean·1, std² I) in ``dim`` dimensions."""

    def __init__(self, dim: int = 4, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.dim, self.mean, self.std = dim, mean, std
        self.event_shape = (dim,)

    def _distribution(self, dtype=torch.float64) -> MultivariateNormal:
        loc = torch.full((self.dim,), float(self.mean), dtype=dtype)
        return MultivariateNormal(loc, covariance_matrix=self.std**2 * torch.eye(self.dim, dtype=dtype))

    def sample(self, n, condition=None, sampler=None, guidance=None, generator=None):
        if condition is not None or guidance is not None:
            raise ValueError("GaussianPrior draws from the prior only; use exact_posterior() for p(x | y)")
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.mean + self.std * z

    def log_prob(self, x):
        return self._distribution(x.dtype).log_prob(x)

    def exact_posterior(self, model, y: torch.Tensor) -> MultivariateNormal:
        """p(x | y) for y = A x + N(0, σ²): precision P = I/s² + AᵀA/σ², mean = P⁻¹(Aᵀy/σ² + m/s²)."""
        A = model.matrix.to(torch.float64)
        sigma2 = model.noise_sigma**2
        y = y.to(torch.float64).reshape(-1)
        precision = torch.eye(self.dim, dtype=torch.float64) / self.std**2 + A.T @ A / sigma2
        covariance = torch.linalg.inv(precision)
        covariance = 0.5 * (covariance + covariance.T)
        mean = covariance @ (A.T @ y / sigma2 + self.mean / self.std**2)
        return MultivariateNormal(mean, covariance_matrix=covariance)
