"""A toy pattern model with a known answer, for checking the learning machinery.

``cdi.toy_pattern`` maps the 13 table parameters to an (H, W) image made of
Gaussian spots, where by construction

* the two tilts move every spot (centre shift ∝ tilt),
* the thickness sets the spot width,
* the four structure factors set the heights of four spots,
* the six Debye–Waller parameters do not enter at all.

So a good posterior must be sharp for tilt, thickness and structure factors
and equal to the uniform prior for the Debye–Waller parameters (NRMSE of the
posterior mean → 1/√12 ≈ 0.289, of a single draw → 1/√6 ≈ 0.408), exactly
the paper's identifiability picture, at a cost of microseconds per pattern.
"""

from __future__ import annotations

import torch
from emverse.interfaces import ForwardModel
from emverse.noise import GaussianNoise, NoNoise

from .parameter_table import mgb2_parameter_space

#: spot positions (fraction of the half width) for the four structure-factor spots
_SPOTS = ((-0.45, 0.0), (0.45, 0.0), (0.0, -0.45), (0.0, 0.45))


class ToyPatternModel(ForwardModel):
    """Gaussian-spot image from the 13 MgB2 parameters (physical units) -> (B, H, W)."""

    def __init__(self, size_px: int = 32, noise_sigma: float = 0.0):
        super().__init__(GaussianNoise(noise_sigma) if noise_sigma > 0 else NoNoise())
        if size_px < 8:
            raise ValueError(f"size_px = {size_px} is too small; give at least 8 pixels")
        self.size_px = int(size_px)
        self.parameter_space = mgb2_parameter_space()
        coords = (torch.arange(self.size_px, dtype=torch.float64) + 0.5) / self.size_px * 2 - 1
        self.register_buffer("coords", coords)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.parameter_space.normalise(x)  # [-1, 1]
        shift_x, shift_y = 0.15 * z[:, 10], 0.15 * z[:, 11]
        width = 0.10 + 0.05 * (z[:, 12] + 1.0)
        heights = 1.0 + 0.5 * z[:, 6:10]
        c = self.coords.to(x.dtype)
        image = torch.zeros(x.shape[0], self.size_px, self.size_px, dtype=x.dtype, device=x.device)
        for k, (sx, sy) in enumerate(_SPOTS):
            dx = c[None, None, :] - (sx + shift_x)[:, None, None]
            dy = c[None, :, None] - (sy + shift_y)[:, None, None]
            r2 = dx**2 + dy**2
            image = image + heights[:, k, None, None] * torch.exp(-r2 / (2 * width[:, None, None] ** 2))
        return image
