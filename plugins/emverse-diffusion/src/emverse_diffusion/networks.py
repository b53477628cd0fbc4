"""Small reference denoisers (for vector-valued unknowns and tests).

Techniques bring their own networks (transformers, 3D U-Nets); anything
called as ``network(x_t, time, condition)`` works with
:class:`~emverse_diffusion.prior.NetworkDiffusionPrior`.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class FourierTimeEmbedding(nn.Module):
    """Sinusoidal features of a scalar time input: sin/cos at log-spaced frequencies."""

    def __init__(self, features: int = 16, max_frequency: float = 100.0, scale: float = 1.0):
        super().__init__()
        if features % 2:
            raise ValueError(f"time features = {features} must be even (sin and cos pairs)")
        freqs = torch.exp(torch.linspace(0.0, math.log(max_frequency), features // 2))
        self.register_buffer("frequencies", freqs, persistent=False)
        self.scale = float(scale)

    def forward(self, time: torch.Tensor) -> torch.Tensor:
        angles = (time * self.scale)[:, None] * self.frequencies.to(time.dtype)[None, :]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class MLPDenoiser(nn.Module):
    """MLP for flat vectors: ``(x_t, time, condition) -> prediction`` of the same shape as x_t.

    ``dim`` is the size of the unknown, ``condition_dim`` that of the
    (flattened) condition (0: unconditional). The time input is embedded with
    Fourier features (``time_scale`` maps its range to order one: 1 for t, 0.1
    for logSNR, 1/T for steps). Residual SiLU blocks of width ``hidden``.
    """

    def __init__(
        self,
        dim: int,
        condition_dim: int = 0,
        hidden: int = 128,
        depth: int = 3,
        time_features: int = 32,
        time_scale: float = 1.0,
    ):
        super().__init__()
        self.dim, self.condition_dim = int(dim), int(condition_dim)
        self.time_embedding = FourierTimeEmbedding(time_features, scale=time_scale)
        self.input = nn.Linear(self.dim + self.condition_dim + time_features, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(depth)
        )
        self.output = nn.Sequential(nn.SiLU(), nn.Linear(hidden, self.dim))

    def forward(self, x_t: torch.Tensor, time: torch.Tensor, condition: torch.Tensor | None = None):
        shape = x_t.shape
        parts = [x_t.reshape(shape[0], -1), self.time_embedding(time.to(x_t.dtype))]
        if self.condition_dim:
            if condition is None:
                raise ValueError(
                    f"this denoiser is conditional (condition_dim = {self.condition_dim}) but got no condition"
                )
            parts.append(condition.reshape(shape[0], -1).to(x_t.dtype))
        h = self.input(torch.cat(parts, dim=-1))
        for block in self.blocks:
            h = h + block(h)
        return self.output(h).reshape(shape)
