"""Statistics every evaluation uses: the paired bootstrap (one implementation for the project).

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
                     rng: np.random.Generator | None = None) -> BootstrapResult:
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
    null = (d - observed)[idx].mean(axis=1)
    p = (np.count_nonzero(np.abs(null) >= abs(observed)) + 1) / (n_boot + 1)
    return BootstrapResult(float(a.mean()), float(b.mean()), float(observed), float(lo), float(hi), float(p), boot)
