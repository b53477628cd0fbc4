"""Pattern preprocessing and augmentation of the CBED CDI paper (appendix B.1).

Training: random rotation with bilinear interpolation -> centre crop ->
random resized crop. Evaluation: centre crop, then (when the crop differs
from the network's input size) a bilinear resize. Every random draw comes
from an explicit ``torch.Generator``.

All functions take patterns batch-first, (B, H, W) or (B, 1, H, W), and
return (B, 1, h, w). Geometric warps use ``grid_sample`` with
``align_corners=False``: pixel centres sit at (i + 0.5)/N in normalised
coordinates, so a zero-angle rotation or a full-size crop is the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from emverse.errors import EmverseError


def as_batch(patterns: torch.Tensor) -> torch.Tensor:
    """(B, H, W) or (B, 1, H, W) -> (B, 1, H, W), checking shape and finiteness."""
    if patterns.ndim == 3:
        patterns = patterns.unsqueeze(1)
    if patterns.ndim != 4 or patterns.shape[1] != 1:
        raise EmverseError(
            f"patterns have shape {tuple(patterns.shape)}; give (batch, H, W) or (batch, 1, H, W)"
        )
    if not torch.isfinite(patterns).all():
        n_bad = int((~torch.isfinite(patterns)).sum())
        raise EmverseError(
            f"patterns contain {n_bad} NaN/inf pixels; mask or interpolate them before inference"
        )
    return patterns


def _warp(images: torch.Tensor, theta: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    grid = F.affine_grid(theta.to(images.dtype), (images.shape[0], 1, *size), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotate(images: torch.Tensor, angles_rad: torch.Tensor) -> torch.Tensor:
    """Rotate each image about its centre by ``angles_rad`` (B,), bilinear, zeros outside."""
    images = as_batch(images)
    cos, sin = torch.cos(angles_rad), torch.sin(angles_rad)
    zero = torch.zeros_like(cos)
    # affine_grid maps output coordinates to input coordinates; for square images
    # this is a pure rotation in normalised coordinates.
    theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
    return _warp(images, theta, tuple(images.shape[-2:]))


def random_rotate(
    images: torch.Tensor, max_degrees: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Rotation by an angle uniform in [-max_degrees, max_degrees] per image."""
    images = as_batch(images)
    u = torch.rand(images.shape[0], generator=generator, dtype=torch.float64)
    angles = (2.0 * u - 1.0) * math.radians(max_degrees)
    return rotate(images, angles.to(images.device))


def centre_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size``×``size`` pixels (exact slicing, no interpolation)."""
    images = as_batch(images)
    h, w = images.shape[-2:]
    if size > min(h, w):
        raise EmverseError(
            f"centre crop size {size} px exceeds the {h}×{w} px pattern; "
            "lower crop_size or simulate larger patterns"
        )
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top : top + size, left : left + size]


def resized_crop(
    images: torch.Tensor,
    centres: torch.Tensor,
    half_sizes: torch.Tensor,
    size: int,
) -> torch.Tensor:
    """Crop squares (centre (B, 2) and half side (B,) in normalised [-1, 1] units)
    and resample each to ``size``×``size`` with bilinear interpolation."""
    images = as_batch(images)
    zero = torch.zeros_like(half_sizes)
    theta = torch.stack(
        [
            torch.stack([half_sizes, zero, centres[:, 0]], -1),
            torch.stack([zero, half_sizes, centres[:, 1]], -1),
        ],
        1,
    )
    return _warp(images, theta, (size, size))


def random_resized_crop(
    images: torch.Tensor,
    size: int,
    scale: tuple[float, float],
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Square crops whose area is a fraction ``U(scale)`` of the image, placed
    uniformly inside it, resampled to ``size``×``size`` (bilinear)."""
    images = as_batch(images)
    lo, hi = scale
    if not 0 < lo <= hi <= 1:
        raise EmverseError(
            f"random resized crop scale {scale!r} must satisfy 0 < low <= high <= 1"
        )
    b = images.shape[0]
    u = torch.rand(b, 3, generator=generator, dtype=torch.float64)
    area = lo + (hi - lo) * u[:, 0]
    half = torch.sqrt(area)  # half side in normalised units (full image = 2)
    centres = (2.0 * u[:, 1:] - 1.0) * (1.0 - half)[:, None]
    return resized_crop(images, centres.to(images.dtype), half.to(images.dtype), size)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    images = as_batch(images)
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def train_transform(
    patterns: torch.Tensor,
    *,
    crop_size: int,
    input_size: int,
    rotation_degrees: float,
    resized_crop_scale: tuple[float, float],
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Appendix B.1 training pipeline: rotate -> centre crop -> random resized crop."""
    x = random_rotate(patterns, rotation_degrees, generator) if rotation_degrees > 0 else patterns
    x = centre_crop(x, crop_size)
    return random_resized_crop(x, input_size, resized_crop_scale, generator)


def eval_transform(patterns: torch.Tensor, *, crop_size: int, input_size: int) -> torch.Tensor:
    """Appendix B.1 evaluation pipeline: centre crop (resized to the input size if needed)."""
    return resize(centre_crop(patterns, crop_size), input_size)
