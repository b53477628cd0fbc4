"""Statistics every evaluation uses, one implementation for the project: the paired bootstrap
and the measures of posterior draws (NRMSE, central-interval coverage, calibration error,
sharpness, CRPS, SBC ranks).

Shapes for posterior measures: ``samples`` (n_obs, n_samples, d), ``truth`` (n_obs, d).
NRMSE is normalised by the range of a uniform prior U(low, high): predicting the prior mean
gives 1/√12 ≈ 0.289, a random prior draw 1/√6 ≈ 0.408.

Paired bootstrap: is method A better than method B on the same test set?

Given per-instance scores a_i and b_i (lower is better, e.g. MSE) on the same
n instances, d_i = a_i − b_i. The confidence interval of mean(d) is the
percentile interval of the means of n_boot resamples (with replacement, the
same indices for a and b: that is what "paired" means). The two-sided p-value
of H0: E[d] = 0 resamples the centred differences d_i − mean(d) (the null
distribution) and counts |mean*| ≥ |mean(d)|, with the (k + 1)/(n_boot + 1)
correction so it is never exactly 0.
"""

from __future__ import annotations

import math

import attrs
import numpy as np
import torch

from emverse.errors import EmverseError


@attrs.frozen
class BootstrapResult:
    mean_a: float
    mean_b: float
    difference: float  # mean(a − b)
    ci_low: float
    ci_high: float
    p_value: float
    boot_means: np.ndarray = attrs.field(eq=False, repr=False)


def paired_bootstrap(scores_a, scores_b, *, n_boot: int = 2000, confidence: float = 0.95,
                     rng: np.random.Generator | None = None, alternative: str = "two-sided") -> BootstrapResult:
    """Paired bootstrap of mean(a − b) over the instances: its central ``confidence`` interval
    from ``n_boot`` resamples and a p-value. ``alternative = "two-sided"``: the bootstrap
    distribution re-centred on 0 (the null of no difference) against |observed|;
    ``"greater"`` (a is better, higher): the one-sided P(resampled mean difference ≤ 0)."""
    if alternative not in ("two-sided", "greater"):
        raise EmverseError(f"alternative {alternative!r} is unknown; use 'two-sided' or 'greater'")
    a = np.asarray(torch.as_tensor(scores_a).detach().double().cpu(), dtype=float).reshape(-1)
    b = np.asarray(torch.as_tensor(scores_b).detach().double().cpu(), dtype=float).reshape(-1)
    if a.shape != b.shape or a.size < 2:
        raise EmverseError(
            f"paired bootstrap needs the same number (≥ 2) of scores for both methods; got {a.size} and {b.size}"
        )
    if rng is None:
        raise EmverseError("paired_bootstrap needs an explicit numpy Generator (rng=np.random.default_rng(seed))")
    d = a - b
    n = d.size
    idx = rng.integers(0, n, size=(n_boot, n))
    boot = d[idx].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(boot, [tail, 1.0 - tail])
    observed = d.mean()
    if alternative == "greater":
        p = (np.count_nonzero(boot <= 0) + 1) / (n_boot + 1)
    else:
        null = (d - observed)[idx].mean(axis=1)
        p = (np.count_nonzero(np.abs(null) >= abs(observed)) + 1) / (n_boot + 1)
    return BootstrapResult(float(a.mean()), float(b.mean()), float(observed), float(lo), float(hi), float(p), boot)


# ----------------------------------------------------------------------- posterior draws
NRMSE_MEAN_PREDICTOR = 1.0 / math.sqrt(12.0)  # predicting the centre of U(low, high)
NRMSE_RANDOM_PREDICTOR = 1.0 / math.sqrt(6.0)  # predicting an independent draw of U(low, high)


