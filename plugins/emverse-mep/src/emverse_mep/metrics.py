"""Reconstruction quality for volumes (numpy in and out, float64).

* :func:`volume_scores`: per-instance PSNR/SSIM of whole volumes and of depth sums, each
  instance-normalised to [0, 1] (the paper's normalisation: ptychography recovers phase only
  up to scale and offset), through the core's one definition (:mod:`emverse.image_quality`:
  Gaussian-window SSIM, σ = 1.5 voxels, scikit-image's convention; along the 4-slice depth
  axis every voxel is kept);
* :func:`interslice_correlation`: mean Pearson correlation of all pairs of
  depth slices (1 = every slice the same: the depth collapse of the baselines);
* :func:`paired_bootstrap`: one-sided p-value that method A's mean score is
  not above B's on the same instances.
"""

from __future__ import annotations

import numpy as np
import torch
from emverse import image_quality as quality


def volume_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per-instance PSNR/SSIM on the full volume and on the depth sum,
    each after instance normalisation. ``pred``/``truth``: (N, D, H, W)."""
    pred, truth = torch.as_tensor(np.asarray(pred, np.float64)), torch.as_tensor(np.asarray(truth, np.float64))
    p, t = quality.instance_normalise(pred), quality.instance_normalise(truth)
    ps, ts = quality.instance_normalise(pred.sum(1)), quality.instance_normalise(truth.sum(1))
    return {
        "psnr": quality.psnr(p, t).numpy(),
        "ssim": quality.ssim(p, t, spatial_dims=3).numpy(),
        "psnr_depth_sum": quality.psnr(ps, ts).numpy(),
        "ssim_depth_sum": quality.ssim(ps, ts, spatial_dims=2).numpy(),
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
