"""Figures of phase volumes (matplotlib, Agg)."""

from __future__ import annotations

import torch


def depth_sum_figure(prediction: torch.Tensor, truth: torch.Tensor, max_slices: int = 6):
    """Depth sums and the first slices of a reconstructed and a true (depth, H, W) volume (rad)."""
    from emverse import figures as agg  # explicit Agg canvas, no backend switch

    pred = prediction.detach().cpu().float()
    true = truth.detach().cpu().float()
    n = min(pred.shape[0], max_slices)
    fig, axes = agg.subplots(2, n + 1, figsize=(2.2 * (n + 1), 4.6), squeeze=False)
    for row, (name, vol) in enumerate((("truth", true), ("reconstruction", pred))):
        axes[row, 0].imshow(vol.sum(0), cmap="magma")
        axes[row, 0].set_title(f"{name}: depth sum", fontsize=8)
        for i in range(n):
            axes[row, i + 1].imshow(vol[i], cmap="magma")
            axes[row, i + 1].set_title(f"slice {i}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def loss_figure(history: list[float]):
    from emverse import figures as agg  # explicit Agg canvas, no backend switch

    fig, ax = agg.subplots(figsize=(4.5, 3.2))
    ax.semilogy(history)
    ax.set_xlabel("epoch / iteration")
    ax.set_ylabel("loss")
    fig.tight_layout()
    return fig
