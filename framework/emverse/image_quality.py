"""Image and volume quality — PSNR and SSIM — defined once for every plugin (torch, float64).

Reconstructed phases are defined only up to an offset and a scale, so the techniques
compare instances min–max normalised to [0, 1] (:func:`instance_normalise`), prediction
and truth separately, with data range L = 1 (MEP-Diffusion's convention).

SSIM (Wang et al. 2004, IEEE TIP 13, 600) with a Gaussian window, scikit-image's
``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``
convention: σ = 1.5 px truncated at 3.5 σ (an 11 px window), K1 = 0.01, K2 = 0.03,

    SSIM = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)),  C = (K L)²,

with Gaussian-weighted local means, variances and covariance. The mean runs over the pixels
whose window lies inside the image along every axis long enough to hold one (axis length
> 2 × radius); along a shorter axis (a 4-slice depth) every pixel is kept and the window is
reflected at the border (half-sample symmetric, scipy's ``mode="reflect"``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from emverse.errors import EmverseError

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5


def instance_normalise(x: torch.Tensor, dims: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Min–max scale each instance to [0, 1] over ``dims`` (default: every axis but the first);
    a constant instance becomes 0."""
    x = torch.as_tensor(x)
    if dims is None:
        dims = tuple(range(1, x.ndim))
    low = x.amin(dim=dims, keepdim=True)
    high = x.amax(dim=dims, keepdim=True)
    return (x - low) / (high - low).clamp_min(1e-12)


def psnr(prediction: torch.Tensor, truth: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB per leading-axis instance: 10 log10(L² / MSE)."""
    p, t = torch.as_tensor(prediction, dtype=torch.float64), torch.as_tensor(truth, dtype=torch.float64)
    if p.shape != t.shape:
        raise EmverseError(f"psnr: prediction {tuple(p.shape)} and truth {tuple(t.shape)} differ in shape")
    mse = ((p - t) ** 2).reshape(p.shape[0], -1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-30))


def _gaussian(sigma: float, truncate: float, dtype, device) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    coords = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _symmetric_index(n: int, radius: int, device) -> torch.Tensor:
    """Indices of an axis of length n padded by ``radius`` on each side, reflected half-sample
    symmetrically (… c b a | a b c … x y z | z y x …) however often the padding exceeds n."""
    i = torch.arange(-radius, n + radius, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def _blur(x: torch.Tensor, g: torch.Tensor, axes: int) -> torch.Tensor:
    """Separable Gaussian blur over the last ``axes`` axes of x (B, *spatial): "valid" along the
    axes longer than the window, reflected along the shorter ones (their length is kept)."""
    radius = (g.numel() - 1) // 2
    for k in range(axes):
        axis = x.ndim - axes + k
        n = x.shape[axis]
        if n <= 2 * radius:
            x = x.index_select(axis, _symmetric_index(n, radius, x.device))
        moved = x.movedim(axis, -1)
        shape = moved.shape
        out = F.conv1d(moved.reshape(-1, 1, shape[-1]), g[None, None])
        x = out.reshape(*shape[:-1], out.shape[-1]).movedim(-1, axis)
    return x


def ssim(prediction: torch.Tensor, truth: torch.Tensor, *, spatial_dims: int = 2, sigma: float = SSIM_SIGMA,
         truncate: float = SSIM_TRUNCATE, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM per instance of two stacks (batch, *spatial) with ``spatial_dims`` trailing
    spatial axes (module docstring); axes between batch and spatial are folded into the batch."""
    p, t = torch.as_tensor(prediction, dtype=torch.float64), torch.as_tensor(truth, dtype=torch.float64)
    if p.shape != t.shape:
        raise EmverseError(f"ssim: prediction {tuple(p.shape)} and truth {tuple(t.shape)} differ in shape")
    if spatial_dims < 1 or p.ndim < spatial_dims + 1:
        raise EmverseError(f"ssim needs (batch, *{spatial_dims} spatial axes); got shape {tuple(p.shape)}")
    spatial = p.shape[-spatial_dims:]
    p, t = p.reshape(-1, *spatial), t.reshape(-1, *spatial)
    g = _gaussian(sigma, truncate, p.dtype, p.device)

    def blur(z):
        return _blur(z, g, spatial_dims)

    mu_p, mu_t = blur(p), blur(t)
    var_p = blur(p * p) - mu_p**2
    var_t = blur(t * t) - mu_t**2
    cov = blur(p * t) - mu_p * mu_t
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    return s.reshape(s.shape[0], -1).mean(dim=1)


__all__ = ["SSIM_SIGMA", "SSIM_TRUNCATE", "instance_normalise", "psnr", "ssim"]
