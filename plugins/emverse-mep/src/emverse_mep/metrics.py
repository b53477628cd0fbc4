"""Reconstruction quality for volumes (numpy, float64).

* :func:`instance_normalise`: min–max to [0, 1] per instance (the paper's
  normalisation: ptychography recovers phase only up to scale and offset);
* :func:`psnr` with data range 1 on normalised inputs (dB);
* :func:`ssim`: SSIM (Wang et al. 2004) in any dimension with a Gaussian
  window (σ = 1.5 voxels, truncated at 3.5σ, reflect boundary), K1 = 0.01,
  K2 = 0.03, data range 1; the mean is taken over voxels at least the window
  radius from the border along axes long enough to have such voxels (skimage's
  convention), over all voxels along short axes (a 4-slice depth axis);
* :func:`interslice_correlation`: mean Pearson correlation of all pairs of
  depth slices (1 = every slice the same: the depth collapse of the baselines);
* :func:`paired_bootstrap`: one-sided p-value that method A's mean score is
  not above B's on the same instances.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5


def instance_normalise(x: np.ndarray) -> np.ndarray:
    """Each instance (leading axis) min–max scaled to [0, 1]; constant → 0."""
    x = np.asarray(x, dtype=np.float64)
    flat = x.reshape(x.shape[0], -1)
    low = flat.min(axis=1)
    span = flat.max(axis=1) - low
    span[span == 0] = 1.0
    shape = (-1,) + (1,) * (x.ndim - 1)
    return (x - low.reshape(shape)) / span.reshape(shape)


def psnr(pred: np.ndarray, truth: np.ndarray, data_range: float = 1.0) -> float:
    mse = float(np.mean((np.asarray(pred, np.float64) - np.asarray(truth, np.float64)) ** 2))
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def ssim(pred: np.ndarray, truth: np.ndarray, data_range: float = 1.0) -> float:
    """SSIM of two arrays of the same shape (one instance, any dimension)."""
    x = np.asarray(pred, np.float64)
    y = np.asarray(truth, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"ssim: shapes differ, {x.shape} vs {y.shape}")

    def blur(a):
        return ndimage.gaussian_filter(a, SSIM_SIGMA, mode="reflect", truncate=SSIM_TRUNCATE)

    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    index = tuple(slice(radius, n - radius) if n > 2 * radius else slice(None) for n in x.shape)
    return float(ssim_map[index].mean())


def volume_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per-instance PSNR/SSIM on the full volume and on the depth sum,
    each after instance normalisation. ``pred``/``truth``: (N, D, H, W)."""
    p, t = instance_normalise(pred), instance_normalise(truth)
    ps, ts = instance_normalise(np.asarray(pred).sum(1)), instance_normalise(np.asarray(truth).sum(1))
    return {
        "psnr": np.array([psnr(a, b) for a, b in zip(p, t, strict=True)]),
        "ssim": np.array([ssim(a, b) for a, b in zip(p, t, strict=True)]),
        "psnr_depth_sum": np.array([psnr(a, b) for a, b in zip(ps, ts, strict=True)]),
        "ssim_depth_sum": np.array([ssim(a, b) for a, b in zip(ps, ts, strict=True)]),
    }


def interslice_correlation(volumes: np.ndarray) -> np.ndarray:
    """Mean Pearson correlation over all pairs of depth slices, per instance (N,)."""
    v = np.asarray(volumes, np.float64)
    out = []
    for vol in v:
        flat = vol.reshape(vol.shape[0], -1)
        flat = flat - flat.mean(axis=1, keepdims=True)
        norm = np.linalg.norm(flat, axis=1)
        norm[norm == 0] = 1.0
        corr = (flat @ flat.T) / np.outer(norm, norm)
        iu = np.triu_indices(vol.shape[0], k=1)
        out.append(float(corr[iu].mean()) if len(iu[0]) else 1.0)
    return np.array(out)


def spread_error_correlation(samples: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per instance, Pearson correlation over voxels between the per-voxel
    standard deviation of the samples (N, S, D, H, W) and the absolute error
    of their mean, in the data's own units (no per-sample normalisation,
    which would itself inject spread; Pearson is scale-invariant)."""
    s = np.asarray(samples, np.float64)
    t = np.asarray(truth, np.float64)
    out = []
    for i in range(s.shape[0]):
        spread = s[i].std(axis=0).ravel()
        error = np.abs(s[i].mean(axis=0) - t[i]).ravel()
        if spread.std() == 0 or error.std() == 0:
            out.append(0.0)
            continue
        out.append(float(np.corrcoef(spread, error)[0, 1]))
    return np.array(out)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_resamples: int, rng: np.random.Generator) -> dict[str, float]:
    """Paired bootstrap of mean(a − b) over instances (the core's :func:`emverse.statistics.paired_bootstrap`,
    one-sided): the mean difference, its 95 % interval and P(mean diff ≤ 0)."""
    from emverse.statistics import paired_bootstrap as bootstrap

    r = bootstrap(a, b, n_boot=n_resamples, confidence=0.95, rng=rng, alternative="greater")
    return {"mean_difference": r.difference, "ci_low": r.ci_low, "ci_high": r.ci_high, "p_value": r.p_value}
