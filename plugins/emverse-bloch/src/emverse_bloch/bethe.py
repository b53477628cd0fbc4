"""Weak beams folded into the strong-beam problem by Bethe potentials (as Felix and JEMS do).

Split the beams of the symmetrised structure matrix A (Å⁻², see
:mod:`emverse_bloch.structure_matrix`) into strong beams s and weak beams w. Eliminating
the weak beams from A c = γ c exactly gives

    (A_ss + A_sw (γ − A_ww)⁻¹ A_ws) c_s = γ c_s,        c_w = (γ − A_ww)⁻¹ A_ws c_s.

Bethe's approximation keeps only the diagonal of A_ww (a weak beam is far from the
Ewald sphere, |A_ww| = 2K|S_w|M_w² ≫ |U|) and takes γ = 0, the direct beam's diagonal:

    A^Bethe_ij = A_ij − Σ_w A_iw A_wj / A_ww         (second order in U)

The n × n strong-beam problem is solved exactly; each weak beam's amplitude follows to
first order from the strong Bloch states, c_w,k = Σ_s A_ws c_s,k / (λ_k − A_ww) (the
exact eigenvalue λ_k in the denominator). The strong beams are the direct beam and the
n − 1 beams of smallest |A_gg|, i.e. excitation error, chosen per incident direction.

Approximate: the error (intensity, fraction of the incident beam) against the full
solve is measured in ``benchmarks/bloch_solver.py`` and bounded in the tests. The
gradient runs through torch's ``eigh`` backward, which is not finite at exactly
degenerate eigenvalues (a zone axis); use the full solve to refine there.
"""

from __future__ import annotations

import math

import torch
from emverse.errors import EmverseError


def strong_first_order(matrix: torch.Tensor) -> torch.Tensor:
    """Beam order (..., N): the direct beam, then by increasing |A_gg| (excitation error)."""
    # (ranking by the Bethe ratio |A_gg| / |A_g0| instead was measured worse on MgB2 [010])
    key = matrix.diagonal(dim1=-2, dim2=-1).real.abs().clone()
    key[..., 0] = -1.0  # the direct beam is always strong
    return key.argsort(dim=-1, stable=True)


def bethe_matrix(a_ss: torch.Tensor, a_sw: torch.Tensor, a_ww: torch.Tensor,
                 a_ws: torch.Tensor | None = None) -> torch.Tensor:
    """A^Bethe = A_ss − A_sw diag(1/A_ww) A_ws (..., m, m) in Å⁻²: the weak beams folded into
    the strong ones to second order in U. ``a_sw`` (..., m, W), ``a_ww`` (..., W) the weak
    beams' diagonal, ``a_ws`` (..., W, m), by default A_swᴴ (a Hermitian A)."""
    if a_ws is None:
        a_ws = a_sw.mH
    return a_ss - (a_sw * a_ww.reciprocal()[..., None, :]) @ a_ws


def _permute(matrix: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    n = matrix.shape[-1]
    rows = order[..., :, None].expand(*order.shape, n)
    cols = order[..., None, :].expand(*order.shape[:-1], n, n)
    return matrix.gather(-2, rows).gather(-1, cols)


def propagate_bethe(
    matrix: torch.Tensor,
    thickness: torch.Tensor,
    wavenumber: float,
    strong_beams: int,
    metric: torch.Tensor | None = None,
) -> torch.Tensor:
    """Beam amplitudes ψ (..., T, N) as :func:`emverse_bloch.bloch.propagate`, with only
    ``strong_beams`` beams per direction solved exactly and the rest folded in.

    ``matrix``: (..., N, N) Å⁻², Hermitian or real symmetric; ``thickness``: (..., T) Å.
    """
    n = matrix.shape[-1]
    if strong_beams < 1:
        raise EmverseError(f"bethe strong_beams {strong_beams} must be >= 1 (0 switches Bethe off)")
    thickness = torch.as_tensor(thickness, dtype=matrix.real.dtype, device=matrix.device)
    if torch.any(thickness.detach() < 0):
        raise EmverseError(
            f"thickness {thickness.detach().min().item():.4g} Å is negative; give thicknesses >= 0 Å"
        )
    batch = torch.broadcast_shapes(matrix.shape[:-2], thickness.shape[:-1])
    matrix = matrix.expand(*batch, n, n)
    s = (thickness * (math.pi / wavenumber)).expand(*batch, thickness.shape[-1])
    order = strong_first_order(matrix.detach())
    permuted = _permute(matrix, order)
    m = min(strong_beams, n)
    a_ss, a_sw = permuted[..., :m, :m], permuted[..., :m, m:]
    a_ws = permuted[..., m:, :m]
    a_ww = permuted[..., m:, m:].diagonal(dim1=-2, dim2=-1)  # (..., W)
    bethe = bethe_matrix(a_ss, a_sw, a_ww, a_ws)
    eigenvalues, vectors = torch.linalg.eigh(bethe)  # strong Bloch states (..., m, m)
    weak = (a_ws @ vectors) / (eigenvalues[..., None, :] - a_ww[..., :, None])  # (..., W, m)
    states = torch.cat([vectors, weak.to(vectors.dtype)], -2)  # (..., N, m), permuted order
    c0 = vectors[..., 0, :].conj()
    phase = s[..., :, None] * eigenvalues[..., None, :]  # (..., T, m)
    weights = torch.polar(torch.ones_like(phase), phase) * c0[..., None, :]
    psi_permuted = torch.einsum("...ik,...tk->...ti", states.to(weights.dtype), weights)
    psi = torch.zeros_like(psi_permuted).scatter(
        -1, order[..., None, :].expand_as(psi_permuted), psi_permuted)
    if metric is not None:
        psi = psi * metric[..., None, :]
    return psi
