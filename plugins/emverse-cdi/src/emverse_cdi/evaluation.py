"""Posterior quality measures and figures of the CBED paper (§3.4, §5).

Everything here works on tensors only: ``samples`` (N, S, P) posterior draws
and ``truth`` (N, P), in physical units, with the parameter ranges from a
:class:`~emverse.parameter_space.ParameterSpace`.

* NRMSE (§5.1): RMSE / (high − low), per parameter, of the posterior mean
  and of a single draw.
* Calibration (§3.4, eq. 5): for a confidence level c the central interval
  between the (1−c)/2 and (1+c)/2 sample quantiles should hold the truth
  with frequency c; the calibration error of a parameter is the mean
  |coverage(c) − c| over the levels c = 0.05, 0.10, …, 0.95.
* Sharpness (eq. 6): the mean width of those intervals divided by the range.
"""

from __future__ import annotations

import numpy as np
import torch
from emverse import figures as agg  # explicit Agg canvas, no backend switch
from emverse.parameter_space import ParameterSpace
from emverse_diffusion.metrics import uq

LEVELS = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)


def nrmse(prediction: torch.Tensor, truth: torch.Tensor, space: ParameterSpace) -> torch.Tensor:
    """RMSE / (high − low) per parameter, shape (P,) (emverse-diffusion's ``uq.nrmse``)."""
    return uq.nrmse(prediction, truth, *space.bounds(torch.float64))


def calibration(samples, truth, space: ParameterSpace, levels: torch.Tensor = LEVELS) -> dict:
    """Coverage (L, P), sharpness (L, P; width / range) and calibration error (P,).

    Coverage and sharpness are emverse-diffusion's ``uq`` measures at each level.
    """
    covered = uq.central_interval_coverage(samples, truth, levels)
    low, high = space.bounds(torch.float64)
    sharpness = torch.stack([uq.sharpness(samples, truth, float(c), low, high) for c in levels])
    error = (covered - levels[:, None]).abs().mean(dim=0)
    return {"levels": levels, "coverage": covered, "sharpness": sharpness, "error": error}


def summary_table(space, cdi_samples, truth, regression=None):
    """Rows for the per-parameter table (paper table 1 shape) and the metric dict."""
    names = space.names
    mean_nrmse = nrmse(cdi_samples.mean(dim=1), truth, space)
    single_nrmse = nrmse(cdi_samples[:, 0], truth, space)
    calib = calibration(cdi_samples, truth, space)
    reg_nrmse = nrmse(regression, truth, space) if regression is not None else None
    i90 = int(torch.argmin((LEVELS - 0.9).abs()))
    rows, metrics = [], {}
    for p, name in enumerate(names):
        row = [name, space.units[p], f"{float(mean_nrmse[p]):.3f}", f"{float(single_nrmse[p]):.3f}"]
        row.append(f"{float(reg_nrmse[p]):.3f}" if reg_nrmse is not None else "")
        row += [f"{float(calib['error'][p]):.3f}", f"{float(calib['coverage'][i90, p]):.3f}",
                f"{float(calib['sharpness'][i90, p]):.3f}"]
        rows.append(row)
        metrics[f"nrmse_mean/{name}"] = float(mean_nrmse[p])
        metrics[f"nrmse_single/{name}"] = float(single_nrmse[p])
        metrics[f"calibration_error/{name}"] = float(calib["error"][p])
        metrics[f"sharpness90/{name}"] = float(calib["sharpness"][i90, p])
        if reg_nrmse is not None:
            metrics[f"regression_nrmse/{name}"] = float(reg_nrmse[p])
    metrics["calibration_error_mean"] = float(calib["error"].mean())
    header = ["parameter", "unit", "CDI NRMSE (mean)", "CDI NRMSE (1 draw)", "regression NRMSE",
              "calibration error", "coverage @90%", "sharpness @90% (/range)"]
    return header, rows, metrics, calib


