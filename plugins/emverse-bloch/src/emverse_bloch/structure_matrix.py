"""The Bloch-wave structure matrix A (Å⁻²).

For beams g_0 = 0, g_1, ..., g_{N-1} (Miller indices ``beams``) and one incident
direction, following Zuo & Spence and abTEM's symmetrised form

    A_ii = 2 K S_i M_i²  (+ i U'_0 with absorption)
    A_ij = U(h_j − h_i) M_i M_j                   (i ≠ j)

with S_i the excitation error (Å⁻¹), K the wavenumber (Å⁻¹; vacuum 1/λ or the
mean-inner-potential-corrected √(1/λ² + U_0)), U(h) = γF(h)/(πΩ) the potential
coefficient in the crystallographic sign convention (F(h) = Σ f e^{+2πi h·x}) and
M_i = 1/√(1 + g_i·n̂/K) the metric of the generalised eigenproblem. U_0 is left off
the diagonal: it is absorbed in K (or is a global phase when K = 1/λ).

The couplings depend only on the structure; the diagonal on the geometry. A
:class:`CouplingTable` lists the distinct differences h_j − h_i once so the
structure factors are computed once per parameter set and gathered.
"""

from __future__ import annotations

import numpy as np
import torch


def unique_rows(hkl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(hkl, axis=0, return_inverse=True) for integer triples, via one int64 key
    per row (numpy's axis=0 path sorts structured rows and is ~20x slower)."""
    hkl = np.asarray(hkl, dtype=np.int64)
    base = int(np.abs(hkl).max(initial=0)) + 1
    width = 2 * base + 1
    keys = ((hkl[:, 0] + base) * width + (hkl[:, 1] + base)) * width + (hkl[:, 2] + base)
    unique_keys, inverse = np.unique(keys, return_inverse=True)
    out = np.stack([unique_keys // (width * width), (unique_keys // width) % width,
                    unique_keys % width], -1) - base
    return out, inverse.reshape(-1)


class CouplingTable:
    """Distinct beam differences h_j − h_i for a beam set (N, 3).

    ``hkl``: (M, 3) distinct differences (including 000); ``index``: (N, N) with
    hkl[index[i, j]] = beams[j] − beams[i].
    """

    def __init__(self, beams: np.ndarray):
        beams = np.asarray(beams, dtype=np.int64)
        diff = beams[None, :, :] - beams[:, None, :]
        self.hkl, inverse = unique_rows(diff.reshape(-1, 3))
        self.index = inverse.reshape(len(beams), len(beams))
        self.beams = beams
        self.zero = int(np.flatnonzero(np.all(self.hkl == 0, axis=1))[0])

    def gather(self, table: torch.Tensor) -> torch.Tensor:
        """(..., M) -> (..., N, N) with out[..., i, j] = table[..., index[i, j]]."""
        idx = torch.as_tensor(self.index, device=table.device)
        return table[..., idx]


def structure_matrix(
    couplings: torch.Tensor,
    excitation_error: torch.Tensor,
    wavenumber: float,
    metric: torch.Tensor | None = None,
    diagonal_absorption: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Assemble A (..., N, N) in Å⁻²: complex, or real when the couplings are real (a
    real symmetric matrix, see :func:`emverse_bloch.structure_factors.is_real_potential`).

    couplings: (..., N, N) complex or real U(h_j − h_i) in Å⁻² (diagonal ignored);
    excitation_error: (..., N) Å⁻¹; wavenumber: K in Å⁻¹; metric: (..., N) or None (M = 1);
    diagonal_absorption: U'_0 (Å⁻²), added as +i U'_0 on the diagonal.
    """
    n = couplings.shape[-1]
    diag = 2.0 * wavenumber * excitation_error
    off = couplings
    if metric is not None:
        diag = diag * metric**2
        off = off * (metric[..., :, None] * metric[..., None, :])
    diag = diag.to(couplings.dtype)
    if diagonal_absorption is not None:
        diag = diag + 1j * torch.as_tensor(diagonal_absorption, device=diag.device)[..., None]
    # one copy of the couplings with the diagonal written in place (cheaper than
    # torch.where over a diag_embed: this assembly is ~15 % of a CBED forward pass)
    dtype = torch.promote_types(off.dtype, diag.dtype)
    batch = torch.broadcast_shapes(off.shape[:-2], diag.shape[:-1])
    matrix = off.to(dtype).expand(*batch, n, n).clone()
    matrix.diagonal(dim1=-2, dim2=-1).copy_(diag.expand(*batch, n))
    return matrix
