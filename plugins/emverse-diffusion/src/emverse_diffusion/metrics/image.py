"""PSNR and SSIM for 2D images and 3D volumes, with per-instance normalisation to [0, 1].

Shapes: ``prediction`` and ``truth`` are (batch, *spatial) with ``spatial_dims``
(2 or 3) trailing spatial axes; any axes between batch and spatial are folded
into the batch (channels, slices). A prediction with one extra axis after the
batch (posterior samples (batch, n_samples, ...)) is scored by its sample mean.

Normalisation (``normalize=True``): every instance is mapped to [0, 1] by its
own min and max, prediction and truth separately, so the scores do not depend
on the arbitrary offset and scale of a reconstructed phase (as in MEP-Diffusion).
Data range L = 1 then.

SSIM (Wang et al. 2004): local means, variances and covariance over a uniform
``window``^n window (sample covariance, N/(N−1)), K1 = 0.01, K2 = 0.03,

    SSIM = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)),  C = (K L)²,

averaged over the valid (unpadded) windows, then over instances.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from emverse.errors import EmverseError
from emverse.interfaces import Metric


def _prepare(prediction, truth, spatial_dims: int, normalize: bool):
    if spatial_dims not in (2, 3):
        raise EmverseError(f"spatial_dims = {spatial_dims!r}; give 2 (images) or 3 (volumes)")
    prediction = prediction.detach().double().cpu()
    truth = truth.detach().double().cpu()
    if prediction.ndim == truth.ndim + 1:
        prediction = prediction.mean(dim=1)
    if prediction.shape != truth.shape:
        raise EmverseError(
            f"prediction {tuple(prediction.shape)} and truth {tuple(truth.shape)} differ in shape"
        )
    if truth.ndim < spatial_dims + 1:
        raise EmverseError(
            f"need (batch, *{spatial_dims} spatial axes); got shape {tuple(truth.shape)}"
        )
    spatial = truth.shape[-spatial_dims:]
    prediction = prediction.reshape(-1, *spatial)
    truth = truth.reshape(-1, *spatial)
    if normalize:
        prediction, truth = normalize_instances(prediction), normalize_instances(truth)
    return prediction, truth


def normalize_instances(x: torch.Tensor) -> torch.Tensor:
    """Map each instance (leading axis) to [0, 1] by its own min and max (constant -> 0)."""
    flat = x.reshape(x.shape[0], -1)
    lo = flat.min(dim=1).values
    hi = flat.max(dim=1).values
    span = (hi - lo).clamp_min(1e-12)
    shape = (-1,) + (1,) * (x.ndim - 1)
    return (x - lo.reshape(shape)) / span.reshape(shape)


def psnr(prediction, truth, spatial_dims: int = 2, normalize: bool = True, data_range: float = 1.0):
    """PSNR in dB per instance: 10 log10(L² / MSE)."""
    p, t = _prepare(prediction, truth, spatial_dims, normalize)
    mse = ((p - t) ** 2).reshape(p.shape[0], -1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-20))


def ssim(prediction, truth, spatial_dims: int = 2, normalize: bool = True, window: int = 7,
         data_range: float = 1.0):
    """SSIM per instance (module docstring)."""
    p, t = _prepare(prediction, truth, spatial_dims, normalize)
    spatial = p.shape[1:]
    if window > min(spatial):
        raise EmverseError(f"SSIM window = {window} exceeds the smallest image side {min(spatial)}; use a smaller window")
    if window < 2:
        raise EmverseError("SSIM window must be at least 2 pixels")
    pool = F.avg_pool2d if spatial_dims == 2 else F.avg_pool3d
    p, t = p[:, None], t[:, None]

    def mean(z):
        return pool(z, kernel_size=window, stride=1)

    n = window**spatial_dims
    correction = n / (n - 1)
    mu_p, mu_t = mean(p), mean(t)
    var_p = (mean(p * p) - mu_p**2) * correction
    var_t = (mean(t * t) - mu_t**2) * correction
    cov = (mean(p * t) - mu_p * mu_t) * correction
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    return s.reshape(s.shape[0], -1).mean(dim=1)


class PSNR(Metric):
    """``image.psnr``: mean PSNR (dB) over instances."""

    def __init__(self, spatial_dims: int = 2, normalize: bool = True, window: int = 7):
        self.spatial_dims, self.normalize = spatial_dims, normalize

    def __call__(self, prediction, truth):
        values = psnr(prediction, truth, self.spatial_dims, self.normalize)
        return {"psnr_db": float(values.mean()), "psnr_db_std": float(values.std()) if len(values) > 1 else 0.0}

    def figure(self, prediction, truth):
        from .figures import image_comparison_figure

        p, t = _prepare(prediction, truth, self.spatial_dims, self.normalize)
        return image_comparison_figure(p, t, psnr(prediction, truth, self.spatial_dims, self.normalize), "PSNR (dB)")


class SSIM(Metric):
    """``image.ssim``: mean SSIM over instances."""

    def __init__(self, spatial_dims: int = 2, normalize: bool = True, window: int = 7):
        self.spatial_dims, self.normalize, self.window = spatial_dims, normalize, window

    def __call__(self, prediction, truth):
        values = ssim(prediction, truth, self.spatial_dims, self.normalize, self.window)
        return {"ssim": float(values.mean()), "ssim_std": float(values.std()) if len(values) > 1 else 0.0}

    def figure(self, prediction, truth):
        from .figures import image_comparison_figure

        p, t = _prepare(prediction, truth, self.spatial_dims, self.normalize)
        return image_comparison_figure(
            p, t, ssim(prediction, truth, self.spatial_dims, self.normalize, self.window), "SSIM"
        )
