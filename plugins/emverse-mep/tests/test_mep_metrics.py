"""Volume metrics against hand-computed values (PSNR and SSIM themselves: tests/test_core_image_quality.py)."""

import numpy as np
import pytest
from emverse.errors import EmverseError
from emverse_mep import metrics as M


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


def test_volume_scores_ignore_offset_and_scale():
    """Each volume and depth sum is instance-normalised first: 5x + 2 scores as x itself."""
    rng = np.random.default_rng(5)
    truth = rng.random((3, 4, 16, 16))
    same = M.volume_scores(5.0 * truth + 2.0, truth)
    np.testing.assert_allclose(same["ssim"], 1.0, rtol=1e-12)
    np.testing.assert_allclose(same["ssim_depth_sum"], 1.0, rtol=1e-12)
    assert np.all(same["psnr"] > 150)
    noisy = M.volume_scores(truth + 0.2 * rng.standard_normal(truth.shape), truth)
    assert np.all(noisy["ssim"] < 0.9) and np.all(noisy["psnr"] < 30)
