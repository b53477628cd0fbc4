"""Image-quality measures for reconstructed phase volumes (torch, no model dependency).

MEP-Diffusion's convention: each volume (or depth-summed image) is
instance-normalised to [0, 1] (min–max) before PSNR / SSIM, because
ptychographic phases are defined only up to an offset and a scale varies
between crystals. SSIM is Wang et al. (2004): Gaussian window σ = 1.5 px
(11 px support), K1 = 0.01, K2 = 0.03, data range 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from emverse.interfaces import Metric


def instance_normalise(images: torch.Tensor, dims=(-2, -1)) -> torch.Tensor:
    """Min–max scale to [0, 1] over ``dims`` (a constant image becomes 0)."""
    low = images.amin(dim=dims, keepdim=True)
    high = images.amax(dim=dims, keepdim=True)
    return (images - low) / (high - low).clamp_min(1e-12)


def _gaussian_window(sigma: float, dtype, device) -> torch.Tensor:
    radius = int(3.5 * sigma + 0.5)  # truncate at 3.5 σ: an 11 px window for σ = 1.5
    coords = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(pred: torch.Tensor, truth: torch.Tensor, *, sigma: float = 1.5, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM per image of two (N, H, W) stacks (values already scaled to ``data_range``).

    Windows are Gaussian and computed only where they fit entirely inside the
    image ("valid" region), as scikit-image does by cropping its borders.
    """
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(
            f"ssim needs two (N, H, W) stacks of equal shape, got {tuple(pred.shape)} and {tuple(truth.shape)}"
        )
    dtype = torch.float64
    x = pred.to(dtype)[:, None]
    y = truth.to(dtype)[:, None]
    g = _gaussian_window(sigma, dtype, x.device)
    if g.numel() > min(x.shape[-2:]):
        raise ValueError(f"images of {tuple(x.shape[-2:])} px are smaller than the {g.numel()} px SSIM window")

    def blur(img):
        img = F.conv2d(img, g[None, None, :, None])
        return F.conv2d(img, g[None, None, None, :])

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean(dim=(-3, -2, -1))


def psnr(pred: torch.Tensor, truth: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR (dB) per leading-axis item."""
    mse = ((pred.to(torch.float64) - truth.to(torch.float64)) ** 2).flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-30))


def volume_metrics(pred: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Depth-summed and per-volume quality of (B, depth, H, W) phase volumes (means over B).

    * ``depth_sum_ssim`` / ``depth_sum_psnr``: of the depth-summed projections,
      each instance-normalised to [0, 1];
    * ``volume_psnr``: of whole volumes instance-normalised over (depth, H, W);
    * ``slice_ssim``: mean SSIM over slices of the normalised volumes.
    """
    if pred.shape != truth.shape or pred.ndim != 4:
        raise ValueError(
            f"volume_metrics needs (B, depth, H, W) volumes of equal shape, got "
            f"{tuple(pred.shape)} and {tuple(truth.shape)}"
        )
    p_sum = instance_normalise(pred.sum(dim=1))
    t_sum = instance_normalise(truth.sum(dim=1))
    p_vol = instance_normalise(pred, dims=(-3, -2, -1))
    t_vol = instance_normalise(truth, dims=(-3, -2, -1))
    b, d, h, w = pred.shape
    return {
        "depth_sum_ssim": float(ssim(p_sum, t_sum).mean()),
        "depth_sum_psnr": float(psnr(p_sum, t_sum).mean()),
        "volume_psnr": float(psnr(p_vol, t_vol).mean()),
        "slice_ssim": float(ssim(p_vol.reshape(b * d, h, w), t_vol.reshape(b * d, h, w)).mean()),
    }


class VolumeMetrics(Metric):
    """``multislice.volume_metrics``: :func:`volume_metrics` as an emverse Metric
    (prediction and truth (B, depth, H, W) phase volumes; posterior draws
    (B, n, depth, H, W) are averaged over n first)."""

    def __call__(self, prediction: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
        if prediction.ndim == 5:
            prediction = prediction.mean(dim=1)
        return volume_metrics(prediction, truth)

    def figure(self, prediction: torch.Tensor, truth: torch.Tensor):
        from emverse_multislice.figures import depth_sum_figure

        if prediction.ndim == 5:
            prediction = prediction.mean(dim=1)
        return depth_sum_figure(prediction[0], truth[0])
