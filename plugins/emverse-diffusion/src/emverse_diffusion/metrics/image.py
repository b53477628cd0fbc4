"""``image.psnr`` and ``image.ssim``: the core's PSNR and SSIM (:mod:`emverse.image_quality`, one
definition for every plugin) as recipe metrics, for 2D images or 3D volumes.

Shapes: ``prediction`` and ``truth`` are (batch, *spatial) with ``spatial_dims``
(2 or 3) trailing spatial axes; any axes between batch and spatial are folded
into the batch (channels, slices). A prediction with one extra axis after the
batch (posterior samples (batch, n_samples, ...)) is scored by its sample mean.

Normalisation (``normalize=True``): every instance is mapped to [0, 1] by its
own min and max, prediction and truth separately, so the scores do not depend
on the arbitrary offset and scale of a reconstructed phase (as in MEP-Diffusion).
Data range L = 1 then. SSIM: Gaussian window σ = ``sigma`` px (scikit-image's convention;
the module docstring of :mod:`emverse.image_quality`).
"""

from __future__ import annotations

from emverse import image_quality as quality
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
        prediction, truth = quality.instance_normalise(prediction), quality.instance_normalise(truth)
    return prediction, truth


def psnr(prediction, truth, spatial_dims: int = 2, normalize: bool = True, data_range: float = 1.0):
    """PSNR in dB per instance: 10 log10(L² / MSE)."""
    return quality.psnr(*_prepare(prediction, truth, spatial_dims, normalize), data_range=data_range)


def ssim(prediction, truth, spatial_dims: int = 2, normalize: bool = True, sigma: float = quality.SSIM_SIGMA,
         data_range: float = 1.0):
    """SSIM per instance (:func:`emverse.image_quality.ssim`)."""
    p, t = _prepare(prediction, truth, spatial_dims, normalize)
    return quality.ssim(p, t, spatial_dims=spatial_dims, sigma=sigma, data_range=data_range)


class PSNR(Metric):
    """``image.psnr``: mean PSNR (dB) over instances."""

    def __init__(self, spatial_dims: int = 2, normalize: bool = True, sigma: float = quality.SSIM_SIGMA):
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

    def __init__(self, spatial_dims: int = 2, normalize: bool = True, sigma: float = quality.SSIM_SIGMA):
        self.spatial_dims, self.normalize, self.sigma = spatial_dims, normalize, sigma

    def __call__(self, prediction, truth):
        values = ssim(prediction, truth, self.spatial_dims, self.normalize, self.sigma)
        return {"ssim": float(values.mean()), "ssim_std": float(values.std()) if len(values) > 1 else 0.0}

    def figure(self, prediction, truth):
        from .figures import image_comparison_figure

        p, t = _prepare(prediction, truth, self.spatial_dims, self.normalize)
        return image_comparison_figure(
            p, t, ssim(prediction, truth, self.spatial_dims, self.normalize, self.sigma), "SSIM"
        )
