"""Rwp between a computed and a measured G(r), after a linear scale/offset fit.

    Rwp = sqrt( sum_k w_k (G_obs,k - s G_calc,k - c)^2 / sum_k w_k G_obs,k^2 )

(PDFgui's Rw; w = 1 or 1/dG^2). ``s`` (and ``c``) are the closed-form weighted
least-squares solutions, computed per batch element inside the graph, so Rwp
is differentiable with respect to G_calc.
"""

from __future__ import annotations

import torch
from emverse.errors import EmverseError
from emverse.interfaces import Metric

__all__ = ["fit_scale_offset", "rwp", "r_window", "RwpMetric"]


def r_window(r: torch.Tensor, rmin: float | None = None, rmax: float | None = None) -> torch.Tensor:
    """Bool mask of the points with rmin <= r <= rmax (Å); raises if empty."""
    keep = torch.ones_like(r, dtype=torch.bool)
    if rmin is not None:
        keep &= r >= rmin - 1e-9
    if rmax is not None:
        keep &= r <= rmax + 1e-9
    if not bool(keep.any()):
        raise EmverseError(
            f"the fit range r = [{rmin}, {rmax}] Å holds no grid points (grid {float(r[0]):.3f}-{float(r[-1]):.3f} Å); "
            "widen fit_rmin/fit_rmax"
        )
    return keep


def fit_scale_offset(
    calc: torch.Tensor,
    obs: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    offset: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares (scale, offset) with obs ≈ scale * calc + offset along the last axis.

    calc, obs: (..., n_r). Returns tensors of shape (...). ``offset=False`` fixes it at 0.
    """
    calc, obs = torch.broadcast_tensors(calc, obs)
    w = torch.ones_like(obs) if weights is None else torch.broadcast_to(weights, obs.shape)
    sw = w.sum(-1)
    sx = (w * calc).sum(-1)
    sy = (w * obs).sum(-1)
    sxx = (w * calc * calc).sum(-1)
    sxy = (w * calc * obs).sum(-1)
    tiny = torch.finfo(calc.dtype).tiny
    if offset:
        det = sw * sxx - sx * sx
        scale = (sw * sxy - sx * sy) / det.clamp_min(tiny)
        shift = (sy - scale * sx) / sw
    else:
        scale = sxy / sxx.clamp_min(tiny)
        shift = torch.zeros_like(scale)
    return scale, shift


def rwp(
    calc: torch.Tensor,
    obs: torch.Tensor,
    *,
    r: torch.Tensor | None = None,
    rmin: float | None = None,
    rmax: float | None = None,
    weights: torch.Tensor | None = None,
    fit_scale: bool = True,
    fit_offset: bool = False,
) -> torch.Tensor:
    """Rwp (dimensionless, shape (...)) of ``calc`` against ``obs`` (both (..., n_r), same r grid).

    With ``r`` (Å) and ``rmin``/``rmax`` only that range counts. The scale (and
    offset) are fitted over the same range first unless switched off.
    """
    calc = torch.as_tensor(calc)
    obs = torch.as_tensor(obs, dtype=calc.dtype, device=calc.device)
    if calc.shape[-1] != obs.shape[-1]:
        raise EmverseError(
            f"calc has {calc.shape[-1]} r points but obs has {obs.shape[-1]}; compute G(r) on the observed grid"
        )
    if rmin is not None or rmax is not None:
        if r is None:
            raise EmverseError("rmin/rmax need the r grid; pass r=")
        keep = r_window(torch.as_tensor(r, device=calc.device), rmin, rmax)
        calc, obs = calc[..., keep], obs[..., keep]
        if weights is not None:
            weights = torch.as_tensor(weights, dtype=calc.dtype, device=calc.device)[..., keep]
    if fit_scale or fit_offset:
        scale, shift = fit_scale_offset(calc, obs, weights, offset=fit_offset)
        if not fit_scale:
            scale = torch.ones_like(scale)
            shift = (obs - calc).mean(-1) if weights is None else ((obs - calc) * weights).sum(-1) / weights.sum(-1)
        calc = scale[..., None] * calc + shift[..., None]
    w = torch.ones_like(obs) if weights is None else weights
    numerator = (w * (obs - calc) ** 2).sum(-1)
    denominator = (w * obs**2).sum(-1)
    return torch.sqrt(numerator / denominator.clamp_min(torch.finfo(calc.dtype).tiny))


class RwpMetric(Metric):
    """``pdf.rwp``: Rwp of predicted G(r) against the observed G(r) (same r grid).

    ``prediction``/``truth``: (n_r,) or (batch, n_r). Returns ``rwp`` (mean over the
    batch), ``rwp_max`` and ``scale`` (mean fitted scale). The r window needs the
    grid: set :attr:`r` (Å) before calling when ``fit_rmin``/``fit_rmax`` are given.
    """

    def __init__(self, fit_rmin=None, fit_rmax=None, fit_scale=True, fit_offset=False, r=None):
        self.fit_rmin = fit_rmin
        self.fit_rmax = fit_rmax
        self.fit_scale = fit_scale
        self.fit_offset = fit_offset
        self.r = r

    def __call__(self, prediction, truth):
        prediction = torch.as_tensor(prediction).detach()
        truth = torch.as_tensor(truth).detach().to(prediction)
        values = rwp(
            prediction,
            truth,
            r=self.r,
            rmin=self.fit_rmin,
            rmax=self.fit_rmax,
            fit_scale=self.fit_scale,
            fit_offset=self.fit_offset,
        )
        scale, _ = fit_scale_offset(prediction, truth, offset=self.fit_offset)
        return {
            "rwp": float(values.mean()),
            "rwp_max": float(values.max()),
            "scale": float(scale.mean()),
        }

    def figure(self, prediction, truth):
        from emverse import figures as agg  # explicit Agg canvas, no backend switch

        prediction = torch.as_tensor(prediction).detach().reshape(-1, prediction.shape[-1])[0]
        truth = torch.as_tensor(truth).detach().reshape(-1, truth.shape[-1])[0].to(prediction)
        scale, shift = fit_scale_offset(prediction, truth, offset=self.fit_offset)
        fitted = scale * prediction + shift
        r = self.r if self.r is not None else torch.arange(prediction.numel())
        fig, ax = agg.subplots(figsize=(7, 4))
        ax.plot(r, truth, label="observed", lw=1.2)
        ax.plot(r, fitted, label="calculated (scaled)", lw=1.0)
        offset = float(truth.min() - (truth - fitted).max()) - 0.1 * float(truth.abs().max())
        ax.plot(r, truth - fitted + offset, label="difference", lw=0.8)
        ax.set_xlabel("r (Å)" if self.r is not None else "r index")
        ax.set_ylabel("G(r) (Å⁻²)")
        ax.legend()
        fig.tight_layout()
        return fig
