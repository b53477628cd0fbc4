"""Small matplotlib helpers (Agg backend: no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def new_figure(ncols: int = 1, nrows: int = 1, size: float = 3.2):
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    return fig, axes


def observations_figure(y, max_items: int = 8, title: str = "observations"):
    """Images for 2D observations, curves for 1D, the mean over extra axes otherwise."""
    y = np.asarray(y.detach().cpu() if hasattr(y, "detach") else y)
    n = min(len(y), max_items)
    if y.ndim == 2:
        fig, axes = new_figure(1, 1, size=5)
        for i in range(n):
            axes[0, 0].plot(y[i], lw=1)
        axes[0, 0].set_title(title)
        return fig
    fig, axes = new_figure(n, 1)
    for i in range(n):
        image = y[i]
        while image.ndim > 2:
            image = image.mean(axis=0)
        axes[0, i].imshow(image, cmap="inferno")
        axes[0, i].set_axis_off()
        axes[0, i].set_title(f"{title} {i}", fontsize=8)
    return fig


def posterior_figure(samples, truth, names=()):
    """Histograms of posterior samples of the first observation beside the truth."""
    samples = np.asarray(samples.detach().cpu())
    truth = np.asarray(truth.detach().cpu())
    d = samples.shape[-1]
    cols = min(d, 6)
    rows = int(np.ceil(d / cols))
    fig, axes = new_figure(cols, rows, size=2.4)
    for j in range(rows * cols):
        ax = axes[j // cols, j % cols]
        if j >= d:
            ax.set_axis_off()
            continue
        ax.hist(samples[0, :, j], bins=30, color="tab:blue", alpha=0.7)
        ax.axvline(truth[0, j], color="k", lw=2)
        ax.set_title(names[j] if j < len(names) else f"x{j}", fontsize=8)
    fig.tight_layout()
    return fig