# -- figures -------------------------------------------------------------------------------
def _grid(n: int):
    cols = min(5, n)
    rows = (n + cols - 1) // cols
    fig, axes = agg.subplots(rows, cols, figsize=(3.0 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def calibration_figure(calib: dict, space: ParameterSpace):
    fig, axes = _grid(len(space))
    levels = calib["levels"].numpy()
    for p, ax in enumerate(axes[: len(space)]):
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.plot(levels, calib["coverage"][:, p].numpy(), "o-", ms=3)
        ax.set_title(f"{space.names[p]}  err {float(calib['error'][p]):.3f}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    fig.supxlabel("confidence level")
    fig.supylabel("empirical coverage")
    fig.tight_layout()
    return fig


def coverage_sharpness_figure(calib: dict, space: ParameterSpace):
    fig, ax = agg.subplots(figsize=(6, 4.5))
    cmap = agg.get_cmap("tab20")
    for p, name in enumerate(space.names):
        ax.plot(calib["sharpness"][:, p].numpy(), calib["coverage"][:, p].numpy(), "-",
                color=cmap(p % 20), label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="1:1 (uninformative)")
    ax.set_xlabel("normalised sharpness (interval width / range)")
    ax.set_ylabel("empirical coverage")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def nrmse_figure(space, metrics: dict):
    names = space.names
    x = np.arange(len(names))
    fig, ax = agg.subplots(figsize=(9, 3.5))
    cdi = [metrics[f"nrmse_mean/{n}"] for n in names]
    ax.bar(x - 0.2, cdi, 0.4, label="CDI posterior mean")
    if f"regression_nrmse/{names[0]}" in metrics:
        ax.bar(x + 0.2, [metrics[f"regression_nrmse/{n}"] for n in names], 0.4, label="regression")
    ax.axhline(1 / np.sqrt(12), color="k", ls=":", lw=1, label="mean predictor 0.289")
    ax.axhline(1 / np.sqrt(6), color="r", ls=":", lw=1, label="uniform draw 0.408")
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("NRMSE")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def histogram_figure(samples_one, truth_one, space, regression_one=None, title=""):
    """Posterior histograms of one pattern: samples (S, P), truth (P,), regression (P,)."""
    fig, axes = _grid(len(space))
    low, high = space.bounds(torch.float64)
    for p, ax in enumerate(axes[: len(space)]):
        ax.hist(samples_one[:, p].double().numpy(), bins=20,
                range=(float(low[p]), float(high[p])), color="C0", alpha=0.7, label="CDI")
        ax.axvline(float(truth_one[p]), color="k", lw=2, label="truth")
        if regression_one is not None:
            ax.axvline(float(regression_one[p]), color="C3", ls="--", lw=2, label="regression")
        ax.set_title(f"{space.names[p]} [{space.units[p]}]", fontsize=9)
        ax.set_yticks([])
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def ppc_figure(observed, simulated_mean, simulated_draws, prior_draws=None, title=""):
    """Posterior predictive check for one pattern: observed (H, W), the pattern re-simulated
    at the posterior mean, two posterior draws and (optionally) one prior draw, with residuals."""
    panels = [("observed", observed), ("posterior mean", simulated_mean)]
    panels += [(f"posterior draw {i + 1}", d) for i, d in enumerate(simulated_draws[:2])]
    if prior_draws is not None and len(prior_draws):
        panels.append(("prior draw", prior_draws[0]))
    fig, axes = agg.subplots(2, len(panels), figsize=(2.6 * len(panels), 5.2), squeeze=False)
    vmax = float(observed.max())
    for i, (name, img) in enumerate(panels):
        axes[0, i].imshow(img.numpy(), cmap="inferno", vmin=0, vmax=vmax)
        axes[0, i].set_title(name, fontsize=9)
        resid = (img - observed).numpy()
        rel = float(np.linalg.norm(resid) / max(np.linalg.norm(observed.numpy()), 1e-30))
        axes[1, i].imshow(resid, cmap="RdBu_r", vmin=-0.5 * vmax, vmax=0.5 * vmax)
        axes[1, i].set_title(f"residual ‖Δ‖/‖y‖={rel:.3f}", fontsize=8)
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def relative_residual(simulated: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """‖simulated − observed‖ / ‖observed‖ per pattern; simulated (K, H, W), observed (H, W)."""
    diff = (simulated - observed[None]).flatten(1).norm(dim=1)
    return diff / observed.flatten().norm().clamp_min(1e-30)
