"""Metrics against hand-computed values, and their figures."""

import math

import numpy as np
import pytest
import torch
from emverse.errors import EmverseError
from emverse_diffusion.metrics.image import PSNR, SSIM, psnr, ssim
from emverse_diffusion.metrics.stats import PairedBootstrap, paired_bootstrap
from emverse_diffusion.metrics.uq import (
    CRPS,
    NRMSE,
    SBC,
    Calibration,
    Sharpness,
    calibration_curve,
    crps,
    nrmse,
)
from scipy.stats import norm


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_nrmse_reference_values_on_a_uniform():
    low, high = torch.tensor([-2.0, 0.0, 10.0]), torch.tensor([2.0, 5.0, 11.0])
    n = 40000
    truth = low + (high - low) * torch.rand(n, 3, generator=_gen(0), dtype=torch.float64)
    centre = ((low + high) / 2).expand(n, 3)
    mean_pred = nrmse(centre, truth, low, high)
    # 1/√12 ± sampling error (≈ 0.289 · 0.5/√n ≈ 0.0008)
    torch.testing.assert_close(mean_pred, torch.full((3,), 1 / math.sqrt(12), dtype=torch.float64), atol=0.004, rtol=0)
    random_pred = low + (high - low) * torch.rand(n, 3, generator=_gen(1), dtype=torch.float64)
    torch.testing.assert_close(nrmse(random_pred, truth, low, high),
                               torch.full((3,), 1 / math.sqrt(6), dtype=torch.float64), atol=0.005, rtol=0)
    out = NRMSE(low=tuple(low.tolist()), high=tuple(high.tolist()), names=("a", "b", "c"))(centre, truth)
    assert out["nrmse_b"] == pytest.approx(float(mean_pred[1]))
    assert out["reference_mean_predictor"] == pytest.approx(0.2887, abs=1e-4)
    assert out["reference_random_predictor"] == pytest.approx(0.4082, abs=1e-4)


def _gaussian_posteriors(n_obs=2000, n_samples=200, spread=1.0, seed=0):
    """Truth ~ N(μ, 1) and 'posterior' samples ~ N(μ, spread²) for random μ."""
    g = _gen(seed)
    mu = torch.randn(n_obs, 2, generator=g, dtype=torch.float64) * 3
    truth = mu + torch.randn(n_obs, 2, generator=g, dtype=torch.float64)
    samples = mu[:, None] + spread * torch.randn(n_obs, n_samples, 2, generator=g, dtype=torch.float64)
    return samples, truth


def test_calibration_of_a_known_gaussian():
    samples, truth = _gaussian_posteriors(spread=1.0)
    out = Calibration()(samples, truth)
    assert out["calibration_error"] < 0.015
    # over-confident by 2×: the 90 % interval ±1.645·0.5 covers P(|z| < 0.822) = 0.589 of truths
    samples, truth = _gaussian_posteriors(spread=0.5)
    nominal, coverage = calibration_curve(samples, truth, levels=19)
    i90 = int(torch.argmin((nominal - 0.9).abs()))
    expected = 2 * norm.cdf(0.5 * norm.ppf(0.95)) - 1
    assert coverage[i90].mean().item() == pytest.approx(expected, abs=0.02)
    assert Calibration()(samples, truth)["calibration_error"] > 0.15


def test_sharpness_of_a_known_gaussian():
    samples, truth = _gaussian_posteriors(n_obs=200, n_samples=4000, spread=0.5)
    out = Sharpness(level=0.9, low=(-10.0,), high=(10.0,))(samples, truth)
    assert out["sharpness"] == pytest.approx(2 * 1.6449 * 0.5 / 20.0, rel=0.02)


def test_crps_matches_the_gaussian_closed_form():
    # CRPS(N(μ, σ²), y) = σ [z (2Φ(z) − 1) + 2 φ(z) − 1/√π], z = (y − μ)/σ
    g = _gen(3)
    sigma, y = 0.7, torch.tensor([[0.3], [-1.2]], dtype=torch.float64)
    samples = sigma * torch.randn(2, 20000, 1, generator=g, dtype=torch.float64)
    z = y.numpy()[:, 0] / sigma
    exact = sigma * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / math.sqrt(math.pi))
    assert crps(samples, y).item() == pytest.approx(exact.mean(), rel=0.02)
    assert CRPS()(samples, y)["crps"] == pytest.approx(exact.mean(), rel=0.02)


def test_sbc_flags_a_biased_posterior():
    samples, truth = _gaussian_posteriors(n_obs=1000, n_samples=99)
    assert SBC(bins=10)(samples, truth)["sbc_min_pvalue"] > 1e-3
    biased = samples + 0.5
    assert SBC(bins=10)(biased, truth)["sbc_min_pvalue"] < 1e-6


