"""Uncertainty metrics for posterior samples as Metric components: NRMSE, calibration, sharpness,
CRPS, SBC. The measures themselves are :mod:`emverse.statistics` (one home for the project).

Shapes: ``samples`` (n_obs, n_samples, d) posterior draws, ``truth`` (n_obs, d).
A point prediction (n_obs, d) is accepted where it makes sense (NRMSE).
They need only samples and truths, so they work for any posterior (sbi's lesson).

References for NRMSE normalised by the range of a uniform prior U(low, high):
predicting the prior mean gives 1/√12 ≈ 0.289, a random prior draw 1/√6 ≈ 0.408.
"""

from __future__ import annotations

import torch
from emverse.interfaces import Metric
from emverse.statistics import (  # the measures live in the core, defined once
    NRMSE_MEAN_PREDICTOR,
    NRMSE_RANDOM_PREDICTOR,
    calibration_curve,
    calibration_error,
    central_interval_coverage,
    crps,
    nrmse,
    sbc_histogram,
    sbc_ranks,
    sharpness,
)

__all__ = [
    "NRMSE_MEAN_PREDICTOR", "NRMSE_RANDOM_PREDICTOR", "calibration_curve", "calibration_error",
    "central_interval_coverage", "crps", "nrmse", "sbc_histogram", "sbc_ranks", "sharpness",
    "NRMSE", "Calibration", "Sharpness", "CRPS", "SBC",
]


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
