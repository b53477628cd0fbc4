"""The ``stats.paired_bootstrap`` metric: method A against method B on the same test set.

The statistics themselves are the core's (:mod:`emverse.statistics`).
"""

from __future__ import annotations

import numpy as np
import torch
from emverse.errors import EmverseError
from emverse.interfaces import Metric
from emverse.statistics import BootstrapResult, paired_bootstrap  # noqa: F401 - re-exported


def instance_scores(prediction: torch.Tensor, truth: torch.Tensor, score: str = "mse") -> torch.Tensor:
    diff = (prediction.detach().double() - truth.detach().double()).reshape(truth.shape[0], -1)
    if score == "mse":
        return (diff**2).mean(dim=1)
    if score == "mae":
        return diff.abs().mean(dim=1)
    raise EmverseError(f"score = {score!r} is unknown; use 'mse' or 'mae'")


class PairedBootstrap(Metric):
    """``stats.paired_bootstrap``: ``prediction`` (2, n, ...) stacks methods A and B, ``truth`` (n, ...)."""

    def __init__(self, score: str = "mse", n_boot: int = 2000, confidence: float = 0.95, seed: int = 0):
        self.score, self.n_boot, self.confidence, self.seed = score, n_boot, confidence, seed

    def _result(self, prediction, truth):
        if prediction.ndim != truth.ndim + 1 or prediction.shape[0] != 2 or prediction.shape[1:] != truth.shape:
            raise EmverseError(
                f"stats.paired_bootstrap takes prediction (2, n, ...) = methods A and B stacked, and truth "
                f"(n, ...); got {tuple(prediction.shape)} and {tuple(truth.shape)}"
            )
        a = instance_scores(prediction[0], truth, self.score)
        b = instance_scores(prediction[1], truth, self.score)
        return paired_bootstrap(a, b, n_boot=self.n_boot, confidence=self.confidence,
                                rng=np.random.default_rng(self.seed))

    def __call__(self, prediction, truth):
        r = self._result(prediction, truth)
        return {f"{self.score}_a": r.mean_a, f"{self.score}_b": r.mean_b, "difference": r.difference,
                "ci_low": r.ci_low, "ci_high": r.ci_high, "p_value": r.p_value}

    def figure(self, prediction, truth):
        from .figures import bootstrap_figure

        return bootstrap_figure(self._result(prediction, truth), self.confidence)
