"""Figures for the metrics (matplotlib, Agg): reliability, coverage–sharpness, ranks, NRMSE, images."""

from __future__ import annotations

from emverse import figures as agg  # explicit Agg canvas, no backend switch


def reliability_figure(nominal, coverage):
    """Empirical coverage of central intervals vs nominal level; the diagonal is perfect calibration."""
    fig, ax = agg.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="ideal")
    for j in range(coverage.shape[1]):
        ax.plot(nominal, coverage[:, j], "-", lw=1, alpha=0.6, label=f"p{j}" if coverage.shape[1] <= 8 else None)
    ax.plot(nominal, coverage.mean(dim=1), "o-", color="k", lw=2, label="mean")
    ax.set_xlabel("nominal level of central interval")
    ax.set_ylabel("empirical coverage")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def coverage_sharpness_figure(nominal, coverage, widths):
    fig, ax = agg.subplots(figsize=(4.5, 3.5))
    sc = ax.scatter(widths, coverage, c=nominal, cmap="viridis")
    ax.plot(widths, nominal, "k--", lw=1, label="nominal")
    fig.colorbar(sc, ax=ax, label="nominal level")
    ax.set_xlabel("mean interval width / range")
    ax.set_ylabel("empirical coverage")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def rank_histogram_figure(hist):
    d = hist.shape[1]
    fig, axes = agg.subplots(1, d, figsize=(2.2 * d, 2.4), squeeze=False)
    expected = float(hist[:, 0].sum()) / hist.shape[0]
    for j in range(d):
        ax = axes[0, j]
        ax.bar(range(hist.shape[0]), hist[:, j].numpy(), width=1.0, color="C0")
        ax.axhline(expected, color="k", ls="--", lw=1)
        ax.set_title(f"p{j}", fontsize=8)
        ax.set_xticks([])
    axes[0, 0].set_ylabel("count")
    fig.suptitle("SBC rank histograms (uniform = calibrated)", fontsize=9)
    fig.tight_layout()
    return fig


def nrmse_figure(values, names):
    from .uq import NRMSE_MEAN_PREDICTOR, NRMSE_RANDOM_PREDICTOR

    fig, ax = agg.subplots(figsize=(max(3, 0.5 * len(values) + 1.5), 3))
    ax.bar(range(len(values)), values.numpy(), color="C0")
    ax.axhline(NRMSE_MEAN_PREDICTOR, color="C1", ls="--", label="1/√12 (prior mean)")
    ax.axhline(NRMSE_RANDOM_PREDICTOR, color="C3", ls=":", label="1/√6 (prior draw)")
    ax.set_xticks(range(len(values)), names, rotation=45, fontsize=7)
    ax.set_ylabel("NRMSE (/ range)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def image_comparison_figure(prediction, truth, scores, label, max_items: int = 4):
    n = min(max_items, prediction.shape[0])
    fig, axes = agg.subplots(2, n, figsize=(2.2 * n, 4.4), squeeze=False)
    for i in range(n):
        p, t = prediction[i], truth[i]
        if p.ndim == 3:  # volume: depth sum
            p, t = p.sum(0), t.sum(0)
        axes[0, i].imshow(t.numpy(), cmap="gray")
        axes[0, i].set_title("truth", fontsize=8)
        axes[1, i].imshow(p.numpy(), cmap="gray")
        axes[1, i].set_title(f"{label} {float(scores[i]):.3g}", fontsize=8)
        for ax in axes[:, i]:
            ax.set_axis_off()
    fig.tight_layout()
    return fig


def bootstrap_figure(result, confidence):
    fig, ax = agg.subplots(figsize=(4.5, 3))
    ax.hist(result.boot_means, bins=40, color="C0", alpha=0.8)
    ax.axvline(0, color="k", lw=1)
    ax.axvline(result.ci_low, color="C3", ls="--", label=f"{confidence:.0%} CI")
    ax.axvline(result.ci_high, color="C3", ls="--")
    ax.set_xlabel("mean score difference A − B (bootstrap)")
    ax.set_title(f"p = {result.p_value:.3g}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
