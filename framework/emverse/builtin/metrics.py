from __future__ import annotations

import torch

from emverse.interfaces import Metric


class RMSE(Metric):
    """RMSE of a prediction against the truth, per component of the last axis and overall.

    ``prediction`` may hold posterior samples (n_obs, n_samples, d): their mean is scored.
    """

    def __call__(self, prediction: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
        if prediction.dim() == truth.dim() + 1:
            prediction = prediction.mean(dim=1)
        err = (prediction - truth).reshape(-1, truth.shape[-1]) ** 2
        per = err.mean(dim=0).sqrt()
        out = {"rmse": float(err.mean().sqrt())}
        out.update({f"rmse_{i}": float(v) for i, v in enumerate(per)})
        return out
