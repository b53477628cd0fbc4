"""Volume metrics against hand-computed values."""

import numpy as np
import pytest
from emverse.errors import EmverseError
from emverse_mep import metrics as M


def test_instance_normalise_and_psnr():
    rng = np.random.default_rng(0)
    x = rng.random((3, 4, 8, 8))
    n = M.instance_normalise(5.0 * x + 2.0)
    np.testing.assert_allclose(n.reshape(3, -1).min(1), 0.0)
    np.testing.assert_allclose(n.reshape(3, -1).max(1), 1.0)
    np.testing.assert_allclose(n, M.instance_normalise(x))
    # uniform offset δ: MSE = δ², PSNR = −10 log10 δ² (data range 1)
    assert M.psnr(n[0] + 0.1, n[0]) == pytest.approx(20.0, abs=1e-9)


def test_ssim_limits():
    rng = np.random.default_rng(1)
    truth = rng.random((4, 24, 24))
    assert M.ssim(truth, truth) == pytest.approx(1.0, abs=1e-12)
    noisy = [M.ssim(np.clip(truth + s * rng.standard_normal(truth.shape), 0, 1), truth) for s in (0.05, 0.2, 0.5)]
    assert noisy[0] > noisy[1] > noisy[2]
    # a constant prediction has no structure: SSIM ≈ luminance term × c2/(σ_y² + c2) ≪ 1
    assert M.ssim(np.full_like(truth, truth.mean()), truth) < 0.05
    # anti-correlated image: negative SSIM
    assert M.ssim(1.0 - truth, truth) < -0.5
    with pytest.raises(ValueError, match="shapes"):
        M.ssim(truth, truth[:2])


def test_ssim_of_uniform_images_by_hand():
    """Two constant images a, b: SSIM = (2ab + c1)/(a² + b² + c1) (variances vanish)."""
    a, b = 0.3, 0.6
    c1, c2 = 1e-4, 9e-4
    x = np.full((4, 16, 16), a)
    y = np.full((4, 16, 16), b)
    expected = (2 * a * b + c1) / (a * a + b * b + c1) * (c2 / c2)
    assert M.ssim(x, y) == pytest.approx(expected, rel=1e-9)


def test_interslice_correlation():
    rng = np.random.default_rng(2)
    slab = rng.random((1, 1, 16, 16))
    assert M.interslice_correlation(np.repeat(slab, 4, axis=1))[0] == pytest.approx(1.0)
    independent = rng.random((1, 8, 32, 32))
    assert abs(M.interslice_correlation(independent)[0]) < 0.1


def test_spread_error_correlation_detects_informative_spread():
    rng = np.random.default_rng(3)
    truth = rng.random((2, 4, 16, 16))
    # samples whose noise is large exactly where a fixed bias is large
    scale = np.zeros_like(truth)
    scale[:, :, :8] = 0.3
    samples = truth[:, None] + scale[:, None] * rng.standard_normal((2, 6, 4, 16, 16))
    corr = M.spread_error_correlation(samples, truth)
    assert np.all(corr > 0.3)
    uninformative = truth[:, None] + 0.1 * rng.standard_normal((2, 6, 4, 16, 16))
    assert np.all(np.abs(M.spread_error_correlation(uninformative, truth)) < 0.2)


def test_paired_bootstrap():
    rng = np.random.default_rng(4)
    b = rng.random(20)
    better = M.paired_bootstrap(b + 0.1 + 0.01 * rng.standard_normal(20), b, 2000, np.random.default_rng(0))
    assert better["p_value"] < 0.01 and better["ci_low"] > 0
    same = M.paired_bootstrap(b + 0.05 * rng.standard_normal(20), b, 2000, np.random.default_rng(0))
    assert same["p_value"] > 0.05
    with pytest.raises(EmverseError, match="same number"):
        M.paired_bootstrap(b, b[:5], 10, np.random.default_rng(0))


def test_psnr_agrees_with_emverse_diffusion():
    """Same definition in the shared toolkit (instance-normalised, data range 1)."""
    torch = pytest.importorskip("torch")
    image = pytest.importorskip("emverse_diffusion.metrics.image")
    rng = np.random.default_rng(5)
    truth = rng.random((3, 4, 16, 16))
    pred = truth + 0.1 * rng.standard_normal(truth.shape)
    ours = M.volume_scores(pred, truth)["psnr"]
    theirs = image.psnr(torch.as_tensor(pred), torch.as_tensor(truth), spatial_dims=3)  # per instance, dB
    np.testing.assert_allclose(theirs.numpy(), ours, rtol=1e-9)
