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
  iπt/K · e^{iπtλ_i/2K} e^{iπtλ_j/2K} · sinc(πt(λ_i−λ_j)/2K): smooth in λ_i − λ_j, so the
  gradient stays finite and exact when eigenvalues are degenerate (on a zone axis),
  unlike differentiating through ``eigh``'s eigenvectors.
  A *real* (real dtype) matrix is taken as real symmetric: ``eigh`` then runs in
  real arithmetic (about 4× fewer flops than the complex Hermitian one). That is
  exact when every U_g is real — a centrosymmetric crystal with the origin on an
  inversion centre and no absorption (see
  :func:`emverse_bloch.structure_factors.is_real_potential`); the gradient is then
  ∂L/∂A for real A. The backward pass works through the batch in chunks so its
  (chunk, T, N, N) temporaries stay below ``BACKWARD_CHUNK_ELEMENTS``.
* ``method="expm"``: ``torch.linalg.matrix_exp`` per thickness; takes non-Hermitian
  A (absorption) too; gradients by torch's Fréchet-derivative backward.
"""

from __future__ import annotations

import math

import torch
from emverse.errors import EmverseError

METHODS = ("eig", "expm")


#: upper bound on the elements of one (chunk, T, N, N) temporary in the eig backward pass
#: (complex: 16 bytes each, so 2**20 elements = 16 MiB); the batch is cut into chunks below it
BACKWARD_CHUNK_ELEMENTS = 2**20


def _eigen_propagate(vectors, eigenvalues, phase_per_eigen):
    """ψ[..., t, :] = V exp(i s_t Λ) Vᴴ e_0 from an eigendecomposition (V real or complex)."""
    c0 = vectors[..., 0, :].conj()  # Vᴴ e_0
    phase = phase_per_eigen[..., :, None] * eigenvalues[..., None, :]  # (..., T, N)
    if vectors.is_complex():
        weights = torch.polar(torch.ones_like(phase), phase) * c0[..., None, :]
        return torch.einsum("...ij,...tj->...ti", vectors, weights)
    # real symmetric A: V real, so ψ = V (cos φ ∘ c0) + i V (sin φ ∘ c0) in real arithmetic
    weights = torch.cat([torch.cos(phase), torch.sin(phase)], -2) * c0[..., None, :]
    both = torch.einsum("...ij,...tj->...ti", vectors, weights)
    n_t = phase.shape[-2]
    return torch.complex(both[..., :n_t, :], both[..., n_t:, :])


def _daleckii_krein(vectors, eigenvalues, s, grad_psi):
    """grad_A = V (conj(Φ_t) ∘ (Vᴴ G_t e_0ᵀ V)) Vᴴ summed over t, for one chunk of the batch.

    conj(Φ_t,ij) = −i s_t sinc(s_t(λ_i − λ_j)/2) e^{−i s_t λ_i/2} e^{−i s_t λ_j/2} separates into a
    real symmetric sinc matrix between two phase vectors, so the inner matrix is
    Σ_t (α_t β_tᵀ) ∘ S_t with α_t = −i s_t e^{−i s_t λ/2} ∘ Vᴴ g_t and β_t = e^{−i s_t λ/2} ∘ Vᵀ e_0:
    one complex outer product and one real sinc per element (no complex exponential)."""
    a = torch.einsum("...ji,...tj->...ti", vectors.conj().to(grad_psi.dtype), grad_psi)  # Vᴴ g_t
    b = vectors[..., 0, :]  # e_0ᵀ V
    phase = (-0.5 * s[..., :, None]) * eigenvalues[..., None, :]  # (..., T, N)
    half_turn = torch.polar(torch.ones_like(phase), phase)
    alpha = (-1j * s[..., :, None]) * half_turn * a
    beta = half_turn * b[..., None, :]
    st = s[..., :, None, None]
    sinc = torch.sinc(st * (eigenvalues[..., None, :, None] - eigenvalues[..., None, None, :]) / (2 * math.pi))
    inner = ((alpha[..., :, :, None] * beta[..., :, None, :]) * sinc).sum(-3)
    if vectors.is_complex():
        return vectors @ inner @ vectors.conj().transpose(-1, -2)
    # a real input matrix gets the real part of the complex gradient (∂L/∂Re A); V real
    return vectors @ inner.real @ vectors.transpose(-1, -2)


class _HermitianPropagation(torch.autograd.Function):
    """ψ[..., t, :] = V exp(i s_t Λ) Vᴴ e_0 for Hermitian (complex) or real symmetric A
    (..., N, N), s (..., T) real."""

    @staticmethod
    def forward(ctx, matrix, phase_per_eigen):
        eigenvalues, vectors = torch.linalg.eigh(matrix)
        psi = _eigen_propagate(vectors, eigenvalues, phase_per_eigen)
        ctx.save_for_backward(eigenvalues, vectors, phase_per_eigen)
        return psi

    @staticmethod
    def backward(ctx, grad_psi):
        eigenvalues, vectors, s = ctx.saved_tensors
        grad_matrix = grad_s = None
        lam = eigenvalues[..., None, :]  # (...,1,N)
        c0 = vectors[..., 0, :].conj()
        if ctx.needs_input_grad[1]:
            phase = s[..., :, None] * lam
            exp = torch.polar(torch.ones_like(phase), phase)
            dpsi_ds = torch.einsum("...ij,...tj->...ti", vectors.to(exp.dtype),
                                   1j * lam * exp * c0[..., None, :])
            grad_s = (grad_psi.conj() * dpsi_ds).real.sum(-1)
        if ctx.needs_input_grad[0]:
            # the (..., T, N, N) temporaries dominate the memory: bound them by chunking
            # the flattened batch (exact, each matrix's gradient is independent)
            batch, (n_t, n) = vectors.shape[:-2], s.shape[-1:] + vectors.shape[-1:]
            flat = max(1, math.prod(batch))
            chunk = max(1, BACKWARD_CHUNK_ELEMENTS // (n_t * n * n))
            v = vectors.reshape(flat, n, n)
            lam_flat = eigenvalues.reshape(flat, n)
            s_flat = s.reshape(flat, n_t)
            g_flat = grad_psi.reshape(flat, n_t, n)
            grad_matrix = torch.empty_like(v)  # filled chunk by chunk: no concatenated copy
            for i in range(0, flat, chunk):
                grad_matrix[i:i + chunk] = _daleckii_krein(v[i:i + chunk], lam_flat[i:i + chunk],
                                                           s_flat[i:i + chunk], g_flat[i:i + chunk])
            grad_matrix = grad_matrix.reshape(*batch, n, n)
        return grad_matrix, grad_s


def propagate(
    matrix: torch.Tensor,
    thickness: torch.Tensor,
    wavenumber: float,
    method: str = "eig",
    metric: torch.Tensor | None = None,
) -> torch.Tensor:
    """Beam amplitudes ψ (..., T, N) at thicknesses ``thickness`` (..., T) in Å.

    ``matrix``: structure matrix (..., N, N) in Å⁻², beam 0 the direct beam; complex
    Hermitian, or real symmetric (real dtype: the real ``eigh``, see the module docstring);
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


