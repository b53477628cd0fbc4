"""Figures on an explicit Agg canvas: no display needed, and no global backend switch.

``matplotlib.use("Agg")`` would change the backend of a Jupyter session that
calls :func:`emverse.run`; building :class:`matplotlib.figure.Figure` objects
with a :class:`~matplotlib.backends.backend_agg.FigureCanvasAgg` leaves pyplot
alone. Use :func:`subplots` / :func:`figure` where pyplot's would be used, and
:func:`image_panel` for images so every one carries a colour bar with its unit.
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def figure(figsize=(6.4, 4.8), **kwargs) -> Figure:
    """A new figure drawn by Agg (``matplotlib.pyplot.figure`` without pyplot)."""
    fig = Figure(figsize=figsize, **kwargs)
    FigureCanvasAgg(fig)
    return fig


def subplots(nrows: int = 1, ncols: int = 1, *, figsize=None, squeeze: bool = True, sharex=False,
             sharey=False, subplot_kw=None, gridspec_kw=None, **fig_kw):
    """``(fig, axes)`` like ``matplotlib.pyplot.subplots``, on an Agg canvas."""
    fig = figure(figsize=figsize, **fig_kw)
    axes = fig.subplots(nrows, ncols, squeeze=squeeze, sharex=sharex, sharey=sharey,
                        subplot_kw=subplot_kw, gridspec_kw=gridspec_kw)
    return fig, axes


def close(fig: Figure) -> None:
    """Release a figure's artists (figures made here are not tracked by pyplot)."""
    fig.clear()


def get_cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def new_figure(ncols: int = 1, nrows: int = 1, size: float = 3.2):
    return subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)


def image_panel(ax, image, *, title: str = "", unit: str = "arb. units", cmap: str = "inferno",
                axis_off: bool = True, **imshow_kwargs):
    """``imshow`` with a colour bar labelled with the intensity ``unit``."""
    shown = ax.imshow(image, cmap=cmap, **imshow_kwargs)
    bar = ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label(unit, fontsize=7)
    bar.ax.tick_params(labelsize=6)
    if title:
        ax.set_title(title, fontsize=8)
    if axis_off:
        ax.set_axis_off()
    return shown


def observations_figure(y, max_items: int = 8, title: str = "observations", unit: str = "arb. units"):
    """Images for 2D observations (each with a colour bar in ``unit``), curves for 1D, the
    mean over extra axes otherwise."""
    y = np.asarray(y.detach().cpu() if hasattr(y, "detach") else y)
    n = min(len(y), max_items)
    if y.ndim == 2:
        fig, axes = new_figure(1, 1, size=5)
        for i in range(n):
            axes[0, 0].plot(y[i], lw=1)
        axes[0, 0].set_title(title)
        axes[0, 0].set_xlabel("index")
        axes[0, 0].set_ylabel(unit)
        return fig
    fig, axes = new_figure(n, 1)
    for i in range(n):
        image = y[i]
        while image.ndim > 2:
            image = image.mean(axis=0)
        image_panel(axes[0, i], image, title=f"{title} {i}", unit=unit)
    fig.tight_layout()
    return fig


def posterior_figure(samples, truth=None, names=(), marks=None):
    """Histograms of posterior samples of the first observation beside the truth (when known)
    and ``marks``: {label: point estimates (n_observations, d)} drawn as dashed lines."""
    samples = np.asarray(samples.detach().cpu())
    truth = None if truth is None else np.asarray(truth.detach().cpu())
    marks = {label: np.asarray(point.detach().cpu()) for label, point in (marks or {}).items()}
    d = samples.shape[-1]
    cols = min(d, 6)
    rows = int(np.ceil(d / cols))
    fig, axes = new_figure(cols, rows, size=2.4)
    for j in range(rows * cols):
        ax = axes[j // cols, j % cols]
        if j >= d:
            ax.set_axis_off()
            continue
        ax.hist(samples[0, :, j], bins=30, color="tab:blue", alpha=0.7, label="posterior")
        if truth is not None:
            ax.axvline(truth[0, j], color="k", lw=2, label="truth")
        for k, (label, point) in enumerate(marks.items()):
            ax.axvline(point[0, j], color=f"C{k + 1}", lw=1.5, ls="--", label=label)
        ax.set_title(names[j] if j < len(names) else f"x{j}", fontsize=8)
    if marks:
        axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    return fig
