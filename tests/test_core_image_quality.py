"""PSNR and SSIM, defined once (emverse.image_quality): against scikit-image's
structural_similarity (the peer the MEP paper's numbers come from), scipy's Gaussian filter for
short axes, the single-window formula by hand, and the limits every SSIM must meet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from emverse.errors import EmverseError
from emverse.image_quality import instance_normalise, psnr, ssim

C1, C2 = 0.01**2, 0.03**2


def _pair(shape, seed, noise=0.2):
    rng = np.random.default_rng(seed)
    truth = rng.random(shape)
    return np.clip(truth + noise * rng.standard_normal(shape), 0, 1), truth


@pytest.mark.parametrize("shape", [(32, 32), (20, 25), (11, 40), (12, 14, 16)])
def test_ssim_equals_scikit_image(shape):
    """Gaussian σ = 1.5, population covariance, data range 1: equal to scikit-image to rounding
    (2D images and a 3D volume whose axes all hold a window)."""
    metrics = pytest.importorskip("skimage.metrics")
    pred, truth = _pair(shape, seed=len(shape) + shape[0])
    theirs = metrics.structural_similarity(pred, truth, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False, data_range=1.0)
    ours = ssim(torch.tensor(pred)[None], torch.tensor(truth)[None], spatial_dims=len(shape))
    assert float(ours[0]) == pytest.approx(theirs, rel=1e-12)


def test_short_axes_are_reflected_and_kept():
    """A 4-slice depth axis cannot hold the 11-voxel window (scikit-image refuses it): there the
    window is reflected (scipy's mode="reflect") and every slice is kept; the long axes are cropped
    by the radius. Checked against scipy.ndimage.gaussian_filter written out here."""
    from scipy import ndimage

    pred, truth = _pair((4, 24, 30), seed=3)

    def blur(a):
        return ndimage.gaussian_filter(a, 1.5, mode="reflect", truncate=3.5)

    mx, my = blur(pred), blur(truth)
    sxx, syy, sxy = blur(pred * pred) - mx * mx, blur(truth * truth) - my * my, blur(pred * truth) - mx * my
    field = ((2 * mx * my + C1) * (2 * sxy + C2)) / ((mx**2 + my**2 + C1) * (sxx + syy + C2))
    expected = field[:, 5:-5, 5:-5].mean()
    ours = ssim(torch.tensor(pred)[None], torch.tensor(truth)[None], spatial_dims=3)
    assert float(ours[0]) == pytest.approx(expected, rel=1e-12)


def test_one_window_is_the_global_formula_by_hand():
    gen = torch.Generator().manual_seed(0)
    x, y = (torch.rand((1, 11, 11), generator=gen, dtype=torch.float64) for _ in range(2))
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    w = (g[:, None] * g[None, :]) / (g.sum() ** 2)
    mx, my = (w * x[0]).sum(), (w * y[0]).sum()
    vx, vy = (w * x[0] ** 2).sum() - mx**2, (w * y[0] ** 2).sum() - my**2
    cxy = (w * x[0] * y[0]).sum() - mx * my
    expected = (2 * mx * my + C1) * (2 * cxy + C2) / ((mx**2 + my**2 + C1) * (vx + vy + C2))
    assert float(ssim(x, y)[0]) == pytest.approx(float(expected), rel=1e-12)


def test_ssim_limits():
    gen = torch.Generator().manual_seed(1)
    img = torch.rand((2, 32, 32), generator=gen, dtype=torch.float64)
    torch.testing.assert_close(ssim(img, img), torch.ones(2, dtype=torch.float64))
    # instance normalisation removes offset and scale
    torch.testing.assert_close(ssim(instance_normalise(3 * img + 2), instance_normalise(img)),
                               torch.ones(2, dtype=torch.float64))
    noise = torch.randn(img.shape, generator=gen, dtype=torch.float64)
    scores = [float(ssim((img + level * noise).clamp(0, 1), img).mean()) for level in (0.05, 0.2, 0.5)]
    assert scores[0] > scores[1] > scores[2] and scores[2] < 0.5
    assert float(ssim(1.0 - img, img).max()) < -0.5  # anti-correlated
    # two constant images a, b: the variances vanish, SSIM = (2ab + c1)/(a² + b² + c1)
    a, b = 0.3, 0.6
    const = ssim(torch.full((1, 4, 16, 16), a), torch.full((1, 4, 16, 16), b), spatial_dims=3)
    assert float(const[0]) == pytest.approx((2 * a * b + C1) / (a * a + b * b + C1), rel=1e-9)


def test_psnr_and_normalisation():
    x = torch.rand(3, 4, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    n = instance_normalise(5.0 * x + 2.0)
    torch.testing.assert_close(n.reshape(3, -1).amin(1), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(n.reshape(3, -1).amax(1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(n, instance_normalise(x))
    # a uniform offset δ: MSE = δ², PSNR = −10 log10 δ² (data range 1)
    torch.testing.assert_close(psnr(n + 0.1, n), torch.full((3,), 20.0, dtype=torch.float64))


def test_shape_mismatch_is_an_error():
    with pytest.raises(EmverseError, match=r"ssim: prediction \(1, 8, 8\) and truth \(1, 8, 9\)"):
        ssim(torch.zeros(1, 8, 8), torch.zeros(1, 8, 9))
    with pytest.raises(EmverseError, match="psnr: prediction"):
        psnr(torch.zeros(2, 4), torch.zeros(3, 4))
