"""Apparent-thickness models t(θ) (Å) as functions of the goniometer angle θ.

* :class:`ThicknessNN` — the paper's hybrid part (§4.1.2): an MLP θ -> (μ, log σ²),
  two hidden layers of 64 units with tanh; μ is squashed into the user's range
  ``[t_min, t_max]`` Å and σ into ``[sigma_min, sigma_max]`` Å; an optional
  quadratic prior writes μ(θ) as a learnable ``aθ² + bθ + c`` (a = exp(·) > 0)
  plus the network's residual. The refinement uses the mean (the paper found
  sampling through σ made no difference); :meth:`sample` gives reparameterised draws.
* :class:`SingleThickness` — one refined thickness for the whole tilt series.
* :class:`FixedThickness` — a constant (10 Å = the paper's kinematical model).

θ enters in radians, normalised by ``theta_scale_rad`` so the network sees O(1) inputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


class ThicknessModel(nn.Module):
    def forward(self, theta_rad: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class ThicknessNN(ThicknessModel):
    def __init__(
        self,
        t_min_angstrom: float = 50.0,
        t_max_angstrom: float = 2000.0,
        t_init_angstrom: float | None = None,
        sigma_min_angstrom: float = 1.0,
        sigma_max_angstrom: float = 200.0,
        hidden: int = 64,
        quadratic_prior: bool = False,
        theta_scale_rad: float = 1.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if not 0 < t_min_angstrom < t_max_angstrom:
            raise ValueError(
                f"thickness range [{t_min_angstrom}, {t_max_angstrom}] Å is empty; give 0 < t_min < t_max"
            )
        self.t_min, self.t_max = float(t_min_angstrom), float(t_max_angstrom)
        self.sigma_min, self.sigma_max = float(sigma_min_angstrom), float(sigma_max_angstrom)
        self.theta_scale = float(theta_scale_rad)
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 2))
        with torch.no_grad():
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    bound = 1 / math.sqrt(layer.in_features)
                    layer.weight.uniform_(-bound, bound, generator=generator)
                    layer.bias.uniform_(-bound, bound, generator=generator)
            # start near t_init with a flat profile
            self.net[-1].weight.mul_(0.1)
            t0 = t_init_angstrom if t_init_angstrom is not None else 0.5 * (self.t_min + self.t_max)
            self.net[-1].bias[0] = _logit((t0 - self.t_min) / (self.t_max - self.t_min))
            self.net[-1].bias[1] = 0.0
        self.quadratic_prior = quadratic_prior
        if quadratic_prior:
            self.log_a = nn.Parameter(torch.tensor(math.log(0.01 * t0)))
            self.b = nn.Parameter(torch.tensor(0.0))
            self.c = nn.Parameter(torch.tensor(float(t0)))
            self.mix = nn.Parameter(torch.tensor(0.0))  # sigmoid weight of the network residual

    def distribution(self, theta_rad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of the thickness (Å) at each angle."""
        x = (theta_rad / self.theta_scale).reshape(-1, 1).to(self.net[0].weight.dtype)
        out = self.net(x)
        span = self.t_max - self.t_min
        mean_unit = torch.sigmoid(out[:, 0])
        mean = self.t_min + span * mean_unit
        if self.quadratic_prior:
            # μ(θ) = (1 − w)(aθ² + bθ + c) + w·μ_net(θ), a = exp(log_a) > 0, w = sigmoid(mix)
            quad = torch.exp(self.log_a) * x[:, 0] ** 2 + self.b * x[:, 0] + self.c
            w = torch.sigmoid(self.mix)
            mean = ((1 - w) * quad + w * mean).clamp(self.t_min, self.t_max)
        log_var = out[:, 1]
        std = self.sigma_min + (self.sigma_max - self.sigma_min) * torch.sigmoid(log_var)
        return mean, std

    def forward(self, theta_rad: torch.Tensor) -> torch.Tensor:
        return self.distribution(theta_rad)[0]

    def sample(self, theta_rad: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        mean, std = self.distribution(theta_rad)
        eps = torch.randn((n, *mean.shape), generator=generator, dtype=mean.dtype, device=mean.device)
        return (mean + std * eps).clamp_min(self.t_min)


class SingleThickness(ThicknessModel):
    """One thickness (Å) for all frames, refined through its logarithm."""

    def __init__(self, t_init_angstrom: float = 500.0):
        super().__init__()
        if not t_init_angstrom > 0:
            raise ValueError(f"t_init_angstrom must be > 0, got {t_init_angstrom}")
        self.log_t = nn.Parameter(torch.tensor(math.log(t_init_angstrom), dtype=torch.float64))

    def forward(self, theta_rad: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_t).to(theta_rad.dtype).expand(theta_rad.shape[0])


class FixedThickness(ThicknessModel):
    """A constant thickness (Å) that is not refined (10 Å: kinematical limit)."""

    def __init__(self, t_angstrom: float = 10.0):
        super().__init__()
        self.register_buffer("t", torch.tensor(float(t_angstrom), dtype=torch.float64))

    def forward(self, theta_rad: torch.Tensor) -> torch.Tensor:
        return self.t.to(theta_rad.dtype).expand(theta_rad.shape[0])


def build_thickness_model(kind: str, *, t_min: float, t_max: float, t_init: float, quadratic_prior: bool,
                          theta_scale_rad: float, generator: torch.Generator | None) -> ThicknessModel:
    if kind == "nn":
        return ThicknessNN(t_min, t_max, t_init, quadratic_prior=quadratic_prior,
                           theta_scale_rad=theta_scale_rad, generator=generator)
    if kind == "single":
        return SingleThickness(t_init)
    if kind == "kinematical":
        return FixedThickness(10.0)
    raise ValueError(f"thickness model {kind!r} is unknown; use 'nn', 'single' or 'kinematical'")


class ProfileThickness(ThicknessModel):
    """Given per-frame thicknesses (Å), in frame order; not refined (synthetic truth)."""

    def __init__(self, values_angstrom):
        super().__init__()
        self.register_buffer("values", torch.as_tensor(values_angstrom, dtype=torch.float64))

    def forward(self, theta_rad: torch.Tensor) -> torch.Tensor:
        if theta_rad.shape[0] != self.values.shape[0]:
            raise ValueError(
                f"profile has {self.values.shape[0]} thicknesses but {theta_rad.shape[0]} frames were asked for"
            )
        return self.values.to(theta_rad.dtype)
