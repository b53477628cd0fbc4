"""G(r) of a periodic crystal by the real-space pair sum (PDFfit2's model), in torch.

For one phase with N = Σ occupancies atoms in the unit cell of volume V (Å³),
number density ρ₀ = N / V:

    G(r) = 1/(N r) Σ_i Σ_j≠i (o_i o_j b_i b_j / <b>²) T(r; r_ij, σ_ij) − 4π ρ₀ r        [Å⁻²]

i runs over the unit cell, j over all atoms of the crystal with r_ij in range,
<b> = Σ_i o_i b_i / N, and T is a normalised Gaussian truncated at 5 σ
(Proffen & Billinge, J. Appl. Cryst. 32, 572 (1999); Farrow et al., J. Phys.:
Condens. Matter 19, 335219 (2007), eq. 3-5). Its width is

    σ_ij² = σ'_ij² (1 − δ₁/r_ij − δ₂/r_ij² + Q_broad² r_ij²),
    σ'_ij² = r̂ᵀ U_i r̂ + r̂ᵀ U_j r̂   (mean-square displacements along the pair, Å²).

Then per phase: × exp(−(Q_damp r)²/2) × γ(r) (particle envelope, 1 for bulk)
× scale; phases add. Finally the termination at Q_max: the G(r) on the grid
(extended by 6 ripples, 6·2π/Q_max, on each side of the fit range) is
zero-padded to the next power of two ≥ 2×length, Fourier transformed, the
components above Q_max removed and transformed back (PDFfit2's
``DataSet::applyQmaxCutoff``, its sinc convolution); Q_max = 0 skips it.

Everything is computed from the metric tensor g_ij = a_i·a_j (Å²) and
fractional coordinates (PDFfit2 does the same), so the lattice enters only
through g and gradients flow to any parametrisation of it. Pair lists are
found without gradients (they are a discrete choice) and the distances of the
chosen pairs are recomputed inside the graph. By symmetry every atom of a site
has the same surroundings, so only one representative atom per site is the
centre i, its pairs counted ``multiplicity`` times.

Units: r, σ in Å; U in Å²; Q in Å⁻¹; δ₁ in Å, δ₂ in Å².
"""

from __future__ import annotations

import math

import numpy as np
import torch
from emverse.errors import EmverseError

__all__ = [
    "GAUSSIAN_CUTOFF_SIGMAS",
    "PhasePairs",
    "cell_parameters",
    "find_pairs",
    "gaussian_pair_sum",
    "metric_from_cell",
    "phase_pdf",
    "qmax_ripples",
    "termination_extension",
]

#: pair Gaussians are evaluated within ±5 σ of the pair distance (PDFfit2 does the same)
GAUSSIAN_CUTOFF_SIGMAS = 5.0
#: extension of the calculation range beyond the fit range, in sinc ripples 2π/Qmax
TERMINATION_RIPPLES = 6
_EDGE = math.exp(-0.5 * GAUSSIAN_CUTOFF_SIGMAS**2)


def metric_from_cell(a, b, c, alpha, beta, gamma) -> torch.Tensor:
    """Metric tensor g (3, 3) in Å² from cell lengths (Å) and angles (degrees)."""
    to_rad = math.pi / 180.0
    ca, cb, cg = (torch.cos(torch.as_tensor(x, dtype=torch.float64) * to_rad) for x in (alpha, beta, gamma))
    a, b, c = (torch.as_tensor(x, dtype=torch.float64) for x in (a, b, c))
    return torch.stack([
        torch.stack([a * a, a * b * cg, a * c * cb]),
        torch.stack([a * b * cg, b * b, b * c * ca]),
        torch.stack([a * c * cb, b * c * ca, c * c]),
    ])


def cell_parameters(metric: torch.Tensor) -> tuple[float, ...]:
    """(a, b, c, α, β, γ) in Å and degrees from a metric tensor."""
    g = metric.detach().double().cpu().numpy()
    a, b, c = np.sqrt(np.diag(g))
    alpha = math.degrees(math.acos(g[1, 2] / (b * c)))
    beta = math.degrees(math.acos(g[0, 2] / (a * c)))
    gamma = math.degrees(math.acos(g[0, 1] / (a * b)))
    return float(a), float(b), float(c), alpha, beta, gamma


class PhasePairs:
    """Pairs (centre atom, neighbour atom, lattice shift) with r_lo <= r_ij <= r_hi.

    ``centre``/``neighbour``: (P,) atom indices into the unit cell; ``shift``: (P, 3)
    integer lattice translations of the neighbour; ``count``: (P,) how many pairs each
    stands for (pairs that a symmetry operation fixing the centre maps onto each other
    have the same length and width for every symmetric parameter value, so one of
    them is computed). Found without gradients.
    """

    def __init__(self, centre: np.ndarray, neighbour: np.ndarray, shift: np.ndarray, count: np.ndarray):
        self.centre = centre
        self.neighbour = neighbour
        self.shift = shift
        self.count = count

    def __len__(self) -> int:
        return int(self.centre.size)