def test_psnr_hand_computed():
    truth = torch.zeros(2, 8, 8, dtype=torch.float64)
    pred = truth + 0.1  # MSE = 0.01 → 20 dB with data range 1
    torch.testing.assert_close(psnr(pred, truth, normalize=False), torch.full((2,), 20.0, dtype=torch.float64))
    # per-instance normalisation removes offset and scale
    img = torch.rand(3, 16, 16, generator=_gen(4), dtype=torch.float64)
    assert PSNR()(5.0 * img - 2.0, img)["psnr_db"] > 150


def test_ssim_identical_and_shifted():
    """The metric components score with the core's SSIM (tests/test_core_image_quality.py checks
    it against scikit-image); here: normalisation, the sample mean and bad input."""
    g = _gen(5)
    img = torch.nn.functional.avg_pool2d(torch.rand(2, 1, 36, 36, generator=g, dtype=torch.float64), 3, 1)[:, 0]
    assert ssim(img, img).min().item() == pytest.approx(1.0)
    assert ssim(3 * img + 1, img).min().item() == pytest.approx(1.0)  # instance-normalised
    shifted = torch.roll(img, shifts=3, dims=-1)
    assert ssim(shifted, img).max().item() < 0.8
    assert SSIM()(shifted, img)["ssim"] == pytest.approx(float(ssim(shifted, img).mean()))


def test_ssim_3d_and_sample_mean():
    vol = torch.rand(2, 8, 12, 12, generator=_gen(6), dtype=torch.float64)
    assert SSIM(spatial_dims=3, sigma=1.0)(vol, vol)["ssim"] == pytest.approx(1.0)
    noisy = vol + 0.3 * torch.randn(vol.shape, generator=_gen(7), dtype=torch.float64)
    assert SSIM(spatial_dims=3, sigma=1.0)(noisy, vol)["ssim"] < 0.9
    samples = vol[:, None].expand(2, 4, 8, 12, 12)  # posterior samples → their mean is scored
    assert PSNR(spatial_dims=3)(samples, vol)["psnr_db"] > 150
    with pytest.raises(EmverseError, match="spatial_dims = 4; give 2"):
        ssim(vol, vol, spatial_dims=4)


def test_paired_bootstrap():
    rng = np.random.default_rng(0)
    base = rng.normal(size=200) ** 2
    better = base * 0.8  # A clearly better than B on every instance
    r = paired_bootstrap(better, base, n_boot=2000, rng=np.random.default_rng(1))
    assert r.difference == pytest.approx(float((better - base).mean()))
    assert r.ci_high < 0 and r.p_value < 0.01
    same = rng.normal(size=200)
    r = paired_bootstrap(same + rng.normal(scale=0.1, size=200), same, rng=np.random.default_rng(2))
    assert r.ci_low < 0 < r.ci_high and r.p_value > 0.05
    # one-sided (A higher is better): P(resampled mean difference ≤ 0)
    higher = paired_bootstrap(base, better, n_boot=2000, rng=np.random.default_rng(1), alternative="greater")
    lower = paired_bootstrap(better, base, n_boot=2000, rng=np.random.default_rng(1), alternative="greater")
    assert higher.p_value < 0.01 < 0.99 < lower.p_value
    assert higher.p_value == (np.count_nonzero(higher.boot_means <= 0) + 1) / 2001
    with pytest.raises(EmverseError, match="alternative"):
        paired_bootstrap(base, better, rng=np.random.default_rng(1), alternative="less")
    truth = torch.zeros(50, 3)
    pred = torch.stack([torch.full((50, 3), 0.1), torch.full((50, 3), 0.2)])
    out = PairedBootstrap(score="mae", n_boot=500)(pred, truth)
    assert out["mae_a"] == pytest.approx(0.1) and out["difference"] == pytest.approx(-0.1)
    with pytest.raises(EmverseError, match=r"prediction \(2, n, ...\)"):
        PairedBootstrap()(pred[0], truth)


def test_every_metric_draws_a_figure():
    import matplotlib.figure

    samples, truth = _gaussian_posteriors(n_obs=50, n_samples=40)
    for metric in (NRMSE(low=(-10.0,), high=(10.0,)), Calibration(), Sharpness(low=(-10.0,), high=(10.0,)), SBC()):
        assert isinstance(metric.figure(samples, truth), matplotlib.figure.Figure)
    img = torch.rand(2, 16, 16, generator=_gen(8))
    for metric in (PSNR(), SSIM()):
        assert isinstance(metric.figure(img, img), matplotlib.figure.Figure)
    pred = torch.stack([img, img * 0.5])
    assert isinstance(PairedBootstrap(n_boot=100).figure(pred, img), matplotlib.figure.Figure)
