"""The linear-Gaussian forward model: the smallest complete emverse ForwardModel."""

from __future__ import annotations

import torch
from emverse.interfaces import ForwardModel
from emverse.noise import GaussianNoise
from emverse.parameter_space import Parameter, ParameterSpace


class LinearGaussian(ForwardModel):
    """y = A x + ε, ε ~ N(0, σ² I).

    ``x``: (batch, dim_x) in arbitrary units; returns (batch, dim_y). ``A``
    (dim_y, dim_x) has N(0, 1/dim_x) entries drawn from ``matrix_seed``, so the
    same parameters always give the same operator.
    """

    def __init__(self, dim_x: int = 4, dim_y: int = 6, noise_sigma: float = 0.3,
                 matrix_seed: int = 0, bound: float = 2.0):
        super().__init__(noise=GaussianNoise(noise_sigma))
        gen = torch.Generator().manual_seed(matrix_seed)
        matrix = torch.randn(dim_y, dim_x, generator=gen, dtype=torch.float64) / dim_x**0.5
        self.register_buffer("matrix", matrix)
        self.noise_sigma = noise_sigma
        self.parameter_space = ParameterSpace(
            [Parameter(f"x{i}", "1", -bound, bound) for i in range(dim_x)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.matrix.shape[1]:
            raise ValueError(f"x has {x.shape[-1]} components; this model takes dim_x = {self.matrix.shape[1]}")
        return x @ self.matrix.to(x.dtype).T
