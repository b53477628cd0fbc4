"""Uncertainty metrics for posterior samples: NRMSE, calibration, sharpness, CRPS, SBC.

Shapes: ``samples`` (n_obs, n_samples, d) posterior draws, ``truth`` (n_obs, d).
A point prediction (n_obs, d) is accepted where it makes sense (NRMSE).
They need only samples and truths, so they work for any posterior (sbi's lesson).

References for NRMSE normalised by the range of a uniform prior U(low, high):
predicting the prior mean gives 1/√12 ≈ 0.289, a random prior draw 1/√6 ≈ 0.408.
"""

from __future__ import annotations

import math

import torch
from emverse.errors import EmverseError
from emverse.interfaces import Metric

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


# ------------------------------------------------------------------------------- functions
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


# ------------------------------------------------------------------------------- Metric components
def _names(d, names):
    return list(names) if names and len(names) == d else [f"p{i}" for i in range(d)]


class NRMSE(Metric):
    """``uq.nrmse``: per-parameter NRMSE of the posterior mean (or a point prediction)."""

    def __init__(self, low=(-1.0,), high=(1.0,), names=()):
        self.low, self.high, self.names = low, high, tuple(names)

    def __call__(self, prediction, truth):
        values = nrmse(prediction, truth, self.low, self.high)
        out = {f"nrmse_{n}": float(v) for n, v in zip(_names(len(values), self.names), values, strict=True)}
        out["nrmse_mean"] = float(values.mean())
        out["reference_mean_predictor"] = NRMSE_MEAN_PREDICTOR
        out["reference_random_predictor"] = NRMSE_RANDOM_PREDICTOR
        return out

    def figure(self, prediction, truth):
        from .figures import nrmse_figure

        values = nrmse(prediction, truth, self.low, self.high)
        return nrmse_figure(values, _names(len(values), self.names))


class Calibration(Metric):
    """``uq.calibration``: coverage of central intervals vs nominal level (reliability diagram)."""

    def __init__(self, levels: int = 19):
        self.levels = levels

    def __call__(self, prediction, truth):
        nominal, coverage = calibration_curve(prediction, truth, self.levels)
        err = (coverage - nominal[:, None]).abs().mean(dim=0)
        out = {f"calibration_error_p{i}": float(v) for i, v in enumerate(err)}
        out["calibration_error"] = float(err.mean())
        idx90 = int(torch.argmin((nominal - 0.9).abs()))
        out["coverage_at_90"] = float(coverage[idx90].mean())
        return out

    def figure(self, prediction, truth):
        from .figures import reliability_figure

        nominal, coverage = calibration_curve(prediction, truth, self.levels)
        return reliability_figure(nominal, coverage)


class Sharpness(Metric):
    """``uq.sharpness``: mean central-interval width normalised by the parameter range."""

    def __init__(self, level: float = 0.9, low=(-1.0,), high=(1.0,)):
        self.level, self.low, self.high = level, low, high

    def __call__(self, prediction, truth):
        widths = sharpness(prediction, truth, self.level, self.low, self.high)
        out = {f"sharpness_p{i}": float(v) for i, v in enumerate(widths)}
        out["sharpness"] = float(widths.mean())
        return out

    def figure(self, prediction, truth):
        from .figures import coverage_sharpness_figure

        nominal, coverage = calibration_curve(prediction, truth, 19)
        widths = torch.stack([sharpness(prediction, truth, float(p), self.low, self.high).mean()
                              for p in nominal])
        return coverage_sharpness_figure(nominal, coverage.mean(dim=1), widths)


class CRPS(Metric):
    """``uq.crps``: continuous ranked probability score (units of the parameters; lower is better)."""

    def __call__(self, prediction, truth):
        values = crps(prediction, truth)
        out = {f"crps_p{i}": float(v) for i, v in enumerate(values)}
        out["crps"] = float(values.mean())
        return out


class SBC(Metric):
    """``uq.sbc``: rank histograms; reports the χ² statistic vs uniform and its p-value per parameter.

    Valid when the truths were drawn from the prior the posterior is conditioned on.
    """

    def __init__(self, bins: int = 10):
        self.bins = bins

    def __call__(self, prediction, truth):
        from scipy.stats import chi2

        ranks = sbc_ranks(prediction, truth)
        hist = sbc_histogram(ranks, prediction.shape[1], self.bins)
        expected = ranks.shape[0] / self.bins
        stat = ((hist - expected) ** 2 / expected).sum(dim=0)
        out = {}
        for i, s in enumerate(stat):
            out[f"sbc_chi2_p{i}"] = float(s)
            out[f"sbc_pvalue_p{i}"] = float(chi2.sf(float(s), self.bins - 1))
        out["sbc_min_pvalue"] = min(v for k, v in out.items() if "pvalue" in k)
        return out

    def figure(self, prediction, truth):
        from .figures import rank_histogram_figure

        ranks = sbc_ranks(prediction, truth)
        return rank_histogram_figure(sbc_histogram(ranks, prediction.shape[1], self.bins))
