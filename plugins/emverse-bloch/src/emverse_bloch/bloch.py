"""Propagate the incident plane wave through a crystal of thickness t: ψ(t) = S(t) e_0.

With the structure matrix A (Å⁻², see :mod:`emverse_bloch.structure_matrix`) the
beam amplitudes at depth t (Å, along the surface normal) are

    ψ(t) = M exp(iπ t A / K) M⁻¹ e_0,       I_g(t) = |ψ_g(t)|²

(K in Å⁻¹, M the metric diagonal, e_0 the direct beam; M_0 = 1). This is abTEM's
``expm(iπ z λ A)`` with K = 1/λ. Two routes, both batched over any leading axes
and over several thicknesses at once, float32 (complex64) or float64 (complex128):

* ``method="eig"``: A = V diag(λ) Vᴴ (Hermitian, no absorption), then
  ψ(t) = V diag(e^{iπtλ/K}) Vᴴ e_0 — one decomposition serves all thicknesses.
  Its backward pass is the Daleckii–Krein formula for the matrix function
  f(A) = exp(iπtA/K) with the divided differences written as
  iπt/K · e^{iπt(λ_i+λ_j)/2K} · sinc(πt(λ_i−λ_j)/2K): smooth in λ_i − λ_j, so the
  gradient stays finite and exact when eigenvalues are degenerate (on a zone axis),
  unlike differentiating through ``eigh``'s eigenvectors.
* ``method="expm"``: ``torch.linalg.matrix_exp`` per thickness; takes non-Hermitian
  A (absorption) too; gradients by torch's Fréchet-derivative backward.
"""

from __future__ import annotations

import math

import torch
from emverse.errors import EmverseError

METHODS = ("eig", "expm")


class _HermitianPropagation(torch.autograd.Function):
    """ψ[..., t, :] = V exp(i s_t Λ) Vᴴ e_0 for Hermitian A (..., N, N), s (..., T) real."""

    @staticmethod
    def forward(ctx, matrix, phase_per_eigen):
        eigenvalues, vectors = torch.linalg.eigh(matrix)
        c0 = vectors[..., 0, :].conj()  # Vᴴ e_0
        phase = phase_per_eigen[..., :, None] * eigenvalues[..., None, :]  # (..., T, N)
        weights = torch.polar(torch.ones_like(phase), phase) * c0[..., None, :]
        psi = torch.einsum("...ij,...tj->...ti", vectors, weights)
        ctx.save_for_backward(eigenvalues, vectors, phase_per_eigen)
        return psi

    @staticmethod
    def backward(ctx, grad_psi):
        eigenvalues, vectors, s = ctx.saved_tensors
        grad_matrix = grad_s = None
        lam = eigenvalues[..., None, :]  # (...,1,N)
        c0 = vectors[..., 0, :].conj()
        if ctx.needs_input_grad[1]:
            exp = torch.polar(torch.ones_like(s[..., :, None] * lam), s[..., :, None] * lam)
            dpsi_ds = torch.einsum("...ij,...tj->...ti", vectors, 1j * lam * exp * c0[..., None, :])
            grad_s = (grad_psi.conj() * dpsi_ds).real.sum(-1)
        if ctx.needs_input_grad[0]:
            # Daleckii–Krein: grad_A = V (conj(Φ_t) ∘ (Vᴴ G_t e_0ᵀ V)) Vᴴ summed over t
            a = torch.einsum("...ji,...tj->...ti", vectors.conj(), grad_psi)  # Vᴴ g_t
            b = vectors[..., 0, :]  # e_0ᵀ V
            li = eigenvalues[..., None, :, None]
            lj = eigenvalues[..., None, None, :]
            st = s[..., :, None, None]
            half = 0.5 * st * (li - lj)
            mean = 0.5 * st * (li + lj)
            magnitude = st * torch.sinc(half / math.pi)
            phi = 1j * magnitude * torch.polar(torch.ones_like(mean), mean)
            inner = (phi.conj() * (a[..., :, :, None] * b[..., None, None, :])).sum(-3)
            grad_matrix = vectors @ inner @ vectors.conj().transpose(-1, -2)
        return grad_matrix, grad_s


def propagate(
    matrix: torch.Tensor,
    thickness: torch.Tensor,
    wavenumber: float,
    method: str = "eig",
    metric: torch.Tensor | None = None,
) -> torch.Tensor:
    """Beam amplitudes ψ (..., T, N) at thicknesses ``thickness`` (..., T) in Å.

    ``matrix``: structure matrix (..., N, N) in Å⁻², beam 0 the direct beam;
    ``wavenumber``: K in Å⁻¹ used to build the matrix; ``metric``: (..., N) or None.
    """
    if method not in METHODS:
        raise EmverseError(f"method {method!r} is unknown; use 'eig' or 'expm'")
    thickness = torch.as_tensor(thickness, dtype=matrix.real.dtype, device=matrix.device)
    if torch.any(thickness.detach() < 0):
        raise EmverseError(
            f"thickness {thickness.detach().min().item():.4g} Å is negative; give thicknesses >= 0 Å"
        )
    s = thickness * (math.pi / wavenumber)
    if method == "eig":
        batch = torch.broadcast_shapes(matrix.shape[:-2], s.shape[:-1])
        matrix_b = matrix.expand(*batch, *matrix.shape[-2:])
        s_b = s.expand(*batch, s.shape[-1])
        psi = _HermitianPropagation.apply(matrix_b, s_b)
    else:
        generator = 1j * s[..., :, None, None] * matrix[..., None, :, :]
        psi = torch.linalg.matrix_exp(generator)[..., :, 0]
    if metric is not None:
        psi = psi * metric[..., None, :]
    return psi


def intensities(
    matrix: torch.Tensor,
    thickness: torch.Tensor,
    wavenumber: float,
    method: str = "eig",
    metric: torch.Tensor | None = None,
) -> torch.Tensor:
    """|ψ_g(t)|², shape (..., T, N) (fractions of the incident beam)."""
    psi = propagate(matrix, thickness, wavenumber, method, metric)
    return psi.real**2 + psi.imag**2
