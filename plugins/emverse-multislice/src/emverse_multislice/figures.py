"""Figures of phase volumes (matplotlib, Agg)."""

from __future__ import annotations

import torch


def depth_sum_figure(prediction: torch.Tensor, truth: torch.Tensor | None, max_slices: int = 6):
    """Depth sums and the first slices of a reconstructed and (when known) a true (depth, H, W)
    volume, phase in rad with a colour bar each."""
    from emverse import figures as agg  # explicit Agg canvas, no backend switch

    pred = prediction.detach().cpu().float()
    rows = [("reconstruction", pred)]
    if truth is not None:
        rows.insert(0, ("truth", truth.detach().cpu().float()))
    n = min(pred.shape[0], max_slices)
    fig, axes = agg.subplots(len(rows), n + 1, figsize=(2.4 * (n + 1), 2.3 * len(rows)), squeeze=False)
    for row, (name, vol) in enumerate(rows):
        image = axes[row, 0].imshow(vol.sum(0).numpy(), cmap="magma")
        fig.colorbar(image, ax=axes[row, 0], fraction=0.046, label="rad")
        axes[row, 0].set_title(f"{name}: depth sum", fontsize=8)
        for i in range(n):
            image = axes[row, i + 1].imshow(vol[i].numpy(), cmap="magma")
            fig.colorbar(image, ax=axes[row, i + 1], fraction=0.046)
            axes[row, i + 1].set_title(f"slice {i} (rad)", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def loss_figure(history: list[float]):
    from emverse import figures as agg  # explicit Agg canvas, no backend switch

    fig, ax = agg.subplots(figsize=(4.5, 3.2))
    ax.semilogy(list(history))
    ax.set_xlabel("epoch / iteration")
    ax.set_ylabel("loss")
    fig.tight_layout()
    return fig


def probe_figure(modes_fourier: torch.Tensor, fractions: torch.Tensor, positions: torch.Tensor,
                 nominal: torch.Tensor):
    """Real-space intensity of each probe mode (with its power fraction) and the refined scan
    positions against the nominal grid (Å)."""
    from emverse import figures as agg  # explicit Agg canvas, no backend switch

    m = modes_fourier.shape[0]
    fig, axes = agg.subplots(1, m + 1, figsize=(2.6 * (m + 1), 2.8), squeeze=False)
    for i in range(m):
        wave = torch.fft.fftshift(torch.fft.ifft2(modes_fourier[i], norm="ortho"))
        image = axes[0, i].imshow((wave.abs() ** 2).float().numpy(), cmap="viridis")
        fig.colorbar(image, ax=axes[0, i], fraction=0.046)
        axes[0, i].set_title(f"mode {i}: {100 * float(fractions[i]):.1f} %", fontsize=8)
        axes[0, i].set_xticks([])
        axes[0, i].set_yticks([])
    ax = axes[0, m]
    nominal, positions = nominal.double().numpy(), positions.double().numpy()
    ax.scatter(nominal[:, 1], nominal[:, 0], s=6, c="0.6", label="nominal")
    ax.scatter(positions[:, 1], positions[:, 0], s=6, c="C3", label="refined")
    ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.set_xlabel("Å")
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig
