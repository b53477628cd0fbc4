"""Guidance weight schedules w(t): how strongly the likelihood corrects x̂₀ at each time.

All are functions of the noise schedule's logSNR λ(t) (λ small = high noise)
and return shape (batch,):

* ``ConstantWeight``:        w = scale
* ``AlphaWeight``:           w = scale · α_t^power, α_t² = sigmoid(λ) — grows as noise falls
                             (the conventional increasing schedule)
* ``ShiftedSigmoidWeight``:  w = scale · sigmoid(−sharpness · (λ − center)) — ≈ scale at
                             high noise (λ ≪ center), → 0 as sampling ends (λ ≫ center);
                             the annealed schedule of MEP-Diffusion (strong early
                             guidance fixes the structure, no late guidance avoids
                             collapsing fine detail).
"""

from __future__ import annotations

import torch
from emverse.errors import EmverseError
from emverse.interfaces import Configurable


class GuidanceWeight(Configurable):
    def __call__(self, t: torch.Tensor, schedule) -> torch.Tensor:
        raise NotImplementedError


class ConstantWeight(GuidanceWeight):
    def __init__(self, scale: float = 1.0):
        self.scale = float(scale)

    def __call__(self, t, schedule):
        return torch.full_like(torch.as_tensor(t, dtype=torch.float64), self.scale)


class AlphaWeight(GuidanceWeight):
    def __init__(self, scale: float = 1.0, power: float = 1.0):
        self.scale, self.power = float(scale), float(power)

    def __call__(self, t, schedule):
        return self.scale * schedule.alpha(torch.as_tensor(t, dtype=torch.float64)) ** self.power


class ShiftedSigmoidWeight(GuidanceWeight):
    def __init__(self, scale: float = 1.0, center: float = 0.0, sharpness: float = 1.0):
        if not sharpness > 0:
            raise EmverseError(
                f"shifted-sigmoid guidance weight: sharpness = {sharpness!r} must be > 0 "
                "(per unit of logSNR; e.g. 1.0)"
            )
        self.scale, self.center, self.sharpness = float(scale), float(center), float(sharpness)

    def __call__(self, t, schedule):
        lam = schedule.logsnr(torch.as_tensor(t, dtype=torch.float64))
        return self.scale * torch.sigmoid(-self.sharpness * (lam - self.center))
