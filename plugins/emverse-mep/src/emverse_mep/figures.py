"""Figures: slices and depth sums side by side, curves (matplotlib, Agg)."""

from __future__ import annotations

import numpy as np


def _plt():
    from emverse import figures  # explicit Agg canvas, no backend switch

    return figures


def slices_figure(volumes: dict[str, np.ndarray], title: str = ""):
    """One row per named (D, H, W) volume: each depth slice, then the depth sum."""
    plt = _plt()
    names = list(volumes)
    depth = next(iter(volumes.values())).shape[0]
    fig, axes = plt.subplots(len(names), depth + 1, figsize=(1.5 * (depth + 1), 1.5 * len(names) + 0.4),
                             squeeze=False)
    for r, name in enumerate(names):
        vol = np.asarray(volumes[name])
        for d in range(depth):
            axes[r, d].imshow(vol[d], cmap="magma")
            axes[r, d].set_xticks([])
            axes[r, d].set_yticks([])
            if r == 0:
                axes[r, d].set_title(f"slice {d}", fontsize=7)
        axes[r, depth].imshow(vol.sum(0), cmap="magma")
        axes[r, depth].set_xticks([])
        axes[r, depth].set_yticks([])
        axes[r, 0].set_ylabel(name, fontsize=7)
    axes[0, depth].set_title("depth sum", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def bars_figure(values: dict[str, tuple[float, float]], ylabel: str):
    """Bar chart of mean ± error per name."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 3))
    names = list(values)
    means = [values[n][0] for n in names]
    errs = [values[n][1] for n in names]
    ax.bar(range(len(names)), means, yerr=errs, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20, fontsize=7)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    return fig


def curves_figure(curves: dict[str, tuple[list[float], list[float]]], xlabel: str, ylabel: str, logx=True):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 3))
    for name, (x, y) in curves.items():
        ax.plot(x, y, marker="o", ms=3, label=name)
    if logx:
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