def find_pairs(metric: torch.Tensor, positions: torch.Tensor, centres: np.ndarray,
               r_lo: float, r_hi: float, *, atom_site: np.ndarray | None = None,
               centre_rotations: dict[int, np.ndarray] | None = None) -> PhasePairs:
    """All pairs from ``centres`` to any atom (any cell) with r_lo <= r <= r_hi (Å).

    With ``centre_rotations`` (centre -> (G, 3, 3) rotation parts of the operations that
    fix it) and ``atom_site``, pairs equivalent under those operations are merged.
    """
    g = metric.detach().double().cpu().numpy()
    x = positions.detach().double().cpu().numpy()
    reciprocal_lengths = np.sqrt(np.diag(np.linalg.inv(g)))
    # |n_k| <= r_hi |a*_k| + 1 covers every translation that can bring an atom within r_hi
    reach = np.ceil(r_hi * reciprocal_lengths).astype(int) + 1
    grids = np.meshgrid(*[np.arange(-m, m + 1) for m in reach], indexing="ij")
    shifts = np.stack([v.reshape(-1) for v in grids], axis=1).astype(float)  # (S, 3)
    parts: list[tuple[np.ndarray, ...]] = []
    for i in centres:
        d = x[None, :, :] + shifts[:, None, :] - x[i][None, None, :]  # (S, n, 3)
        dist2 = np.einsum("sni,ij,snj->sn", d, g, d)
        keep = (dist2 >= r_lo * r_lo) & (dist2 <= r_hi * r_hi) & (dist2 > 1e-8)
        s_idx, n_idx = np.nonzero(keep)
        count = np.ones(s_idx.size)
        rotations = None if centre_rotations is None else centre_rotations.get(int(i))
        if rotations is not None and len(rotations) > 1 and s_idx.size:
            keys = _orbit_keys(d[s_idx, n_idx], rotations)
            keys = np.concatenate([atom_site[n_idx][:, None], keys], axis=1)
            _, first, count = np.unique(keys, axis=0, return_index=True, return_counts=True)
            s_idx, n_idx, count = s_idx[first], n_idx[first], count.astype(float)
        parts.append((np.full(s_idx.size, i, dtype=np.int64), n_idx.astype(np.int64), shifts[s_idx], count))
    return PhasePairs(*(np.concatenate([p[k] for p in parts], axis=0) for k in range(4)))


