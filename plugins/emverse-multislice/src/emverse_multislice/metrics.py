"""Image-quality measures for reconstructed phase volumes (torch, no model dependency).

MEP-Diffusion's convention: each volume (or depth-summed image) is instance-normalised to
[0, 1] (min–max) before PSNR / SSIM, because ptychographic phases are defined only up to an
offset and a scale varies between crystals. PSNR and SSIM are the core's one definition
(:mod:`emverse.image_quality`: Gaussian window σ = 1.5 px, 11 px support, K1 = 0.01,
K2 = 0.03, data range 1, scikit-image's convention).
"""

from __future__ import annotations

import torch
from emverse.image_quality import instance_normalise, psnr, ssim
from emverse.interfaces import Metric


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