def propagate_absorptive(
    matrix: torch.Tensor,
    absorptive: torch.Tensor,
    thickness: torch.Tensor,
    wavenumber: float,
    metric: torch.Tensor | None = None,
) -> torch.Tensor:
    """Beam amplitudes ψ (..., T, N) for the non-Hermitian A + iA' with the absorptive part A'
    taken to first order (Hirsch et al.; Humphreys & Hirsch 1968): A = V Λ Vᴴ (Hermitian or real
    symmetric, Å⁻²), each Bloch wave j decays with μ_j = v_jᴴ A' v_j (A' Hermitian, Å⁻²), and
    ψ(t) = V exp(iπt(Λ + iμ)/K) Vᴴ e_0. Exact for A' = 0; the decay rates are right to first
    order, the eigenvector corrections (first order in A'/Δλ) are dropped, so the amplitude error
    is first order in A' but does not grow with t. Gradients flow through ``torch.linalg.eigh``
    (a degenerate pair of eigenvalues can make them non-finite, unlike :func:`propagate`).
    ``thickness``: (..., T) Å; ``metric``: (..., N) or None."""
    thickness = torch.as_tensor(thickness, dtype=matrix.real.dtype, device=matrix.device)
    eigenvalues, vectors = torch.linalg.eigh(matrix)
    if not vectors.is_complex():
        vectors = vectors.to(absorptive.dtype if absorptive.is_complex() else
                             (torch.complex64 if matrix.dtype == torch.float32 else torch.complex128))
    decay = torch.einsum("...ij,...ik,...kj->...j", vectors.conj(), absorptive.to(vectors.dtype), vectors).real
    s = (thickness * (math.pi / wavenumber))[..., :, None]  # (..., T, 1)
    weights = torch.polar(torch.exp(-s * decay[..., None, :]), s * eigenvalues[..., None, :])
    psi = torch.einsum("...ij,...tj->...ti", vectors, weights * vectors[..., 0, :].conj()[..., None, :])
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