def _orbit_keys(d: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """(P, 3) integer key of each pair vector's orbit: the lexicographically smallest R d."""
    images = np.rint(np.einsum("gij,pj->pgi", rotations, d) * 1e6).astype(np.int64)  # (P, G, 3)
    big = np.iinfo(np.int64).max
    chosen = np.ones(images.shape[:2], dtype=bool)
    key = np.empty((d.shape[0], 3), dtype=np.int64)
    for axis in range(3):
        values = np.where(chosen, images[:, :, axis], big)
        key[:, axis] = values.min(axis=1)
        chosen &= images[:, :, axis] == key[:, axis][:, None]
    return key


def gaussian_pair_sum(r0: float, step: float, n_points: int, centres: torch.Tensor,
                      sigmas: torch.Tensor, amplitudes: torch.Tensor,
                      chunk_elements: int = 2**22) -> torch.Tensor:
    """Σ_p a_p exp(−(r − d_p)²/(2σ_p²)) / (√(2π) σ_p) on r_k = r0 + k·step, k < n_points.

    Each Gaussian is evaluated only on the grid points within ±5 σ_p of d_p, lowered by its
    value there (3.7e-6 of the peak), which changes its area by 1.5e-5 relative.
    Pairs are processed in order of σ, in chunks whose window width fits their
    widest Gaussian, so memory stays near ``chunk_elements`` values per chunk.
    """
    dtype = centres.dtype
    if centres.numel() == 0:
        return torch.zeros(n_points, dtype=dtype, device=centres.device)
    order = torch.argsort(sigmas.detach())
    centres, sigmas, amplitudes = centres[order], sigmas[order], amplitudes[order]
    half_widths = (GAUSSIAN_CUTOFF_SIGMAS * sigmas.detach() / step).cpu().numpy()
    # windows that stick out of the grid land in a padding that is cut off at the end
    pad = int(math.ceil(half_widths[-1])) * 2 + 3
    out = torch.zeros(n_points + 2 * pad, dtype=dtype, device=centres.device)
    norm = 1.0 / math.sqrt(2 * math.pi)
    start = 0
    total = centres.numel()
    while start < total:
        window = int(math.ceil(half_widths[start])) * 2 + 3
        stop = min(total, start + max(1, chunk_elements // window))
        # the chunk holds only Gaussians that fit the window of its narrowest (sorted by σ)
        if int(math.ceil(half_widths[stop - 1])) * 2 + 3 > window:
            limit = np.searchsorted(half_widths[start:stop], (window - 3) / 2, side="right")
            stop = start + max(1, int(limit))
            window = int(math.ceil(half_widths[stop - 1])) * 2 + 3
        d, s, a = centres[start:stop], sigmas[start:stop], amplitudes[start:stop]
        first = torch.floor((d.detach() - GAUSSIAN_CUTOFF_SIGMAS * s.detach() - r0) / step).long()
        first = first.clamp(-window, n_points)  # wholly outside the grid: stays in the padding
        index = first[:, None] + torch.arange(window, device=d.device)[None, :]
        z = (r0 + index.to(dtype) * step - d[:, None]) / s[:, None]
        # lowered by its value at 5 σ (and zero beyond) so that a Gaussian enters and leaves grid
        # points continuously: a plain cut jumps by 4e-6 of the peak, enough to spoil
        # finite-difference checks of the gradient
        values = (a * norm / s)[:, None] * torch.relu(torch.exp(-0.5 * z * z) - _EDGE)
        out = out.index_add(0, (index + pad).reshape(-1), values.reshape(-1))
        start = stop
    return out[pad:pad + n_points]


def phase_pdf(
    r0: float, step: float, n_points: int, *, metric: torch.Tensor, positions: torch.Tensor,
    msd_of_pair, occupancy: torch.Tensor, weights: torch.Tensor, pairs: PhasePairs,
    multiplicity: torch.Tensor, delta1, delta2, qbroad,
) -> torch.Tensor:
    """One phase's G(r) (Å⁻²) before Qdamp, envelope, scale and termination.

    ``positions``: (n, 3) fractional coordinates of the unit-cell atoms;
    ``msd_of_pair(centre, neighbour, d_frac, dist)``: σ'² (Å²) of each pair;
    ``occupancy``/``weights`` (n,): o_i and b_i; ``multiplicity`` (n,): how many
    atoms each centre stands for (0 for atoms that are never a centre).
    """
    dtype = positions.dtype
    r = r0 + step * torch.arange(n_points, dtype=dtype, device=positions.device)
    n_atoms = occupancy.sum()
    mean_b = (occupancy * weights).sum() / n_atoms
    volume = torch.sqrt(torch.det(metric))
    baseline = 4 * math.pi * (n_atoms / volume) * r
    if len(pairs) == 0:
        return -baseline
    i = torch.as_tensor(pairs.centre, device=positions.device)
    j = torch.as_tensor(pairs.neighbour, device=positions.device)
    shift = torch.as_tensor(pairs.shift, dtype=dtype, device=positions.device)
    d_frac = positions[j] + shift - positions[i]
    dist = torch.sqrt(torch.einsum("pi,ij,pj->p", d_frac, metric, d_frac))
    sigma_prime2 = msd_of_pair(i, j, d_frac, dist)
    sharpening = 1 - delta1 / dist - delta2 / dist**2 + (qbroad * dist) ** 2
    # PDFfit2 drops pairs whose width would be imaginary; a tiny floor does the same here
    sigma = torch.sqrt((sigma_prime2 * sharpening).clamp_min(1e-12))
    count = torch.as_tensor(pairs.count, dtype=dtype, device=positions.device)
    amplitude = count * multiplicity[i] * occupancy[i] * occupancy[j] * weights[i] * weights[j] / mean_b**2
    peaks = gaussian_pair_sum(r0, step, n_points, dist, sigma, amplitude)
    safe_r = torch.where(r > 0, r, torch.ones_like(r))
    return torch.where(r > 0, peaks / (n_atoms * safe_r) - baseline, torch.zeros_like(r))


def termination_extension(qmax: float) -> float:
    """How far (Å) the calculation range reaches beyond the fit range for the Qmax cutoff."""
    return TERMINATION_RIPPLES * 2 * math.pi / qmax if qmax > 0 else 0.0


def qmax_ripples(g: torch.Tensor, step: float, qmax: float) -> torch.Tensor:
    """Remove the Fourier components above ``qmax`` (Å⁻¹) from G on a grid of ``step`` Å.

    Zero-padding to a power of two ≥ 2 len and the frequency step
    2π / ((padded − 1) step) follow PDFfit2, so both codes cut at the same index.
    """
    if qmax <= 0:
        return g
    n = g.shape[-1]
    padded = 2 ** int(math.ceil(math.log2(2 * n)))
    dq = 2 * math.pi / ((padded - 1) * step)
    keep_below = int(math.ceil(qmax / dq))
    mask = torch.zeros(padded, dtype=g.dtype, device=g.device)
    mask[:keep_below] = 1
    if keep_below > 1:
        mask[padded + 1 - keep_below:] = 1
    spectrum = torch.fft.fft(torch.nn.functional.pad(g, (0, padded - n)))
    return torch.fft.ifft(spectrum * mask).real[..., :n]


def check_uniform_grid(r: np.ndarray, source: str) -> float:
    """The step (Å) of a uniform r grid; raises with the file name if it is not uniform."""
    if r.size < 2:
        raise EmverseError(f"{source}: needs at least 2 r points")
    steps = np.diff(r)
    step = float((r[-1] - r[0]) / (r.size - 1))
    if np.max(np.abs(steps - step)) > 1e-3 * step + 1e-9:
        raise EmverseError(
            f"{source}: the r grid is not uniform (steps {steps.min():.6g}-{steps.max():.6g} Å); "
            "the periodic PDF model computes on the data grid: resample the file to a constant r step"
        )
    return step