def _check_samples(samples: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if samples.ndim == truth.ndim:  # no sample axis
        raise EmverseError(
            f"expected posterior samples of shape (n_obs, n_samples, d) and truth (n_obs, d); got "
            f"samples {tuple(samples.shape)} and truth {tuple(truth.shape)}"
        )
    if samples.ndim == 2:
        samples = samples[..., None]
        truth = truth[..., None]
    if samples.shape[0] != truth.shape[0] or samples.shape[2:] != truth.shape[1:]:
        raise EmverseError(
            f"samples {tuple(samples.shape)} do not match truth {tuple(truth.shape)}: need "
            "(n_obs, n_samples, *shape) and (n_obs, *shape)"
        )
    return samples.detach().double().cpu().flatten(2), truth.detach().double().cpu().flatten(1)


def _ranges(low, high, d: int):
    low = torch.as_tensor(low, dtype=torch.float64).reshape(-1)
    high = torch.as_tensor(high, dtype=torch.float64).reshape(-1)
    if low.numel() == 1:
        low = low.expand(d)
    if high.numel() == 1:
        high = high.expand(d)
    if low.numel() != d or high.numel() != d:
        raise EmverseError(f"give one low/high per parameter ({d}) or a single value; got {low.numel()}/{high.numel()}")
    if not (high > low).all():
        raise EmverseError("every parameter's high must exceed its low")
    return low, high


def nrmse(prediction: torch.Tensor, truth: torch.Tensor, low, high) -> torch.Tensor:
    """Per-parameter RMSE / (high − low); ``prediction`` (n, d) or samples (n, s, d) (their mean)."""
    prediction, truth = prediction.detach().double().cpu(), truth.detach().double().cpu()
    if prediction.ndim == truth.ndim + 1:
        prediction = prediction.mean(dim=1)
    low, high = _ranges(low, high, truth.shape[-1])
    return ((prediction - truth) ** 2).mean(dim=0).sqrt() / (high - low)


def central_interval_coverage(samples, truth, levels: torch.Tensor) -> torch.Tensor:
    """Fraction of truths inside each central interval, per level and parameter: (levels, d).

    The interval at level p spans the empirical (1−p)/2 and (1+p)/2 quantiles of the samples.
    """
    samples, truth = _check_samples(samples, truth)
    levels = torch.as_tensor(levels, dtype=torch.float64)
    lo_q = torch.quantile(samples, ((1 - levels) / 2), dim=1)  # (L, n, d)
    hi_q = torch.quantile(samples, ((1 + levels) / 2), dim=1)
    inside = (truth[None] >= lo_q) & (truth[None] <= hi_q)
    return inside.double().mean(dim=1)


def calibration_curve(samples, truth, levels: int = 19):
    """(nominal levels (L,), empirical coverage (L, d)) for levels 0.05, 0.10, … (``levels`` of them)."""
    nominal = torch.arange(1, levels + 1, dtype=torch.float64) / (levels + 1)
    return nominal, central_interval_coverage(samples, truth, nominal)


def calibration_error(samples, truth, levels: int = 19) -> torch.Tensor:
    """Mean |coverage − nominal| over levels, per parameter (d,)."""
    nominal, coverage = calibration_curve(samples, truth, levels)
    return (coverage - nominal[:, None]).abs().mean(dim=0)


def sharpness(samples, truth, level: float, low, high) -> torch.Tensor:
    """Mean width of the central ``level`` interval / (high − low), per parameter."""
    samples, truth = _check_samples(samples, truth)
    low, high = _ranges(low, high, truth.shape[-1])
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    bounds = torch.quantile(samples, q, dim=1)
    return (bounds[1] - bounds[0]).mean(dim=0) / (high - low)


def crps(samples, truth) -> torch.Tensor:
    """Sample CRPS per parameter (mean over observations): E|X − y| − ½ E|X − X'|.

    Uses the sorted-sample identity E|X − X'| = 2/m² Σ_i (2i − m − 1) x_(i) (i = 1…m).
    """
    samples, truth = _check_samples(samples, truth)
    m = samples.shape[1]
    term1 = (samples - truth[:, None]).abs().mean(dim=1)
    ordered = samples.sort(dim=1).values
    weights = (2 * torch.arange(1, m + 1, dtype=torch.float64) - m - 1)[None, :, None]
    term2 = (weights * ordered).sum(dim=1) * 2 / m**2
    return (term1 - 0.5 * term2).mean(dim=0)


def sbc_ranks(samples, truth) -> torch.Tensor:
    """Rank of each truth among its posterior samples (0 … n_samples), shape (n_obs, d)."""
    samples, truth = _check_samples(samples, truth)
    return (samples < truth[:, None]).sum(dim=1)


def sbc_histogram(ranks: torch.Tensor, n_samples: int, bins: int) -> torch.Tensor:
    """Counts of ranks in ``bins`` equal bins over 0 … n_samples: (bins, d)."""
    edges = (ranks.double() * bins / (n_samples + 1)).floor().long().clamp(0, bins - 1)
    hist = torch.zeros(bins, ranks.shape[1], dtype=torch.float64)
    for j in range(ranks.shape[1]):
        hist[:, j] = torch.bincount(edges[:, j], minlength=bins).double()
    return hist


